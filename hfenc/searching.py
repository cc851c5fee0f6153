"""Exact top-k search over an embeddings index (.npy, .npz or .parquet), in numpy, in flat memory.

`search(index, queries, k)` embeds the queries with exactly the settings the index's sidecar
records (hfenc.io.sidecar: model, pooler, prompt, normalize, truncate-dim, max length, ...) and
returns a SearchResult; `search_vectors(index, vectors, k)` is the part after embedding.

Scores (higher is better; the table's `score`):
  float32 / float16 rows   q . x (the cosine when the index is normalized)
  int8 / uint8 rows        q . dequantize(x): the float query against each row's bucket values,
                           with the index's recorded ranges (sentence-transformers' rescoring
                           formula, applied to every row: exact, no candidate stage)
  binary / ubinary rows    the query is quantized with the index's precision; Hamming distance
                           picks the `rescore * k` nearest rows, which are rescored with the float
                           query against their bits, q . bits (sentence-transformers' rescoring);
                           `hamming` is reported too
  sparse rows (.npz, or a  q . x of the sparse query and row (SPLADE's "dot" similarity), exact over
  Parquet list of index/   every row (hfenc.search_sparse); the queries are embedded on the model's
  value entries)           query side: `side` says so
Ties are broken by the lower row. A chunked index (`hfenc embed --chunk-tokens`, issue 23) has a
row per chunk: each hit names its record (`doc_row`, `id`: the record's), its chunk and the
chunk's character span of the record, and the chunk's text (a Parquet `text` column, or --texts:
the record sliced by that span); `per_doc` keeps only each record's best chunk (exact: a block's
best chunk per record is merged into the running top-k by record).

The query prompt rule: when the model defines a prompt named "query", queries get it (the index
may have used a document prompt or none); otherwise queries get the index's own prompt. The result says which (`prompt_name`, `prompt`).
A sparse index's queries get what SparseEncoder.encode_query gives them: the "query" prompt where the
model defines one, else none (hfenc.search_sparse.query_embedder).

Memory: the index is read in blocks of ~32 MB from np.load(mmap_mode="r"); each block's pages
are dropped from this process after use (madvise DONTNEED; they stay in the page cache), so RSS
is a block plus the top-k lists whatever the index size. Parquet is read one row group at a time.
A sparse index is read in blocks of BLOCK_BYTES / 64 entries (~4 MB of them: scoring a block takes
several temporaries per entry, and smaller blocks stay in the CPU's caches) and at most
BLOCK_BYTES / 2048 rows, the .npz's pages dropped the same way.
Trade-off: one pass over the whole index per call (no ANN structure): exact, and linear in rows.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from hfenc.errors import ConfigError, InputError
from hfenc.io.outputs import OutputPaths, read_sidecar
from hfenc.io.sidecar import check_sidecar, recorded_spec
from hfenc.io.quantize import SCALAR, Quantization, as_ubinary, dequantize, unpack_bits
from hfenc.model.sparse import SparseRows
from hfenc.search_sparse import (QueryTerms, SparseTable, as_sparse, is_sparse_table, npz_blocks, query_embedder,
                                 score_block, sparse_record)

BLOCK_BYTES = 32 << 20
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return _POPCOUNT[x.view(np.uint8)].reshape(*x.shape, x.itemsize).sum(-1, dtype=np.uint8)


def _words(packed: np.ndarray) -> np.ndarray:
    """Packed bits (n, w) uint8 viewed as the widest unsigned words that divide w: 8x fewer
    XOR/popcount steps at d=384 (48 bytes = 6 uint64)."""
    packed = np.ascontiguousarray(packed)
    for size, kind in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if packed.shape[-1] % size == 0:
            return packed.view(kind)
    return packed


def _hamming(words: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Bits that differ between each row and the query (both as _words)."""
    return _popcount(words ^ query).sum(axis=1, dtype=np.int64)


@dataclass(frozen=True)
class Hit:
    rank: int
    row: int
    score: float
    id: str | None = None
    text: str | None = None
    hamming: int | None = None  # binary indexes: bits that differ from the query's
    doc_row: int | None = None  # a chunked index: the record this chunk is of
    chunk: int | None = None
    char_start: int | None = None  # record_text[char_start:char_end] is the chunk
    char_end: int | None = None


