"""How right the progress line's ETA is on a real run: every progress report's ETA against the
time the run really had left, from the moment 10% of the tokens are done.

    python benchmarks/check_eta.py --n 8000 --chunk 2000

Embeds `n` real texts (benchmarks/corpus.py) with the packaged all-MiniLM-L6-v2 through
`embed_file`, as `hfenc embed` does, recording (time, ETA, tokens done) at each report; prints
the worst and median relative error of the ETA (tokens) and of a rows-per-second ETA (what
hfenc showed before), with the CPU named.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_busy import cpu_name  # noqa: E402
from corpus import real_texts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--chunk", type=int, default=2000, help="records per chunk (several: the estimate of unread rows)")
    args = ap.parse_args()
    from hfenc import Embedder, InputSpec, JobOptions, embed_file
    from hfenc.compute.engine import Progress

    with tempfile.TemporaryDirectory() as tmp:
        texts = Path(tmp) / "texts.txt"
        texts.write_text("\n".join(t.replace("\n", " ") for t in real_texts(args.n)) + "\n", encoding="utf-8")
        seen: list[tuple[float, Progress]] = []
        job = JobOptions(InputSpec(str(texts)), Path(tmp) / "out.npy", chunk_size=args.chunk)
        embed_file(job, Embedder, progress=lambda p: seen.append((time.perf_counter(), p)))
        end = time.perf_counter()
    total = seen[-1][1].tokens_done
    errors, by_rows = [], []
    for at, p in seen:
        left = end - at
        if p.tokens_done < 0.1 * total or left < 1.0:
            continue
        errors.append(abs(p.eta - left) / left)
        old = Progress(p.rows_done, p.rows_total, p.tokens_done, p.elapsed, p.resumed).eta
        by_rows.append(abs(old - left) / left)
    print(f"{cpu_name()}; {args.n:,} real texts in chunks of {args.chunk:,}; {total:,} tokens; "
          f"{len(errors)} reports checked (10% of the tokens done, over 1 s left)")
    print(f"ETA from tokens:   worst {max(errors):.1%}, median {statistics.median(errors):.1%} off the time left")
    print(f"ETA from rows/s:   worst {max(by_rows):.1%}, median {statistics.median(by_rows):.1%} off the time left")


if __name__ == "__main__":
    main()
