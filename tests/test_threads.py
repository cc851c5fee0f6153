"""Threads on a shared CPU (issue 22): the wait policy, the count of free cores, and a job that
follows them without changing a single bit of its rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hfenc.compute import threads as th
from hfenc.compute.threads import CpuSample, ThreadPolicy, cpu_quota, free_threads, others_busy, sample_cpus


@pytest.mark.parametrize("allowed, quota, others, ceiling, expected", [
    (2, None, None, 2, 2),      # nothing measured yet: every allowed core
    (2, None, 0.0, 2, 2),       # a quiet machine
    (2, None, 1.0, 2, 1),       # another process spins on one core of 2
    (2, None, 0.67, 2, 1),      # ... while this one ran 2 threads (the kernel shares 2 cores by 3)
    (2, None, 0.3, 2, 2),       # a little background work keeps both
    (2, None, 2.0, 2, 1),       # never fewer than one
    (64, 2.0, 10.0, 32, 2),     # a container's quota on a big host
    (64, 1.5, None, 32, 2),     # a quota of 1.5 CPUs: two threads (the half rounds up)
    (16, None, 0.0, 8, 8),      # never past torch's own count (physical cores, not hyper-threads)
    (8, None, 3.2, 8, 5),
])
def test_free_threads(allowed, quota, others, ceiling, expected):
    assert free_threads(allowed, quota, others, ceiling) == expected


def test_free_threads_bounds_over_a_grid():
    for allowed in (1, 2, 3, 8):
        for ceiling in range(1, allowed + 1):
            for others in (None, 0.0, 0.5, 1.0, 1.49, 1.51, 7.9):
                for quota in (None, 0.5, 1.0, 2.5):
                    n = free_threads(allowed, quota, others, ceiling)
                    assert 1 <= n <= ceiling
                    if others is not None and others >= allowed - 0.5:
                        assert n == 1


def _stat(tmp_path: Path, rows: dict[int, tuple[int, ...]]) -> Path:
    lines = ["cpu  1 2 3 4 5 6 7 8 0 0"]
    lines += [f"cpu{c} " + " ".join(map(str, values)) + " 0 0" for c, values in rows.items()]
    path = tmp_path / "stat"
    path.write_text("\n".join([*lines, "intr 1 2 3", "ctxt 99"]) + "\n")
    return path


def test_sample_reads_the_allowed_cpus_of_proc_stat(tmp_path):
    #            user nice system idle iowait irq softirq steal
    path = _stat(tmp_path, {0: (100, 0, 20, 870, 10, 0, 0, 0), 1: (5, 0, 5, 990, 0, 0, 0, 0),
                            2: (900, 0, 0, 100, 0, 0, 0, 0)})
    s = sample_cpus([0, 1], path)
    assert s.total == 2000 and s.busy == 120 + 10  # cpu2 is not ours; idle and iowait are not busy
    assert sample_cpus([0], tmp_path / "missing") is None


def test_others_busy_subtracts_this_process():
    before = CpuSample(at=0.0, busy=0, total=0, own=0.0)
    # 2 CPUs fully busy for 2 s: this process used 2.6 CPU-seconds of the 4, others 1.4
    after = CpuSample(at=2.0, busy=400, total=400, own=2.6)
    assert others_busy(before, after, 2) == pytest.approx(0.7)
    quiet = CpuSample(at=2.0, busy=180, total=400, own=2.0)  # only this process ran (clock skew: never < 0)
    assert others_busy(before, quiet, 2) == 0.0
    assert others_busy(after, after, 2) is None


def test_cpu_quota_from_cgroup_v2_and_v1(tmp_path):
    own = tmp_path / "cgroup"
    own.write_text("0::/job\n")
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(tmp_path, own) == 1.5
    (tmp_path / "job" / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path, own) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu" / "docker" / "abc").mkdir(parents=True)
    (v1 / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "docker" / "abc" / "cpu.cfs_period_us").write_text("100000\n")
    own.write_text("4:cpu,cpuacct:/docker/abc\n")
    assert cpu_quota(v1, own) == 2.0
    (v1 / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(v1, own) is None
    assert cpu_quota(tmp_path / "nowhere", tmp_path / "nothing") is None


class _Machine:
    """A fake clock and /proc/stat: `others` CPUs of 2 busy with other processes, this process
    using `own` CPUs; the policy's thread changes are recorded."""

    def __init__(self) -> None:
        self.now, self.busy, self.own_seconds, self.others, self.own = 0.0, 0.0, 0.0, 0.0, 1.0
        self.threads, self.calls = 2, []

    def advance(self, seconds: float) -> None:
        used = min(2.0, self.others + self.own)
        self.now += seconds
        self.busy += used * seconds * 100
        self.own_seconds += self.own * seconds

    def sample(self, cpus):
        return CpuSample(self.now, self.busy, self.now * 200, self.own_seconds)

    def set(self, n: int) -> None:
        self.threads = n
        self.calls.append(n)


@pytest.fixture(autouse=True)
def _no_fixed_count(monkeypatch):
    monkeypatch.delenv("HFENC_THREADS", raising=False)  # conftest fixes it for the other tests


