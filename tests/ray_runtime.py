"""The local Ray runtime the Ray test modules share: 2 CPUs, started once per module (what the
runner would start itself; starting one costs ~20 s on 2 cores), and again after a test that had
to shut it down."""

from __future__ import annotations

import logging

import ray


def start() -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             _system_config={"num_workers_soft_limit": 8, "idle_worker_killing_time_threshold_ms": 60_000})


def for_module():
    """The body of a module-scoped autouse fixture."""
    assert not ray.is_initialized()
    start()
    yield
    ray.shutdown()
