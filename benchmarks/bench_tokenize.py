"""Tokenizer throughput per thread count (issue 14): TextTokenizer(texts, threads=N), N = 1, 2, 4.

Each thread encodes 2,048-text sub-chunks with the Rust tokenizer (which releases the GIL) and
turns them into flat numpy ids; the result is identical for every N (tests/test_precision.py).
Best of --rounds; the corpus is benchmarks/corpus.py's real texts, MiniLM's tokenizer.

    python benchmarks/bench_tokenize.py --n 20000 --threads 1,2,4
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_embed import machine  # noqa: E402
from corpus import real_texts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import transformers

    import hfenc
    from hfenc.compute.engine import TextTokenizer

    path = hfenc.resolve_model(hfenc.DEFAULT_MODEL).path
    tok = TextTokenizer(transformers.AutoTokenizer.from_pretrained(str(path)), 256)
    texts = real_texts(args.n)
    print(f"machine: {machine()}; {len(texts):,} texts; TOKENIZERS_PARALLELISM="
          f"{os.environ.get('TOKENIZERS_PARALLELISM', '(unset)')}")
    print("| threads | texts/s | tokens/s |")
    print("|---:|---:|---:|")
    for threads in [int(t) for t in args.threads.split(",")]:
        best = float("inf")
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            out = tok(texts, threads=threads)
            best = min(best, time.perf_counter() - t0)
        print(f"| {threads} | {len(texts) / best:,.0f} | {int(out.lengths.sum()) / best:,.0f} |")


if __name__ == "__main__":
    main()