def test_policy_follows_the_free_cores(monkeypatch):
    monkeypatch.setattr(th, "allowed_cpus", lambda: [0, 1])
    monkeypatch.setattr(th, "cpu_quota", lambda: None)
    monkeypatch.setattr(th, "_TORCH_DEFAULT", None)
    m = _Machine()
    policy = ThreadPolicy(None, set_threads=m.set, get_threads=lambda: 2, clock=lambda: m.now, sampler=m.sample)
    assert policy.current == 2  # before anything is measured: every core
    m.others = 1.0  # a spinner starts while the model loads
    m.advance(0.5)
    policy.tick()
    assert policy.current == 1 and m.threads == 1
    for _ in range(10):  # it keeps spinning: the count holds
        m.advance(0.3)
        policy.tick()
    assert m.calls == [2, 1]
    m.others = 0.0  # it stops: back to two within RECHECK_SECONDS
    for _ in range(int(th.RECHECK_SECONDS / 0.3) + 2):
        m.advance(0.3)
        policy.tick()
    assert policy.current == 2 and m.calls == [2, 1, 2]
    record = policy.record()
    assert record["mode"] == "auto" and record["changes"] == 2 and record["cpus"] == 2
    assert sum(record["seconds_by_threads"].values()) == pytest.approx(m.now - 0.5, abs=1e-6)
    assert set(record["seconds_by_threads"]) == {"1", "2"}
    policy.pause()  # the job is done: an hour idle is not an hour run with 2 threads
    m.advance(3600)
    policy.tick()
    assert policy.record()["seconds_by_threads"] == record["seconds_by_threads"]


@pytest.mark.parametrize("how", ["option", "environment"])
def test_fixed_threads_never_move(monkeypatch, how):
    monkeypatch.setattr(th, "_TORCH_DEFAULT", None)
    if how == "environment":
        monkeypatch.setenv("HFENC_THREADS", "1")
    m = _Machine()
    policy = ThreadPolicy(1 if how == "option" else None, set_threads=m.set, get_threads=lambda: 2,
                          clock=lambda: m.now, sampler=m.sample)
    m.others = 1.0
    for _ in range(20):
        m.advance(0.5)
        policy.tick()
    assert m.calls == [1] and policy.record()["mode"] == "fixed"


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_hfenc_threads_is_one_line(monkeypatch, value):
    from hfenc.errors import ConfigError

    monkeypatch.setenv("HFENC_THREADS", value)
    with pytest.raises(ConfigError, match="HFENC_THREADS"):
        ThreadPolicy(None, set_threads=lambda n: None, get_threads=lambda: 2)


@pytest.mark.parametrize("given, expected", [
    ({}, "GOMP_SPINCOUNT=30000"),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "OMP_WAIT_POLICY=ACTIVE"),
    ({"GOMP_SPINCOUNT": "0"}, "GOMP_SPINCOUNT=0"),
])
def test_wait_policy_is_set_before_torch_loads(given, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import hfenc, os, sys; import hfenc.compute.threads as t; "
            "print(t.wait_policy() + '|' + str('torch' in sys.modules) + '|' + "
            "' '.join(f'{k}={os.environ[k]}' for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT') if k in os.environ))")
    out = subprocess.run([sys.executable, "-c", code], env={**env, **given}, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == f"{expected}|False|{expected}"  # recorded, torch not loaded by it, and what torch will read


def test_torch_first_is_recorded_as_unknown():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = "import torch, hfenc.compute.threads as t; print(t.wait_policy())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "torch was imported before hfenc" in out


def test_thread_count_moves_rows_by_an_ulp_at_most(minilm_dir, real_sentences, report):
    """What a changing count can do to a row: 1 and 2 threads agree to float32 rounding (on this
    project's machines bit for bit on MiniLM, reported; docs/guarantees.md)."""
    import torch

    from hfenc import Embedder

    texts = real_sentences[:200]
    before = torch.get_num_threads()
    try:
        for dtype in ("float32", "bfloat16"):
            rows = [Embedder(str(minilm_dir), device="cpu", dtype=dtype, threads=n).encode(texts) for n in (1, 2)]
            cosine = np.sum(rows[0] * rows[1], axis=1)  # MiniLM's rows are normalized
            assert cosine.min() > 1 - 1e-6, dtype
            report(f"MiniLM {dtype}, 1 vs 2 threads: {'bit-identical' if np.array_equal(*rows) else 'differ'}, "
                   f"max |diff| {np.abs(rows[0] - rows[1]).max():.1e}")
    finally:
        torch.set_num_threads(before)


def test_sidecar_records_what_ran(tmp_path, bert):
    from hfenc.cli import app
    from typer.testing import CliRunner

    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\nthree\n")
    for extra, mode in (([], "auto"), (["--threads", "1"], "fixed")):
        result = CliRunner().invoke(app, ["embed", str(texts), "-m", str(bert), "--force", "-q", *extra])
        assert result.exit_code == 0, result.output
        side = json.loads((tmp_path / "t.npy.json").read_text())
        policy = side["thread_policy"]
        assert policy["mode"] == mode and policy["cpus"] == len(os.sched_getaffinity(0))
        assert policy["wait_policy"] and 1 <= side["threads"] <= policy["ceiling"]
        if mode == "fixed":
            assert side["threads"] == 1
