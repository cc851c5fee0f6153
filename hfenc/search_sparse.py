"""The sparse (SPLADE) part of search (hfenc.searching): an index of sparse rows, queries embedded
on the model's query side, and exact dot products of sparse queries with sparse rows.

The index: a CSR .npz (hfenc.io.npz.CsrNpz, memory-mapped) or a Parquet table whose embedding
column is list<struct<index, value>> (SparseTable, a row group at a time), each read in blocks of
at most `max_nnz` entries and `max_rows` rows; the .npz's pages are dropped from this process
after each block (as the dense .npy's are), so memory stays at a block whatever the index's size.
Its sidecar must hold the "sparse" object `embed` writes (route, side, asymmetric, similarity).

Queries (`query_embedder`): the recorded model and settings, on the "query" side, as
SparseEncoder.encode_query embeds them: an asymmetric model's query route (an inference-free
model's static weights per token, which take no pooler or max length of the document route), the
model's "query" prompt where it defines one, else none; the recorded max_active_dims. The
weights' and configs' hashes must be the recorded ones, and on the recorded route every recorded
setting but the side and prompt too.

Scores (`score_block`): q . x, exact, in float64, over every row (a row sharing no term with a
query scores 0). The queries are indexed by term (QueryTerms); a block's entries whose term no
query has are skipped, and each remaining entry meets just the queries that have its term, in
slices of at most `pairs` (query, entry) pairs: the work is the matching pairs, not queries x
entries, and no query is made dense (a query is its active terms, whatever the vocabulary).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from hfenc.errors import ConfigError, InputError
from hfenc.io.npz import CsrNpz
from hfenc.io.parquet import ParquetIndex, arrow, sparse_rows
from hfenc.io.records import one_line
from hfenc.model.sparse import SparseRows

PAIRS = 1 << 18  # (query, entry) pairs gathered at a time: ~10 MB of temporaries


def sparse_record(sidecar: dict[str, Any], where: str) -> dict[str, Any]:
    """The sidecar's "sparse" object, checked; one InputError when it lacks one or it is not `embed`'s."""
    info = sidecar.get("sparse")
    hint = "search an output of `hfenc embed` with a sparse model, as it wrote it (or embed the input again)"
    if not isinstance(info, dict):
        raise InputError(f"{where} holds sparse rows, but its sidecar records no \"sparse\" object (the model's "
                         "side and route)", hint=hint)
    if not isinstance(info.get("asymmetric"), bool) or not isinstance(info.get("route"), str) \
            or not isinstance(info.get("side"), (str, type(None))):
        raise InputError(f"the sidecar of {where} is not one hfenc can use: its \"sparse\" object lacks asymmetric, "
                         "route or side", hint=hint)
    if info.get("similarity", "dot") != "dot":
        raise InputError(f"{where} records similarity {info.get('similarity')!r}; search scores sparse rows by "
                         "their dot product")
    if info.get("vocab_size", sidecar.get("dim")) != sidecar.get("dim"):
        raise InputError(f"the sidecar of {where} records a vocabulary of {info.get('vocab_size')} and rows "
                         f"{sidecar.get('dim')} wide")
    return info


def is_sparse_table(path: Path) -> bool:
    """Whether a Parquet file's embedding column is a list of (index, value) entries."""
    a = arrow()
    try:
        schema = a.pq.read_schema(str(path))
    except (a.pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read {path} as a Parquet file: {one_line(exc)}") from None
    if "embedding" not in schema.names:
        return False
    kind = schema.field("embedding").type
    return a.pa.types.is_list(kind) and a.pa.types.is_struct(kind.value_type) and \
        {"index", "value"} <= {f.name for f in kind.value_type}


# ---- reading the rows -----------------------------------------------------------------------

def _window(block: SparseRows, a: int, b: int) -> SparseRows:
    start, end = int(block.indptr[a]), int(block.indptr[b])
    return SparseRows(block.indptr[a:b + 1] - start, block.indices[start:end], block.values[start:end], block.dim)


def _windows(first: int, block: SparseRows, max_rows: int) -> Iterator[tuple[np.ndarray, SparseRows]]:
    """A block in pieces of at most `max_rows` rows, each with its row indices."""
    for a in range(0, len(block), max_rows):
        b = min(len(block), a + max_rows)
        yield np.arange(first + a, first + b, dtype=np.int64), _window(block, a, b)


def npz_blocks(csr: CsrNpz, max_nnz: int, max_rows: int) -> Iterator[tuple[np.ndarray, SparseRows]]:
    """(row indices, rows) of a CSR .npz, in flat memory: each block's pages are dropped from this
    process once it is used (they stay in the page cache)."""
    maps = [m for m in (getattr(a, "_mmap", None) for a in (csr.indptr, csr.indices, csr.values))
            if m is not None and hasattr(m, "madvise")]
    for m in maps:
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            m.madvise(mmap.MADV_SEQUENTIAL)
    for start, block in csr.blocks(max_nnz):
        yield from _windows(start, block, max_rows)
        for m in maps:
            if hasattr(mmap, "MADV_DONTNEED"):
                m.madvise(mmap.MADV_DONTNEED)


class SparseTable(ParquetIndex):
    """A Parquet index of sparse rows: ParquetIndex's lookups, blocks of SparseRows (a row group
    at a time, cut to `max_rows` rows)."""

    def __init__(self, path: str | Path, dim: int, max_rows: int) -> None:
        a = arrow()  # not ParquetIndex.__init__, which wants fixed-width rows
        self.path, self.dim, self.max_rows = Path(path), dim, max_rows
        try:
            self._file = a.pq.ParquetFile(str(path))
        except (a.pa.ArrowException, OSError) as exc:
            raise InputError(f"cannot read {path} as a Parquet file: {one_line(exc)}") from None
        self.columns = self._file.schema_arrow.names
        if "row" not in self.columns:
            raise InputError(f"{path} has no 'row' column: not an hfenc embeddings table")
        self.rows = self._file.metadata.num_rows
        self.width, self.dtype = dim, np.dtype(np.float32)

    def blocks(self, with_docs: bool = False) -> Iterator[tuple[np.ndarray, Any, np.ndarray | None]]:
        """(row indices, SparseRows, each row's doc_row or None)."""
        for group in range(self._file.metadata.num_row_groups):
            table = self._file.read_row_group(group, columns=["row", "embedding", *(["doc_row"] if with_docs else [])])
            block = sparse_rows(table.column("embedding"), self.dim)
            if len(block.indices) and (int(block.indices.min()) < 0 or int(block.indices.max()) >= self.dim):
                raise InputError(f"{self.path}: row group {group} holds an index outside [0, {self.dim})")
            rows = table.column("row").to_numpy()
            docs = table.column("doc_row").to_numpy() if with_docs else None
            for a in range(0, len(rows), self.max_rows):
                b = min(len(rows), a + self.max_rows)
                yield rows[a:b], _window(block, a, b), None if docs is None else docs[a:b]


# ---- queries and scores ---------------------------------------------------------------------

def as_sparse(queries: Any, dim: int) -> SparseRows | None:
    """SparseRows (or a SciPy sparse matrix) as SparseRows of width `dim`; None for anything else."""
    if hasattr(queries, "tocsr") and hasattr(queries, "shape"):  # SciPy, without importing it
        m = queries.tocsr()
        queries = SparseRows(np.asarray(m.indptr, np.int64), np.asarray(m.indices, np.int32),
                             np.asarray(m.data, np.float32), int(m.shape[1]))
    if not isinstance(queries, SparseRows):
        return None
    if queries.dim != dim:
        raise ConfigError(f"the query rows span a vocabulary of {queries.dim}; the index's is {dim}",
                          hint="embed the queries with the index's model")
    return queries


class QueryTerms:
    """Queries indexed by term: term t's queries are query[ptr[t]:ptr[t + 1]], their values value[...]."""

    def __init__(self, queries: SparseRows) -> None:
        base, end = int(queries.indptr[0]), int(queries.indptr[-1])
        terms = queries.indices[base:end].astype(np.int64)
        order = np.argsort(terms, kind="stable")
        self.n = len(queries)
        self.query = np.repeat(np.arange(self.n, dtype=np.int64), queries.counts())[order]
        self.value = queries.values[base:end].astype(np.float64)[order]
        self.ptr = np.zeros(queries.dim + 1, np.int64)
        np.cumsum(np.bincount(terms, minlength=queries.dim), out=self.ptr[1:])

    def __len__(self) -> int:
        return self.n


def score_block(q: QueryTerms, block: SparseRows, pairs: int | None = None) -> np.ndarray:
    """(queries, block rows) dot products, float64 (module docstring)."""
    pairs = pairs or PAIRS
    n = len(block)
    out = np.zeros(q.n * n, np.float64)
    base, end = int(block.indptr[0]), int(block.indptr[-1])
    terms = block.indices[base:end]
    have = q.ptr[terms + 1] - q.ptr[terms]  # how many queries have each entry's term
    at = np.flatnonzero(have)
    if len(at):
        count, first = have[at], q.ptr[terms[at]]
        row = np.searchsorted(block.indptr, at + base, side="right") - 1
        value = block.values[base:end][at].astype(np.float64)
        ends = np.cumsum(count)
        a = 0
        while a < len(at):  # entries a..b-1 make at most `pairs` pairs (one entry alone may make more)
            b = max(a + 1, int(np.searchsorted(ends, (ends[a - 1] if a else 0) + pairs, side="right")))
            c = count[a:b]
            pos = np.repeat(first[a:b] - (np.cumsum(c) - c), c) + np.arange(int(c.sum()))
            key = q.query[pos] * n + np.repeat(row[a:b], c)
            out += np.bincount(key, weights=q.value[pos] * np.repeat(value[a:b], c), minlength=q.n * n)
            a = b
    return out.reshape(q.n, n)


def query_embedder(sidecar: dict[str, Any], folder: Path, *, prompt: str | None = None,
                   prompt_name: str | None = None, device: str = "auto") -> Any:
    """An Embedder of the index's sparse model on its query side (module docstring)."""
    from hfenc.compute.embedder import Embedder
    from hfenc.io.sidecar import FREE_SETTINGS, recorded_model, embedder_options, recorded_settings

    info = sidecar["sparse"]
    settings = recorded_settings(sidecar)
    spec = recorded_model(sidecar, folder)
    same_route = not info["asymmetric"] or (info["side"] or settings.side) == "query"
    options = {k: v for k, v in embedder_options(settings, device=device).items() if k not in ("prompt", "prompt_name")}
    if prompt is not None or prompt_name is not None:
        options.update(prompt=prompt, prompt_name=prompt_name)
    options["side"] = "query"
    if not same_route:  # the query route's own pooler and length
        options.pop("max_length", None)
    if not same_route or info["route"] == "static":  # a static route takes no pooler
        options.pop("pooler", None)
    embedder = Embedder(spec, **options)
    if not embedder.sparse:
        raise ConfigError(f"model {spec.name} no longer makes sparse rows; the index holds them",
                          hint="search with the model files the index was made with, or embed the input again")
    got, want = asdict(embedder.settings), asdict(settings)
    route = () if same_route else ("pooler", "max_length", "lowercase", "padding_side", "include_prompt")
    skip = {*FREE_SETTINGS, "model", "dtype", "side", "prompt", "prompt_name", *route}
    differ = [k for k in want if k not in skip and got[k] != want[k]]
    for key, value in (("weights_sha256", embedder.weights_hash), ("config_sha256", embedder.config_hash)):
        if key in sidecar and sidecar[key] != value:
            differ.append(key)
    if differ:
        detail = ", ".join(f"{k}: {want.get(k, sidecar.get(k))!r} -> {got.get(k, 'other')!r}" for k in differ[:3])
        raise ConfigError(f"model {spec.name} no longer embeds as the index was embedded ({detail})",
                          hint="search with the model files the index was made with, or embed the input again")
    if got["dtype"] != want["dtype"] and same_route:
        embedder.notes.append(f"queries are computed in {got['dtype']}; the index was computed in {want['dtype']}")
    return embedder