@dataclass(frozen=True)
class QueryHits:
    query: str
    hits: list[Hit]


@dataclass
class SearchResult:
    index: str
    rows: int
    dim: int
    stored: str  # float32 | float16 | int8 | uint8 | binary | ubinary | sparse
    scoring: str
    model: str
    prompt_name: str | None  # the prompt the queries got
    prompt: str | None
    results: list[QueryHits]
    seconds: float = 0.0  # the search over the index, embedding excluded
    embed_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    vectors: Any = field(default=None, repr=False)  # the float query embeddings (sparse: SparseRows)
    documents: int | None = None  # a chunked index: the records its rows (chunks) came from
    side: str | None = None  # a sparse index: the side of the model the queries were embedded on

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "rows": self.rows, "dim": self.dim, "stored": self.stored, "scoring": self.scoring,
            "model": self.model, "prompt_name": self.prompt_name, "prompt": self.prompt,
            "seconds": round(self.seconds, 4), "embed_seconds": round(self.embed_seconds, 4),
            "warnings": self.warnings, **({"documents": self.documents} if self.documents is not None else {}),
            **({"side": self.side} if self.stored == "sparse" else {}),
            "results": [{"query": r.query, "hits": [{k: v for k, v in vars(h).items()
                                                     if v is not None or k in ("id", "text")}
                                                    for h in r.hits]} for r in self.results],
        }


# ---- the index ------------------------------------------------------------------------------

