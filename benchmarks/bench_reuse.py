"""`embed --reuse` (issue 24): re-embedding a corpus after a few of its texts changed.

20,000 real texts (benchmarks/corpus.py) are embedded once (OLD). Then 10% of them are edited, 300
deleted and 500 added (NEW), and NEW is embedded twice, each as its own `hfenc embed` process timed
whole (start-up, model load, scan, embedding, publication): fresh, and with `--reuse OLD`. The
script checks what the issue asks: every reused row is bit-identical to OLD's row for the same
text; the reuse output agrees with the fresh one (min cosine, and how many rows are bit-identical);
and reports the wall-time ratio. `hfenc verify` and `hfenc diff` are timed on the result too.

    python benchmarks/bench_reuse.py --model PATH --dtype float32
    python benchmarks/bench_reuse.py --model PATH --dtype bfloat16 --n 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from corpus import real_texts  # noqa: E402


def _edit(texts: list[str], seed: int = 0) -> list[str]:
    """10% edited (a clause appended), 300 deleted, 500 added at random places."""
    rng = random.Random(seed)
    new = list(texts)
    for i in rng.sample(range(len(new)), len(new) // 10):
        new[i] = new[i] + " (revised)"
    for i in sorted(rng.sample(range(len(new)), 300), reverse=True):
        del new[i]
    extra = real_texts(len(texts) + 500)[len(texts):]
    for text in extra:
        new.insert(rng.randrange(len(new) + 1), text)
    return new


def _hfenc(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hfenc", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"# {cpu}, {os.cpu_count()} cores; python {platform.python_version()}; dtype {args.dtype}")
    old = real_texts(args.n)
    new = _edit(old)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "old.txt").write_text("".join(t + "\n" for t in old), encoding="utf-8")
        (d / "new.txt").write_text("".join(t + "\n" for t in new), encoding="utf-8")
        common = ["-m", args.model, "--dtype", args.dtype, "--device", "cpu", "-q"]
        t_old = _hfenc("embed", str(d / "old.txt"), "-o", str(d / "old.npy"), *common)
        t_fresh = _hfenc("embed", str(d / "new.txt"), "-o", str(d / "fresh.npy"), *common)
        t_reuse = _hfenc("embed", str(d / "new.txt"), "-o", str(d / "new.npy"), "--reuse", str(d / "old.npy"), *common)
        t_verify = _hfenc("verify", str(d / "new.npy"))
        t_diff = _hfenc("diff", str(d / "new.npy"), str(d / "fresh.npy"))
        a, b, o = np.load(d / "new.npy"), np.load(d / "fresh.npy"), np.load(d / "old.npy")
        reuse = json.loads((d / "new.npy.json").read_text())["reuse"]
        first: dict[str, int] = {}
        for i, t in enumerate(old):
            first.setdefault(t, i)
        reused = [i for i, t in enumerate(new) if t in first]
        identical_to_old = all(np.array_equal(a[i], o[first[new[i]]]) for i in reused)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        same_bits = int((a == b).all(1).sum())
        embedded = [i for i, t in enumerate(new) if t not in first]
        print(f"old {len(old):,} texts embedded in {t_old:.1f} s; new {len(new):,} texts: "
              f"{reuse['reused']:,} reused, {reuse['embedded']:,} embedded, {reuse['dropped']:,} old rows dropped")
        print(f"wall, whole process: fresh {t_fresh:.1f} s, --reuse {t_reuse:.1f} s: {t_reuse / t_fresh:.3f}x")
        print(f"reused rows bit-identical to OLD's: {identical_to_old} ({len(reused):,} rows)")
        print(f"reuse vs fresh: min cosine {cos.min():.8f}; bit-identical rows {same_bits:,} of {len(new):,} "
              f"(of the embedded rows: {int((a[embedded] == b[embedded]).all(1).sum()):,} of {len(embedded):,})")
        print(f"verify (64 rows embedded again) {t_verify:.1f} s; diff {t_diff:.1f} s")


if __name__ == "__main__":
    main()
