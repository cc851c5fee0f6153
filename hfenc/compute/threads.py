"""CPU threads that stay fast on a machine doing something else (issue 22).

Two causes made a busy machine cost 3x. torch starts one thread per core even when another
process holds one, and a team of two where one core is free runs at the pace of the thread that
waits for its core: `ThreadPolicy` counts the cores free now (affinity, cgroup quota, and what
other processes used since the last count) once the model is loaded and every RECHECK_SECONDS
between batches, and runs torch with that many; `--threads N` or HFENC_THREADS=N fixes the count.
And OpenMP's idle threads spin, holding a core that another process needs: `set_wait_policy`
bounds the spin (GOMP_SPINCOUNT, read by the OpenMP runtime once, when torch loads) so that a
thread waits briefly between the back-to-back parallel regions of a forward pass and sleeps
when the work stops. OMP_WAIT_POLICY=PASSIVE, which never spins, cost 10-15% on a quiet CPU
(benchmarks/README.md); libgomp's default spins ten times longer.

Another count can move a row by an ulp where the kernels split a sum by thread (seen on a 32-wide
test model; MiniLM's rows were bit-identical at 1 and 2 threads): `--threads N` or HFENC_THREADS=N
fixes the count, and with it the bits, run after run.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

RECHECK_SECONDS = 2.0  # how often a running job re-counts the free cores
SPIN_COUNT = "30000"  # libgomp's default is 300,000 (and 30 billion under OMP_WAIT_POLICY=ACTIVE)
_FIRST_WINDOW = 0.25  # the shortest window the first count is made over (seconds)

_POLICY_AT_IMPORT: str | None = None
_TORCH_DEFAULT: int | None = None  # torch's own thread count, before any policy changed it


def set_wait_policy() -> None:
    """Before torch is imported: OpenMP threads that spin only briefly when idle. A user's own
    OMP_WAIT_POLICY or GOMP_SPINCOUNT stands; once torch is loaded it is too late to change."""
    global _POLICY_AT_IMPORT
    if "torch" in sys.modules:
        _POLICY_AT_IMPORT = _policy() or "unset (torch was imported before hfenc)"
        return
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    _POLICY_AT_IMPORT = _policy()


def _policy() -> str:
    return " ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ)


def wait_policy() -> str | None:
    """The OpenMP wait policy torch runs with, as hfenc found or set it."""
    return _POLICY_AT_IMPORT


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def cpu_quota(root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")) -> float | None:
    """The cgroup CPU quota in CPUs (a container's `--cpus`), None when unlimited or unknown."""
    candidates = []
    try:
        for line in own.read_text().splitlines():
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if hierarchy == "0" and controllers == "":  # cgroup v2
                candidates.append((root / path.lstrip("/") / "cpu.max", None))
            elif "cpu" in controllers.split(","):  # cgroup v1
                base = root / "cpu" / path.lstrip("/")
                candidates.append((base / "cpu.cfs_quota_us", base / "cpu.cfs_period_us"))
    except OSError:
        pass
    candidates += [(root / "cpu.max", None), (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us")]
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                quota, period = quota_file.read_text().split()[:2]  # "max 100000" or "200000 100000"
                if quota == "max":
                    return None
                return int(quota) / int(period)
            quota_us = int(quota_file.read_text())
            return None if quota_us <= 0 else quota_us / int(period_file.read_text())
        except (OSError, ValueError):
            continue
    return None


@dataclass(frozen=True)
class CpuSample:
    """Busy and total time of the allowed CPUs (from /proc/stat) and this process's CPU time."""

    at: float
    busy: float  # jiffies, summed over the allowed CPUs
    total: float
    own: float  # seconds of CPU this process used, all threads


def sample_cpus(cpus: list[int], stat: Path = Path("/proc/stat")) -> CpuSample | None:
    """None where /proc/stat cannot be read (not Linux): the count then follows affinity and quota."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0.0
    for line in lines:
        name, _, values = line.partition(" ")
        if name in wanted:
            # user nice system idle iowait irq softirq steal (guest time is inside user already)
            ticks = [float(v) for v in values.split()[:8]]
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    if total == 0:
        return None
    return CpuSample(time.monotonic(), busy, total, time.process_time())


def others_busy(before: CpuSample, after: CpuSample, cpus: int) -> float | None:
    """CPUs' worth of time other processes used between two samples (0 when only this one ran)."""
    wall = after.at - before.at
    span = after.total - before.total
    if wall <= 0 or span <= 0:
        return None
    busy_cpus = cpus * (after.busy - before.busy) / span
    own_cpus = (after.own - before.own) / wall
    return max(0.0, busy_cpus - own_cpus)


def free_threads(allowed: int, quota: float | None, others: float | None, ceiling: int) -> int:
    """Threads for the cores free now: the allowed ones, within the quota, less those other
    processes keep busy (a core counts as taken once others use half of it), at most `ceiling`
    (torch's own count: one per physical core, not per hyper-thread)."""
    free = float(allowed) if quota is None else min(float(allowed), quota)
    if others is not None:
        free = min(free, allowed - others)
    return max(1, min(ceiling, math.floor(free + 0.5)))


def fixed_by_environment() -> int | None:
    """HFENC_THREADS=N: a fixed count for every job of this process, as --threads N is for one
    (a CI job, a test suite, a benchmark that must not follow the machine's load)."""
    value = os.environ.get("HFENC_THREADS", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        from hfenc.errors import ConfigError

        raise ConfigError(f"HFENC_THREADS={value!r} must be a positive number of threads")
    return int(value)


@dataclass
class ThreadPolicy:
    """torch's intra-op thread count for a job: `fixed`, or the cores free now, re-counted between
    batches (`tick`) every RECHECK_SECONDS. `record()` is what the sidecar keeps."""

    fixed: int | None = None
    set_threads: Callable[[int], None] | None = None  # torch.set_num_threads (tests pass fakes)
    get_threads: Callable[[], int] | None = None
    clock: Callable[[], float] = time.monotonic
    sampler: Callable[[list[int]], CpuSample | None] = sample_cpus
    current: int = 0
    ceiling: int = 0
    cpus: list[int] = field(default_factory=list)
    quota: float | None = None
    seconds: dict[int, float] = field(default_factory=dict)  # threads -> seconds of batches run with them
    changes: int = 0
    _last: CpuSample | None = None
    _counted: bool = False  # the first count (over the model's load) is made
    _since: float | None = None

    def __post_init__(self) -> None:
        if self.fixed is None:
            self.fixed = fixed_by_environment()
        if self.set_threads is None or self.get_threads is None:
            import torch

            self.set_threads, self.get_threads = torch.set_num_threads, torch.get_num_threads
        global _TORCH_DEFAULT
        if _TORCH_DEFAULT is None:
            _TORCH_DEFAULT = self.get_threads()  # torch's default: OMP_NUM_THREADS, else physical cores
        self.ceiling = _TORCH_DEFAULT
        self.cpus = allowed_cpus()
        self.quota = cpu_quota()
        self.current = self.fixed or free_threads(len(self.cpus), self.quota, None, self.ceiling)
        self.set_threads(self.current)
        if self.fixed is None:
            self._last = self.sampler(self.cpus)  # the first count is made over the model's load

    def tick(self) -> None:
        """Before a batch: re-count the free cores when it is time, and follow them."""
        now = self.clock()
        self._account(now)
        if self._last is not None and now - self._last.at >= (RECHECK_SECONDS if self._counted else _FIRST_WINDOW):
            self.count()

    def count(self) -> None:
        """Count the free cores since the last sample, and follow them: the Embedder counts once
        the model is loaded, so the probes and OpenVINO's compile get the count (a window under
        _FIRST_WINDOW is too short to measure: the first batch counts instead)."""
        if self._last is None or self.clock() - self._last.at < _FIRST_WINDOW:
            return
        sample = self.sampler(self.cpus)
        if sample is None:
            return
        others = others_busy(self._last, sample, len(self.cpus))
        self._last, self._counted = sample, True
        wanted = free_threads(len(self.cpus), self.quota, others, self.ceiling)
        if wanted != self.current:
            self.set_threads(wanted)  # type: ignore[misc]
            self.current = wanted
            self.changes += 1

    def pause(self) -> None:
        """After a chunk's batches: the time until the next batch (writing, another call of
        encode an hour later) is not time run with this count."""
        self._account(self.clock())
        self._since = None

    def _account(self, now: float) -> None:
        if self._since is not None:
            self.seconds[self.current] = self.seconds.get(self.current, 0.0) + now - self._since
        self._since = now

    def record(self) -> dict[str, Any]:
        """What ran: the policy, the cores it saw, and the seconds spent at each thread count (the
        engine pauses the count after every chunk, so nothing is left to add here)."""
        return {
            "mode": "fixed" if self.fixed is not None else "auto",
            "wait_policy": wait_policy(),
            "cpus": len(self.cpus),
            "cpu_quota": self.quota,
            "ceiling": self.ceiling,
            "changes": self.changes,
            "seconds_by_threads": {str(k): round(v, 3) for k, v in sorted(self.seconds.items())},
        }