class Index:
    """An embeddings file and its sidecar: rows, width, stored dtype, quantization, ids, texts.
    `allow_sparse`: open an index of sparse rows too (search does; a reader of dense rows refuses it)."""

    sparse = False  # rows of a sparse (SPLADE) model: a CSR .npz, or Parquet list<struct<index, value>>

    def __init__(self, path: str | Path, block_bytes: int | None = None, allow_sparse: bool = False) -> None:
        block_bytes = block_bytes or BLOCK_BYTES
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"index {self.path} does not exist" if not self.path.exists()
                             else f"index {self.path} is not a file")
        self.parquet = self.path.suffix.lower() in (".parquet", ".pq")
        self.sparse = self.path.suffix.lower() == ".npz"
        if not self.parquet and not self.sparse and self.path.suffix.lower() != ".npy":
            raise InputError(f"index {self.path}: an index is a .npy or .parquet output of `hfenc embed` "
                             "(or a sparse model's .npz)")
        self._table: Any = None
        sidecar = read_sidecar(OutputPaths(self.path).sidecar)
        if self.parquet:
            from hfenc.io.parquet import ParquetIndex, read_metadata

            sidecar = read_metadata(self.path) or sidecar  # the file's own copy first: it travels with it
            self.sparse = is_sparse_table(self.path)
        if self.sparse and not allow_sparse:
            raise InputError(f"{self.path} holds sparse (SPLADE) rows; this reads dense embeddings only",
                             hint="`hfenc search` searches sparse rows")
        if self.sparse:
            self._open_sparse(sidecar, block_bytes)
        elif self.parquet:
            self._table = ParquetIndex(self.path)
            self.rows, self.width, self.dtype = self._table.rows, self._table.width, self._table.dtype
        else:
            try:
                with open(self.path, "rb") as fh:
                    if fh.read(6) != b"\x93NUMPY":
                        raise ValueError("it does not start with the .npy magic bytes")
                self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read {self.path} as a .npy file: {' '.join(str(exc).split())}") from None
            if self._array.ndim != 2:
                raise InputError(f"{self.path} holds a {self._array.ndim}-d array, not rows of embeddings")
            self.rows, self.width = self._array.shape
            self.dtype = self._array.dtype
        if sidecar is None:
            raise InputError(f"{self.path} has no hfenc sidecar ({OutputPaths(self.path).sidecar.name})",
                             hint="search needs the settings embed recorded: search an output of `hfenc embed`")
        sidecar = check_sidecar(sidecar, f"the sidecar of {self.path}")
        if not sidecar.get("complete") or sidecar.get("rows") != self.rows or "dim" not in sidecar:
            raise InputError(f"the sidecar of {self.path} does not describe it ({sidecar.get('rows')} rows recorded, "
                             f"{self.rows} in the file)")
        self.sidecar = sidecar
        self.dim = sidecar["dim"]
        if self.sparse:
            sparse_record(sidecar, str(self.path))
        elif sidecar.get("sparse") is not None:
            raise InputError(f"the sidecar of {self.path} describes sparse rows; the file holds dense embeddings")
        q = sidecar.get("quantization")
        self.quantization = Quantization.from_record(q, f"the sidecar of {self.path}") if q is not None else None
        expect = self.quantization.width if self.quantization else self.dim
        if self.width != expect:
            raise InputError(f"{self.path} rows are {self.width} wide; its sidecar says {expect}")
        self.stored = "sparse" if self.sparse else self.quantization.precision if self.quantization else str(self.dtype)
        self.chunked = isinstance(sidecar.get("chunking"), dict)
        if not self.sparse:
            self.block_rows = max(1024, block_bytes // max(1, self.width * self.dtype.itemsize))

    def _open_sparse(self, sidecar: dict | None, block_bytes: int) -> None:
        """A sparse index: blocks of block_bytes / 64 entries and at most block_bytes / 2048 rows."""
        self.block_nnz, self.block_rows = max(1, block_bytes // 64), max(16, block_bytes // 2048)
        self.dtype = np.dtype(np.float32)
        if self.parquet:
            dim = sidecar.get("dim") if isinstance(sidecar, dict) else None
            self._table = SparseTable(self.path, dim if isinstance(dim, int) else 0, self.block_rows)
            self.rows, self.width = self._table.rows, dim
        else:
            from hfenc.io.npz import CsrNpz

            self._csr = CsrNpz(self.path)
            self.rows, self.width = self._csr.rows, self._csr.dim

    def blocks(self) -> Iterator[tuple[np.ndarray, Any]]:
        """(row indices, rows) in blocks, in flat memory (a sparse index's rows: SparseRows)."""
        if self.sparse and self._table is None:
            yield from npz_blocks(self._csr, self.block_nnz, self.block_rows)
            return
        if self._table is not None:
            for rows, block, _ in self._table.blocks():
                yield rows, block
            return
        mapping = getattr(self._array, "_mmap", None)
        if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            mapping.madvise(mmap.MADV_SEQUENTIAL)
        for start in range(0, self.rows, self.block_rows):
            end = min(self.rows, start + self.block_rows)
            yield np.arange(start, end, dtype=np.int64), np.asarray(self._array[start:end])
            if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                mapping.madvise(mmap.MADV_DONTNEED)  # the pages stay in the page cache, not in RSS

    def doc_blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """A chunked index's blocks with each row's record: (row indices, rows, doc_rows)."""
        if self._table is not None:
            yield from self._table.blocks(with_docs=True)
            return
        with open(self._chunks_file(), encoding="utf-8") as fh:
            fh.readline()  # the header
            for rows, block in self.blocks():
                docs = np.array([int(line.split("\t", 2)[1]) for line in islice(fh, len(rows))], np.int64)
                if len(docs) != len(rows):
                    raise InputError(f"{self._chunks_file()} has fewer lines than {self.path} has rows")
                yield rows, block, docs

    def _chunks_file(self) -> Path:
        path = self.path.with_name(str(self.sidecar.get("chunks_file") or ""))
        if not self.sidecar.get("chunks_file") or not path.is_file():
            raise InputError(f"the chunk provenance of {self.path} ({path.name}) is missing")
        return path

    def provenance(self, rows: set[int]) -> dict[int, tuple[int, int, int, int]]:
        """(doc_row, chunk, char_start, char_end) of a chunked index's rows."""
        if not self.chunked or not rows:
            return {}
        if self._table is not None:
            columns = [self._table.lookup(rows, name) for name in ("doc_row", "chunk", "char_start", "char_end")]
            return {r: tuple(int(c[r]) for c in columns) for r in rows if r in columns[0]}  # type: ignore[misc]
        found = {}
        with open(self._chunks_file(), encoding="utf-8") as fh:
            fh.readline()
            for i, line in enumerate(fh):
                if i in rows:
                    found[i] = tuple(int(v) for v in line.split("\t")[1:5])
        return found  # type: ignore[return-value]

    def ids(self, rows: set[int]) -> dict[int, str]:
        if self._table is not None:
            return self._table.lookup(rows, "doc_id" if self.chunked else "id")
        name = self.sidecar.get("ids_file")
        if not name or not rows:
            return {}
        path = self.path.with_name(name)
        if not path.is_file():
            return {}
        found = {}
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i in rows:
                    found[i] = line.rstrip("\n")
        return found

    def texts(self, rows: set[int], texts_file: str | Path | None = None) -> dict[int, str]:
        """Texts of hits: the Parquet `text` column, else `texts_file` (the input, read with the
        index's recorded format options; it must have one record per row, or for a chunked index
        one per document, sliced by each chunk's span)."""
        if self.chunked and texts_file is not None:
            spans = self.provenance(rows)
            docs = self._record_texts({d for d, _, _, _ in spans.values()}, texts_file,
                                      int(self.sidecar.get("documents") or 0))
            return {r: docs[d][a:b] for r, (d, _, a, b) in spans.items() if d in docs}
        return self._record_texts(rows, texts_file, self.rows)

    def _record_texts(self, rows: set[int], texts_file: str | Path | None, expect: int) -> dict[int, str]:
        if texts_file is None:
            return self._table.lookup(rows, "text") if self._table is not None else {}
        from hfenc.io.inputs import Tally, records

        recorded = self.sidecar.get("input") or {}
        if recorded.get("files"):
            raise InputError(f"the index was embedded from {len(recorded['files'])} files; --texts reads one",
                             hint="embed the files into one index each to show texts, or leave --texts out")
        spec = recorded_spec(recorded, [str(texts_file)])  # read as `embed` read it: row i is record i again
        found, n, tally = {}, 0, Tally()
        for n, record in enumerate(records(spec, tally), start=1):
            if n - 1 in rows:
                found[n - 1] = record.text
        if n != expect:
            what = "records" if self.chunked else "rows"
            raise InputError(f"{texts_file} has {n:,} records; the index has {expect:,} {what}",
                             hint="give the file the index was embedded from")
        if recorded.get("sha256") and tally.sha256 != recorded["sha256"]:
            raise InputError(f"{texts_file} is not the input the index was embedded from (its sha256 differs from "
                             "the one the sidecar records)", hint="give the file the index was embedded from")
        return found


# ---- top-k ----------------------------------------------------------------------------------

def _best(key: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest keys, ties by the lower row, in that order."""
    if len(key) > k:
        kth = np.partition(key, k - 1)[k - 1]
        keep = np.flatnonzero(key <= kth)
    else:
        keep = np.arange(len(key))
    order = np.lexsort((rows[keep], key[keep]))[:k]
    return keep[order]


def _float_rows(block: np.ndarray, index: Index) -> np.ndarray:
    if isinstance(block, SparseRows):  # a sparse index reaches a reader of dense rows
        raise InputError(f"{index.path} holds sparse (SPLADE) rows; this reads dense embeddings only")
    q = index.quantization
    if q is not None and q.precision in SCALAR:
        return dequantize(block, q.precision, q.ranges)
    return block.astype(np.float32, copy=False)


def _scores(q: Any, block: Any, idx: Index) -> np.ndarray:
    """(queries, block rows) scores of float query vectors, or of QueryTerms against sparse rows."""
    return score_block(q, block) if idx.sparse else q @ _float_rows(block, idx).T


def _queries(vectors: Any, idx: Index) -> Any:
    """The queries as the index's rows need them: float vectors, or QueryTerms of sparse rows."""
    sparse = as_sparse(vectors, idx.dim)
    if idx.sparse:
        if sparse is None:
            raise ConfigError(f"{idx.path} holds sparse (SPLADE) rows; the queries are dense vectors",
                              hint="give SparseRows, as a sparse model's Embedder(side=\"query\").encode returns")
        return QueryTerms(sparse)
    if sparse is not None:
        raise ConfigError(f"{idx.path} holds dense embeddings; the queries are sparse rows",
                          hint="embed the queries with the index's model")
    q = np.asarray(vectors, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != idx.dim:
        raise ConfigError(f"query vectors are {q.shape[-1]} wide; the index holds {idx.dim}-d embeddings")
    return q


def search_vectors(index: str | Path | Index, vectors: Any, k: int = 10,
                   rescore: int = 4, per_doc: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Top-k rows for each float query vector: (rows, scores, hamming or None), each (n_queries,
    <=k), best first. Binary indexes: Hamming picks rescore*k candidates, rescored in float.
    A sparse index's queries are sparse rows (SparseRows, or a SciPy sparse matrix): q . x.
    `per_doc` (a chunked index): the best chunk of each of the top-k records."""
    idx = index if isinstance(index, Index) else Index(index, allow_sparse=True)
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if rescore < 1:
        raise ConfigError(f"rescore must be at least 1, got {rescore}")
    q = _queries(vectors, idx)
    binary = idx.quantization is not None and idx.quantization.precision not in SCALAR
    if per_doc:
        if not idx.chunked:
            raise ConfigError("--per-doc is for a chunked index (hfenc embed --chunk-tokens N)")
        if binary:
            raise ConfigError(f"--per-doc needs exact scores; this index is {idx.quantization.precision}",
                              hint="embed it with --quantize int8 or without --quantize")
        return _per_doc(idx, q, k)
    keep = min(idx.rows, k * rescore if binary else k)
    nq = len(q)
    best_key = [np.empty(0, np.float64) for _ in range(nq)]
    best_rows = [np.empty(0, np.int64) for _ in range(nq)]
    best_codes = [np.empty((0, idx.width), idx.dtype) for _ in range(nq)]
    if binary:
        assert idx.quantization is not None
        q_words = _words(as_ubinary(idx.quantization(q), idx.quantization.precision))
    for rows, block in idx.blocks():
        if binary:  # one query at a time: memory is the block plus one row of distances
            words = _words(as_ubinary(block, idx.quantization.precision))
        else:
            scores = _scores(q, block, idx)  # (queries, block rows): small, the block dominates
        for i in range(nq):
            keys = _hamming(words, q_words[i]) if binary else -scores[i]  # smaller key is better
            key = np.concatenate((best_key[i], keys))
            cand = np.concatenate((best_rows[i], rows))
            pick = _best(key, cand, keep)
            if binary:  # keep the candidates' codes for rescoring (gathered, never the whole block copied)
                kept, old = len(best_rows[i]), pick < len(best_rows[i])
                codes = np.empty((len(pick), idx.width), idx.dtype)
                codes[old] = best_codes[i][pick[old]]
                codes[~old] = block[pick[~old] - kept]
                best_codes[i] = codes
            best_key[i], best_rows[i] = key[pick], cand[pick]
    out_rows = np.zeros((nq, min(k, idx.rows)), np.int64)
    out_scores = np.zeros(out_rows.shape, np.float32)
    out_ham = np.zeros(out_rows.shape, np.int64) if binary else None
    for i in range(nq):
        if binary:
            bits = unpack_bits(best_codes[i], idx.quantization.precision, idx.dim).astype(np.float32)
            scores = bits @ q[i]
            pick = _best(-scores.astype(np.float64), best_rows[i], k)
            out_rows[i], out_scores[i] = best_rows[i][pick], scores[pick]
            out_ham[i] = best_key[i][pick]
        else:
            out_rows[i], out_scores[i] = best_rows[i], -best_key[i]
    return out_rows, out_scores, out_ham


def _per_doc(idx: Index, q: Any, k: int) -> tuple[np.ndarray, np.ndarray, None]:
    """Each query's top-k records by their best chunk: per block, each record's best chunk (a
    record's chunks are consecutive rows), merged into the running top-k, one entry per record."""
    nq = len(q)
    best = [(np.empty(0, np.float64), np.empty(0, np.int64), np.empty(0, np.int64)) for _ in range(nq)]
    for rows, block, docs in idx.doc_blocks():
        scores = _scores(q, block, idx)
        starts = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
        segment = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(docs)]))
        for i in range(nq):
            # the best row of each record in the block: sort by (record, -score, row), first of each
            order = np.lexsort((rows, -scores[i].astype(np.float64), segment))
            first = order[np.r_[True, segment[order][1:] != segment[order][:-1]]]
            key = np.concatenate((best[i][0], -scores[i][first].astype(np.float64)))
            cand = np.concatenate((best[i][1], rows[first]))
            doc = np.concatenate((best[i][2], docs[first]))
            order = np.lexsort((cand, key))  # best first; a record kept once, with its best chunk
            _, once = np.unique(doc[order], return_index=True)
            keep = order[np.sort(once)][:k]
            best[i] = (key[keep], cand[keep], doc[keep])
    width = min(k, max(len(b[1]) for b in best) if best else 0)
    out_rows = np.zeros((nq, width), np.int64)
    out_scores = np.zeros((nq, width), np.float32)
    for i, (key, cand, _) in enumerate(best):
        out_rows[i, :len(cand)], out_scores[i, :len(cand)] = cand[:width], -key[:width]
    return out_rows, out_scores, None


def _scoring(idx: Index) -> str:
    if idx.sparse:
        return "dot product of the sparse query and rows"
    normalized = bool(idx.sidecar.get("normalize"))
    dot = "cosine" if normalized else "dot product"
    if idx.quantization is None:
        return dot
    if idx.quantization.precision in SCALAR:
        return f"{dot} of the float query with the dequantized rows"
    return "Hamming distance of the bits, the nearest rescored with the float query"


def search(index: str | Path | Index, queries: str | Sequence[str], k: int = 10, *, texts: str | Path | None = None,
           rescore: int = 4, device: str = "auto", prompt: str | None = None, prompt_name: str | None = None,
           embedder: Any = None, per_doc: bool = False) -> SearchResult:
    """Embed `queries` as the index was embedded (with the model's "query" prompt where it
    defines one), and return the exact top-k rows of the index for each. `texts`: the input the
    index was made from, to show the hits' texts (a Parquet index with a text column has them).
    A sparse index's queries are embedded on the model's query side (hfenc.search_sparse).
    `embedder`: one made by hfenc.io.sidecar.recorded_embedder (a sparse index's: by
    hfenc.search_sparse.query_embedder) for this index, to reuse it."""
    if isinstance(queries, str):
        queries = [queries]
    queries = list(queries)
    if not queries:
        raise ConfigError("no queries to search for")
    if any(not isinstance(t, str) for t in queries):
        raise ConfigError("queries must be strings")
    for number, query in enumerate(queries, 1):
        try:
            query.encode("utf-8")
        except UnicodeEncodeError:  # a command-line argument of bytes that are not UTF-8 arrives as surrogates
            raise InputError(f"query {number} is not valid UTF-8 text",
                             hint="give the query in UTF-8 (check the terminal's or the file's encoding)") from None
    idx = index if isinstance(index, Index) else Index(index, allow_sparse=True)
    if embedder is None and idx.sparse:
        embedder = query_embedder(idx.sidecar, idx.path.parent, prompt=prompt, prompt_name=prompt_name, device=device)
    elif embedder is None:
        from hfenc.io.sidecar import recorded_embedder

        embedder = recorded_embedder(idx.sidecar, idx.path.parent, prompt=prompt, prompt_name=prompt_name,
                                     device=device)
    t0 = time.perf_counter()
    vectors = embedder.encode(queries)
    t1 = time.perf_counter()
    rows, scores, ham = search_vectors(idx, vectors, k, rescore, per_doc)
    t2 = time.perf_counter()
    wanted = set(rows.ravel().tolist())
    ids, found_texts, spans = idx.ids(wanted), idx.texts(wanted, texts), idx.provenance(wanted)
    results = []
    for i, query in enumerate(queries):
        hits = [Hit(rank + 1, int(r), float(scores[i, rank]), ids.get(int(r)), found_texts.get(int(r)),
                    None if ham is None else int(ham[i, rank]), *spans.get(int(r), ()))
                for rank, r in enumerate(rows[i])]
        results.append(QueryHits(query, hits))
    settings = embedder.settings
    return SearchResult(str(index.path if isinstance(index, Index) else index), idx.rows, idx.dim, idx.stored,
                        _scoring(idx), settings.model, settings.prompt_name, settings.prompt, results,
                        seconds=t2 - t1, embed_seconds=t1 - t0, warnings=list(embedder.notes), vectors=vectors,
                        documents=idx.sidecar.get("documents") if idx.chunked else None,
                        side=settings.side if idx.sparse else None)
