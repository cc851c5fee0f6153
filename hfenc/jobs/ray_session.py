"""The Ray runtime of a --ray job: where it runs (RayOptions), Ray imported on demand, a runtime
started and stopped around the job, and Ray's failures turned back into hfenc's.

Ray is an optional extra, so no module of the runner imports it at load time: `ray_modules()`
does, once, and fails with one line naming the extra. Ray's own log lines and warnings stay out of
hfenc's stderr (HFENC_DEBUG=1 lets them through; Ray's logs stay in /tmp/ray/session_*/logs), and
what a task raised reaches the user as that HfencError, unwrapped from Ray's exception types.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from hfenc.errors import ConfigError, HfencError

if TYPE_CHECKING:
    from ray import ObjectRef

EXTRA = "pip install 'hfenc[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: `address` None starts a local Ray runtime on this machine (and stops
    it after); `auto` or `ray://host:10001` joins an existing cluster. `workers`: model replicas
    (default: one per GPU; without GPUs, ray_plan.cpu_workers()). `num_cpus`: CPUs a local
    runtime may use."""

    address: str | None = None
    workers: int | None = None
    num_cpus: int | None = None
    on_cluster: bool = False  # set by hfenc: this driver runs as a task on the cluster (ray://)


@lru_cache(maxsize=1)
def _ray() -> SimpleNamespace:
    import ray
    import ray.data
    from ray.data.checkpoint import CheckpointConfig

    from hfenc.jobs import ray_tasks as tasks

    return SimpleNamespace(ray=ray, data=ray.data, CheckpointConfig=CheckpointConfig, tasks=tasks)


def ray_modules() -> SimpleNamespace:
    """Ray and the task module, or one error naming the extra that installs them."""
    try:
        return _ray()
    except ImportError:
        raise ConfigError(f"--ray needs Ray Data, which is not installed: {EXTRA}") from None


def debug() -> bool:
    return os.environ.get("HFENC_DEBUG", "") not in ("", "0")


@contextmanager
def quiet() -> Iterator[None]:
    """Ray's log lines and deprecation warnings silenced while the job runs (unless HFENC_DEBUG)."""
    if debug():
        yield
        return
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextmanager
def session(options: RayOptions) -> Iterator[bool]:
    """Ray, started here (and shut down after) unless the caller had initialised it already."""
    ray = ray_modules().ray
    if ray.is_initialized():
        yield False
        return
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR if not debug() else logging.INFO,
                              "log_to_driver": debug()}
    if options.address is not None:
        _reachable(options.address)
    try:
        if options.address is None:
            # Idle workers kept a minute (Ray's default: killed after 1 s beyond one per CPU), so
            # the read and write tasks of a stage reuse the processes of the stage before
            # instead of starting (and importing) new ones: 15 s -> 9 s per job on 2 cores.
            # address="local": a new runtime even where `ray start` left a cluster or RAY_ADDRESS
            # names one (ray.init() would join those; --ray-address auto is how to ask for that).
            ray.init(address="local", num_cpus=options.num_cpus, include_dashboard=False,
                     _system_config={"num_workers_soft_limit": 8, "idle_worker_killing_time_threshold_ms": 60_000},
                     **kwargs)
        else:
            import hfenc

            # The cluster's workers run this very hfenc (its dependencies must be installed there).
            ray.init(address=options.address, runtime_env={"py_modules": [os.path.dirname(hfenc.__file__)]}, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise _cannot_start(options.address, exc) from None
    try:
        yield True
    finally:
        ray.shutdown()


def _cannot_start(address: str | None, exc: Exception) -> ConfigError:
    where, message = address or "this machine", " ".join(str(exc).split())
    hint = None
    if address is not None and "Could not find any running Ray instance" in message:
        hint = "start one with `ray start --head`, or drop --ray-address for a local runtime"
    elif address is not None:  # Ray says why only in its C++ log lines, e.g. a missing token
        hint = ("if the cluster uses token authentication (Ray's default for `ray start`), set "
                "RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or ~/.ray/auth_token) here too")
    return ConfigError(f"cannot start Ray on {where}: {message}", hint=hint)


def _reachable(address: str) -> None:
    """A HOST:PORT or ray://HOST:PORT that nothing answers on fails in seconds, not after Ray's
    own retries (minutes). `auto` is left to Ray (it fails at once when it finds no cluster)."""
    import socket

    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}",
                          hint="check the address (HOST:6379 for the head node, ray://HOST:10001 for Ray Client)"
                          ) from None


def hfenc_error(exc: BaseException) -> HfencError | None:
    """The HfencError a Ray task or actor raised, out of Ray's wrappers (RayTaskError's `cause`,
    Ray Data's UserCodeException chain)."""
    ray = ray_modules().ray
    stack: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ray.exceptions.RayTaskError):
            stack.extend([getattr(e, "cause", None), e.__cause__])
            continue
        if isinstance(e, HfencError):
            return e
        stack.extend([e.__cause__, e.__context__])
    return None


def get(refs: ObjectRef | list[ObjectRef]) -> Any:
    """ray.get, with a task's HfencError raised as itself (one line for the user)."""
    try:
        return ray_modules().ray.get(refs)
    except Exception as exc:
        found = hfenc_error(exc)
        if found is not None:
            raise found from None
        raise
