"""Start-up time of the commands that need no model (issue 11: each under 1 s).

    python benchmarks/bench_startup.py [--runs 7]

Runs each command as a whole process (`hfenc ...` from this environment) and prints the median
and the slowest wall time, with the CPU it ran on."""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = (["--help"], ["poolers"], ["archs"], ["--version"])


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    exe = shutil.which("hfenc") or sys.exit("hfenc is not on PATH: pip install -e . first")
    print(f"CPU: {cpu_name()}; {args.runs} runs each")
    print(f"{'command':20s} {'median s':>9s} {'max s':>7s}")
    for command in COMMANDS:
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run([exe, *command], capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        print(f"{'hfenc ' + ' '.join(command):20s} {statistics.median(times):9.2f} {max(times):7.2f}")


if __name__ == "__main__":
    main()
