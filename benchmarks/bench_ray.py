"""hfenc embed --ray on this machine: 1 and 2 CPU workers against the single-process path.

Each setting embeds N real texts (corpus.py) and the same N texts twice (2N), end to end as a
user runs it (text file -> finished .npy and sidecar). Two sizes separate the two costs of Ray:

  marginal rate  N / (T(2N) - T(N))        texts/s once the job runs (the per-row cost)
  fixed cost     T(N) - N / marginal rate  seconds a job pays whatever its size: actors
                                           starting (torch import, model load), scan, shards

The single-process path runs with all the cores' torch threads and with one (what a Ray worker
gets on each of 2 cores); it has its model loaded beforehand (as bench_embed.py does); the Ray jobs
run on one local runtime started beforehand (its start is timed and reported on its own), so
each Ray job pays what `hfenc embed --ray` pays on a runtime: actors, model loads, reading,
writing shards, assembling the .npy. Every setting uses the same --chunk-size (the Ray batch),
the single-process path too, so both sort and pad the same chunks.

    python benchmarks/bench_ray.py --n 1000 --chunk-size 250 --rounds 2 --layouts 1x1,1x2,2x1
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from corpus import real_texts  # noqa: E402


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    import platform

    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model dir (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--n", type=int, default=1000, help="texts of the smaller run (the larger has twice as many)")
    ap.add_argument("--chunk-size", type=int, default=250, help="records per batch, for every setting")
    ap.add_argument("--layouts", default="1x1,1x2,2x1", help="Ray CPU layouts to run: WORKERSxTHREADS,...")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, settings alternating; the best of each is kept")
    args = ap.parse_args()

    import ray
    import torch

    import hfenc
    from hfenc.jobs.ray_runner import RayOptions, embed_ray
    from hfenc.io.inputs import InputSpec
    from hfenc.jobs.local import JobOptions, embed_file

    model = args.model or str(hfenc.resolve_model(hfenc.DEFAULT_MODEL).path)
    cpus = os.cpu_count() or 1
    texts = real_texts(args.n)
    tmp = Path(tempfile.mkdtemp(prefix="hfenc-bench-ray-"))
    inputs = {}
    for n in (args.n, 2 * args.n):  # the large corpus is the small one twice: the same cost per row
        inputs[n] = tmp / f"corpus-{n}.txt"
        inputs[n].write_text("\n".join(texts * (n // args.n)) + "\n", encoding="utf-8")
    print(f"machine: {cpu_name()}, {cpus} cores, torch {torch.__version__}, ray {ray.__version__}")
    print(f"corpus: {args.n} real texts, and the same twice; model: {model}; chunk size {args.chunk_size}; "
          f"best of {args.rounds} rounds; load average before: {os.getloadavg()[0]:.1f}")

    embedder = hfenc.Embedder(model, device="cpu")
    reference: dict[int, np.ndarray] = {}

    def single(n: int, threads: int = cpus) -> float:
        out = tmp / f"single-{n}.npy"
        torch.set_num_threads(threads)  # process-wide; a Ray worker gets its own process
        t0 = time.perf_counter()
        embed_file(JobOptions(InputSpec(str(inputs[n])), out, force=True, chunk_size=args.chunk_size), embedder)
        seconds = time.perf_counter() - t0
        torch.set_num_threads(cpus)
        reference.setdefault(n, np.load(out))
        return seconds

    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             _system_config={"num_workers_soft_limit": 8, "idle_worker_killing_time_threshold_ms": 60_000})
    ray_start = time.perf_counter() - t0

    def on_ray(workers: int, threads: int, n: int) -> float:
        out = tmp / f"ray{workers}x{threads}-{n}.npy"
        job = JobOptions(InputSpec(str(inputs[n])), out, force=True, chunk_size=args.chunk_size)
        t0 = time.perf_counter()
        embed_ray(job, model, {"device": "cpu", "threads": threads}, RayOptions(workers=workers))
        seconds = time.perf_counter() - t0
        diff = float(np.abs(np.load(out) - reference[n]).max())
        assert diff <= 1e-5, f"--ray with {workers}x{threads} differs from the single-process path by {diff}"
        return seconds

    settings = {f"single-process, {cpus} torch threads": single}
    if cpus > 1:
        settings["single-process, 1 torch thread"] = lambda n: single(n, 1)
    for layout in args.layouts.split(","):
        w, t = (int(x) for x in layout.split("x"))
        settings[f"--ray, {w} CPU worker{'s' if w > 1 else ''} x {t} thread{'s' if t > 1 else ''}"] = \
            lambda n, w=w, t=t: on_ray(w, t, n)
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):  # alternating, so a busy moment of a shared machine hits every setting
        for name, run in settings.items():
            for n in (args.n, 2 * args.n):
                seconds = run(n)
                best[name, n] = min(seconds, best.get((name, n), float("inf")))
    rows = []
    base_rate = None
    for name in settings:
        small, large = best[name, args.n], best[name, 2 * args.n]
        marginal = args.n / (large - small)
        fixed = small - args.n / marginal
        base_rate = base_rate or marginal
        rows.append((name, small, large, args.n / small, 2 * args.n / large, marginal, fixed, marginal / base_rate))
    ray.shutdown()

    print(f"\nload average after the run: {os.getloadavg()[0]:.1f} (1 min), {os.getloadavg()[2]:.1f} (15 min)")
    print(f"Ray runtime start (once per `hfenc embed --ray` on a fresh machine): {ray_start:.1f} s\n")
    print(f"| setting | {args.n:,} texts | {2 * args.n:,} texts | end-to-end texts/s ({args.n:,} / {2 * args.n:,}) "
          "| marginal texts/s | fixed cost | marginal vs single |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, small, large, r1, r2, marginal, fixed, ratio in rows:
        print(f"| {name} | {small:.1f} s | {large:.1f} s | {r1:,.0f} / {r2:,.0f} | {marginal:,.0f} | {fixed:.1f} s "
              f"| {ratio:.2f}x |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
