"""`hfenc diff A B`: how far apart two outputs of one input are (two models, two versions, float32
vs bf16, float vs quantized), in numpy, in two passes over both files read in step.

Refused unless A and B are outputs of the same input: the sidecars' input sha256 and reading
settings, the row counts, a chunked output's chunks (each row's record and character span) and,
where both record them, each row's text hash (`hashes_file` beside the output, or a Parquet
`text_sha256` column; older outputs have neither and skip that check). The models may differ.

Rows are made float64 (int8/uint8 dequantized with the recorded ranges, binary bits as -1/+1);
a cosine is the dot product over both norms (0 for a zero row). Metrics:
  cosine     A's row i against B's row i, over every row: min, p1, median, mean (equal widths
             only; None otherwise, and no `moved`)
  overlap@k  for `sample` rows (seeded, without replacement): |A's top-k & B's top-k| / k, exact
             top-k by cosine among all other rows, ties to the lower row (as search breaks them)
  spearman   rank correlation (average ranks for ties) of A's and B's cosines of `pairs` pairs
  moved      the `top` rows of lowest cosine, lower row first on ties, with ids (and record, chunk)

Sparse outputs (issue 25: a SciPy CSR .npz, or Parquet list<struct<index, value>>) compare with
sparse outputs only (a dense against a sparse one is refused): `cosine` and `moved` as above (rows
of one vocabulary only), but neighbours and pairs by the dot product, a sparse model's similarity
(`similarity` says which). Rows stay sparse throughout: a piece's scores against the sample are a
sparse-sparse product (each entry of the piece meets the sample rows active in its dimension),
summed in float64 in ascending dimension order, so that a pair scores bit for bit the same from
either end; the work is the pairs of entries that share a dimension, not rows x vocabulary.

Memory: a piece of each file (at most PIECE_ROWS rows, ~16 MB as float64) and the sample's scores
against it, the sample's rows and top-k lists, and 8 bytes a row for the per-row cosines (exact
percentiles need them all: a fraction 2/dim of float32 rows' size); measured flat from 100k to
300k rows of 384-d. Trade-offs: scores in float64 (rows of one model are often so alike that
float32 reorders neighbours), about twice float32's time; a pair is (a sample row, any other row,
uniform), so its cosines come free with the neighbour scores, and the pairs' first rows repeat.
Sparse outputs: a piece's rows stay sparse, so the memory is the scores (the sample x a piece of
at most PIECE_ROWS rows, ~16 MB), the sample's rows by dimension (8 bytes per vocabulary entry,
16 per active entry) and a product's temporaries (~PAIRS x 40 bytes).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from hfenc.errors import ConfigError, InputError
from hfenc.io.hashes import hex_hashes
from hfenc.io.quantize import SCALAR, unpack_bits
from hfenc.model.sparse import SparseRows
from hfenc.searching import Index, _best, _float_rows

PIECE_ROWS = 4096
PAIRS = 1 << 20  # pairs of entries (a piece's, the sample's) multiplied at a time: ~30 MB
_READING = ("format", "field", "column", "skip_blank", "tsv_quoting", "encoding_errors")
_SAME = "diff compares outputs of one input (two models, versions or dtypes): embed the same file for both"
_CUT = "embed both with the same --chunk-tokens, --chunk-overlap and --chunk-by, and models with one tokenizer"


@dataclass(frozen=True)
class Side:
    path: str
    model: str | None
    dtype: str | None  # what embed computed in (float32, bfloat16, ...)
    stored: str  # float32 | float16 | int8 | uint8 | binary | ubinary
    dim: int
    rows: int


@dataclass(frozen=True)
class Moved:
    row: int
    cosine: float
    id: str | None = None
    doc_row: int | None = None  # a chunked output: the record and chunk of the row
    chunk: int | None = None


@dataclass
class DiffResult:
    a: Side
    b: Side
    rows: int
    cosine: dict[str, float] | None  # min, p1, median, mean; None when the widths differ
    k: int
    sample: int  # rows whose neighbours were compared
    overlap: dict[str, float] | None  # mean, min of |A & B| / k; None under 2 rows
    pairs: int
    spearman: float | None  # None without pairs, or when one side's cosines are all equal
    moved: list[Moved]
    seconds: float = 0.0
    similarity: str = "cosine"  # of neighbours and pairs: "dot" for sparse outputs

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["moved"] = [{k: v for k, v in asdict(m).items() if v is not None or k == "id"} for m in self.moved]
        return d


def open_index(path: str | Path) -> Index:
    """An output for diff, dense or sparse (hfenc.searching.Index reads both)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"index {path} does not exist")
    return Index(path, allow_sparse=True)


def check_same_kind(a: Index, b: Index) -> None:
    sa, sb = a.sparse, b.sparse
    if sa != sb:
        sparse, dense = (a, b) if sa else (b, a)
        raise InputError(f"{sparse.path} holds sparse rows and {dense.path} dense ones: diff compares two dense "
                         "or two sparse outputs", hint="diff each against an output of the same kind of model")


def check_same_input(a: Index, b: Index) -> None:
    """One InputError naming what differs when A and B cannot be outputs of the same input."""
    def refuse(what: str, hint: str = _SAME) -> InputError:
        return InputError(f"{a.path} and {b.path} are not outputs of the same input: {what}", hint=hint)

    ia, ib = (x.sidecar.get("input") or {} for x in (a, b))
    for idx, rec in ((a, ia), (b, ib)):
        if not isinstance(rec.get("sha256"), str):
            raise InputError(f"{idx.path} records no input sha256, so diff cannot tell what it was embedded from",
                             hint="embed it again with this hfenc")
    if ia["sha256"] != ib["sha256"]:
        raise refuse("the input's sha256 differs ({}... vs {}...)".format(*(r["sha256"].split(":")[-1][:12] for r in (ia, ib))))
    for key in _READING:
        if ia.get(key) != ib.get(key):
            raise refuse(f"the input was read with {key} {ia.get(key)!r} vs {ib.get(key)!r}")
    files = [[(Path(str(f.get("path"))).name, f.get("rows")) if isinstance(f, dict) else f
              for f in (r.get("files") or [])] for r in (ia, ib)]
    if files[0] != files[1]:
        raise refuse("their lists of input files differ")
    if a.chunked != b.chunked:
        raise refuse(f"{(a if a.chunked else b).path} is chunked (a row per chunk), the other is not", _CUT)
    if a.rows != b.rows:
        raise refuse(f"{a.rows:,} rows vs {b.rows:,}", _CUT if a.chunked else _SAME)


# ---- streams of rows, read in step ------------------------------------------------------------

def _stored(idx: Index) -> Iterator[np.ndarray]:
    at = 0
    for rows, block in idx.blocks():
        if len(rows) and (rows[0] != at or np.any(np.diff(rows) != 1)):  # row i of A must meet row i of B
            raise InputError(f"{idx.path} holds its rows out of order (row {int(rows[0]):,} after {at:,})")
        at += len(rows)
        yield block


def _column(idx: Index, names: list[str]) -> Iterator[list[np.ndarray]]:
    from hfenc.io.parquet import arrow

    pf = arrow().pq.ParquetFile(str(idx.path))
    missing = [n for n in names if n not in pf.schema_arrow.names]
    if missing:
        raise InputError(f"{idx.path} has no {missing[0]!r} column")
    for batch in pf.iter_batches(batch_size=65536, columns=names):
        yield [batch.column(i).to_numpy(zero_copy_only=False) for i in range(len(names))]


def _spans(idx: Index) -> Iterator[np.ndarray]:
    """Each row's (record, char_start, char_end): equal in A and B when the chunks are."""
    if idx.parquet:
        for cols in _column(idx, ["doc_row", "char_start", "char_end"]):
            yield np.column_stack(cols).astype(np.int64)
        return
    path = idx._chunks_file()
    with open(path, encoding="utf-8") as fh:
        fh.readline()  # the header: row, doc_row, chunk, char_start, char_end, ...
        while lines := list(islice(fh, 65536)):
            try:
                yield np.array([[int(f[1]), int(f[3]), int(f[4])] for f in (ln.split("\t") for ln in lines)], np.int64)
            except (ValueError, IndexError):
                raise InputError(f"{path} is not a chunk provenance file hfenc wrote") from None


def _hashes(idx: Index) -> Iterator[np.ndarray] | None:
    """Each row's text SHA-256 as (n, 32) uint8, or None where the output records none (an older hfenc)."""
    if idx.parquet:
        from hfenc.io.parquet import arrow

        if "text_sha256" in arrow().pq.read_schema(str(idx.path)).names:
            batches = arrow().pq.ParquetFile(str(idx.path)).iter_batches(batch_size=65536, columns=["text_sha256"])
            return (_unhex(batch.column(0), idx) for batch in batches)
    name = idx.sidecar.get("hashes_file")
    if name is None:
        return None
    path = idx.path.with_name(Path(str(name)).name)  # beside the output, whatever the sidecar says
    try:
        codes = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}, the text hashes of {idx.path}: {' '.join(str(exc).split())}") from None
    if codes.dtype != np.uint8 or codes.shape != (idx.rows, 32):
        raise InputError(f"{path} holds {codes.dtype} {codes.shape}, not the ({idx.rows}, 32) uint8 hashes of {idx.path}")
    return (codes[i:i + 65536] for i in range(0, idx.rows, 65536))


def _unhex(column: Any, idx: Index) -> np.ndarray:
    decoded = hex_hashes(column)
    if decoded is None:
        raise InputError(f"{idx.path}: its text_sha256 column holds a value that is not 64 hex digits")
    return decoded


def _pieces(streams: list[Iterable[np.ndarray]], step: int, names: list[str]) -> Iterator[list[np.ndarray]]:
    """Equal-length pieces (at most `step` rows) cut from streams whose blocks differ in size;
    only a piece is ever copied (where it spans two blocks), never a block."""
    its, held = [iter(s) for s in streams], [[] for _ in streams]
    while its:
        for it, parts in zip(its, held):
            while sum(map(len, parts)) < step and (block := next(it, None)) is not None:
                parts.append(block)
        have = [sum(map(len, parts)) for parts in held]
        n = min(step, *have)
        if n == 0:
            if any(have):
                raise InputError(f"{names[have.index(0)]} ends before the rest of the files compared")
            return
        out = []
        for parts in held:
            taken = []
            while sum(map(len, taken)) < n:
                want = n - sum(map(len, taken))
                taken.append(_cut(parts[0], 0, want))
                parts[0] = _cut(parts[0], want, len(parts[0]))
                if not len(parts[0]):
                    parts.pop(0)
            out.append(taken[0] if len(taken) == 1 else _join(taken))
        yield out


def _cut(block: Any, start: int, end: int) -> Any:
    """Rows start..end of a block: a view (SparseRows: of its arrays, its indptr need not start at 0)."""
    if isinstance(block, SparseRows):  # as numpy slices: start and end clipped to the rows
        start, end = min(start, len(block)), min(end, len(block))
        return SparseRows(block.indptr[start:max(start, end) + 1], block.indices, block.values, block.dim)
    return block[start:end]


def _join(parts: list[Any]) -> Any:
    return SparseRows.concat(parts) if isinstance(parts[0], SparseRows) else np.concatenate(parts)


def _floats(block: np.ndarray, idx: Index) -> tuple[np.ndarray, np.ndarray]:
    """Rows as float64 and their norms (1 for a zero row). Cosines divide by the norms after the
    product, so that rows of bits (-1/+1) score in whole numbers: their ties stay exact."""
    q = idx.quantization
    if q is not None and q.precision not in SCALAR:
        x = unpack_bits(block, q.precision, idx.dim).astype(np.float64) * 2 - 1
    else:
        x = _float_rows(block, idx).astype(np.float64)
    norm = np.linalg.norm(x, axis=1)
    return x, np.where(norm > 0, norm, 1)


def _entries(rows: SparseRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A piece's entries: (row of each, index, value as float64)."""
    base, end = int(rows.indptr[0]), int(rows.indptr[-1])
    of = np.repeat(np.arange(len(rows), dtype=np.int64), rows.counts())
    return of, rows.indices[base:end].astype(np.int64), rows.values[base:end].astype(np.float64)


def _sparse_cosines(a: SparseRows, b: SparseRows) -> np.ndarray:
    """Row i of `a` against row i of `b` (one vocabulary), 0 for a zero row."""
    n, dim = len(a), max(1, a.dim)
    (ra, ia, va), (rb, ib, vb) = _entries(a), _entries(b)
    _, at_a, at_b = np.intersect1d(ra * dim + ia, rb * dim + ib, assume_unique=True, return_indices=True)
    dot = np.bincount(ra[at_a], va[at_a] * vb[at_b], minlength=n)
    na, nb = (np.sqrt(np.bincount(r, v * v, minlength=n)) for r, v in ((ra, va), (rb, vb)))
    return dot / (np.where(na > 0, na, 1) * np.where(nb > 0, nb, 1))


def _by_dimension(rows: SparseRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample's rows by dimension (CSC): (where each dimension's entries start, dim + 1 of them;
    each entry's row; its value), the rows ascending within a dimension."""
    of, index, value = _entries(rows)
    order = np.argsort(index, kind="stable")
    return np.searchsorted(index[order], np.arange(rows.dim + 1)), of[order], value[order]


def _dots(sample: tuple[np.ndarray, np.ndarray, np.ndarray], nq: int, piece: SparseRows) -> np.ndarray:
    """(nq, len(piece)) dot products of the sample's rows (_by_dimension) and a piece's, as float64
    sums over their shared dimensions in ascending order: the products of float32 values are exact,
    so the score of rows i and j does not depend on which of them is the sample row. A row's pairs
    are summed at once (groups of whole rows, of about PAIRS pairs; a row alone may hold more)."""
    start, who, weight = sample
    n = len(piece)
    of, index, value = _entries(piece)
    meets = start[index + 1] - start[index]  # the sample rows active in each entry's dimension
    ends = np.zeros(n + 1, np.int64)  # pairs up to each row
    np.cumsum(np.bincount(of, meets, minlength=n).astype(np.int64), out=ends[1:])
    first = np.asarray(piece.indptr, np.int64) - int(piece.indptr[0])  # each row's first entry
    out = np.zeros((n, nq))
    r = 0
    while r < n:
        r2 = min(n, max(r + 1, int(np.searchsorted(ends, ends[r] + PAIRS, "right")) - 1))
        e0, e1 = int(first[r]), int(first[r2])
        count = meets[e0:e1]
        total = int(count.sum())
        if total:
            offsets = np.cumsum(count) - count
            pos = np.repeat(start[index[e0:e1]] - offsets, count) + np.arange(total)
            cell = np.repeat(of[e0:e1] - r, count) * nq + who[pos]
            out[r:r2] = np.bincount(cell, weight[pos] * np.repeat(value[e0:e1], count),
                                    minlength=(r2 - r) * nq).reshape(r2 - r, nq)
        r = r2
    return np.ascontiguousarray(out.T)


# ---- metrics ----------------------------------------------------------------------------------

def draws(rows: int, sample: int, pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What diff draws: the sample's rows (sorted), and each pair as (its index in the sample, another row)."""
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(rows, size=min(sample, rows), replace=False)).astype(np.int64)
    n = pairs if rows >= 2 and len(queries) else 0
    first = rng.integers(0, max(1, len(queries)), n)
    other = rng.integers(0, max(1, rows - 1), n)
    return queries, first, other + (other >= queries[first])  # skip the pair's own row: uniform over the others


def _merge(best: tuple[np.ndarray, np.ndarray], s: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Running top-k (scores, rows) of each query, best first and ties to the lower row, merged with a piece."""
    if s.shape[1] > k:
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(s, part, 1)
        kth = top.min(1, keepdims=True)
        for q in np.flatnonzero((s == kth).sum(1) > (top == kth).sum(1)):  # a tie cut: the lower rows win
            part[q] = np.argsort(-s[q], kind="stable")[:k]
    else:
        part = np.broadcast_to(np.arange(s.shape[1]), s.shape)
    scores = np.concatenate((best[0], np.take_along_axis(s, part, 1)), 1)
    cand = np.concatenate((best[1], rows[part]), 1)
    order = np.lexsort((cand, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(cand, order, 1)


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    v = x[order]
    first = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
    size = np.diff(np.r_[first, len(v)])
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(first + (size - 1) / 2, size)  # ties share their average rank
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation (Pearson's of average ranks); None when it is not defined."""
    if len(x) < 2:
        return None
    # rounded first: a pair met from both ends, (i, j) and (j, i), differs in the last bits only,
    # and must tie (on a small input the same pairs are drawn many times)
    rx, ry = _ranks(np.round(np.asarray(x, np.float64), 12)), _ranks(np.round(np.asarray(y, np.float64), 12))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / den) if den > 0 else None


def _rows_pass(ia: Index, ib: Index, queries: np.ndarray, step: int) -> tuple[np.ndarray | None, list[Any]]:
    """Pass 1: the row-by-row checks (chunks, text hashes), the per-row cosines, the sample's rows
    (dense: float64 rows and norms; sparse: SparseRows)."""
    checks: list[tuple[str, Any, Any]] = [("chunk", _spans(ia), _spans(ib))] if ia.chunked else []
    if (hashes := (_hashes(ia), _hashes(ib)))[0] is not None and hashes[1] is not None:
        checks.append(("text", *hashes))
    names = [str(x.path) for x in (ia, ib)] + [f"the {w} records of {x.path}" for w, _, _ in checks for x in (ia, ib)]
    cosines = np.empty(ia.rows) if ia.dim == ib.dim else None
    sparse = ia.sparse
    # the sample's rows and norms, in float64: near-ties (one model's rows are often alike) keep their order;
    # sparse rows: the sample's rows, piece by piece
    qs: list[Any] = [[] for _ in (ia, ib)] if sparse else \
        [(np.zeros((len(queries), x.dim)), np.ones(len(queries))) for x in (ia, ib)]
    at = 0
    for piece in _pieces([_stored(ia), _stored(ib), *(s for _, x, y in checks for s in (x, y))], step, names):
        n = len(piece[0])
        for (what, _, _), x, y in zip(checks, piece[2::2], piece[3::2]):
            if len(bad := np.flatnonzero((x != y).reshape(n, -1).any(1))):
                r = int(bad[0])
                raise InputError(f"{ia.path} and {ib.path} are not outputs of the same input: row {at + r:,} is "
                                 + (f"another chunk (record, characters: {x[r].tolist()} vs {y[r].tolist()})"
                                    if what == "chunk" else "another text (their text hashes differ)"),
                                 hint=_CUT if what == "chunk" else _SAME)
        lo, hi = np.searchsorted(queries, [at, at + n])
        if sparse:
            if cosines is not None:
                cosines[at:at + n] = _sparse_cosines(piece[0], piece[1])
            for q, block in zip(qs, piece[:2]):
                q.append(block.take(queries[lo:hi] - at))
        else:
            (xa, na), (xb, nb) = _floats(piece[0], ia), _floats(piece[1], ib)
            if cosines is not None:
                cosines[at:at + n] = np.einsum("ij,ij->i", xa, xb) / (na * nb)
            for (q, qn), x, norm in zip(qs, (xa, xb), (na, nb)):
                q[lo:hi], qn[lo:hi] = x[queries[lo:hi] - at], norm[queries[lo:hi] - at]
        at += n
    if sparse:
        qs = [SparseRows.concat(q, x.dim) for q, x in zip(qs, (ia, ib))]
    return cosines, qs


def _neighbours_pass(ia: Index, ib: Index, qs: list[Any], queries: np.ndarray, first: np.ndarray,
                     other: np.ndarray, keep: int, step: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Pass 2: the sample's top-`keep` rows in A and in B, and the pairs' similarities (cosines; sparse
    rows: dot products), pairs by `other`."""
    best = [(np.full((len(queries), keep), -np.inf), np.full((len(queries), keep), -1, np.int64)) for _ in qs]
    sims = np.zeros((2, len(other)))
    sparse = ia.sparse
    if sparse:  # the sample by dimension, for the sparse product with each piece
        qs = [_by_dimension(q) for q in qs]
    at = 0
    for piece in _pieces([_stored(ia), _stored(ib)], step, [str(ia.path), str(ib.path)]):
        n = len(piece[0])
        lo, hi = np.searchsorted(other, [at, at + n])
        qlo, qhi = np.searchsorted(queries, [at, at + n])
        for side, (block, idx, q) in enumerate(zip(piece, (ia, ib), qs)):
            if sparse:
                s = _dots(q, len(queries), block)
            else:
                x, norm = _floats(block, idx)
                s = q[0] @ x.T
                s /= q[1][:, None]
                s /= norm
            sims[side, lo:hi] = s[first[lo:hi], other[lo:hi] - at]
            s[np.arange(qlo, qhi), queries[qlo:qhi] - at] = -np.inf  # not its own neighbour
            best[side] = _merge(best[side], s, np.arange(at, at + n), keep)
        at += n
    return [rows for _, rows in best], sims


def diff(a: str | Path, b: str | Path, *, sample: int = 1000, k: int = 10, pairs: int = 20000, top: int = 10,
         seed: int = 0) -> DiffResult:
    """Compare two outputs of the same input (see the module docstring); refused, naming what
    differs, when they are not."""
    for name, value, least in (("sample", sample, 0), ("k", k, 1), ("pairs", pairs, 0), ("top", top, 0)):
        if value < least:
            raise ConfigError(f"{name} must be at least {least}, got {value}")
    t0 = time.perf_counter()
    ia, ib = open_index(a), open_index(b)
    check_same_kind(ia, ib)
    check_same_input(ia, ib)
    sparse = ia.sparse
    rows, keep = ia.rows, max(0, min(k, ia.rows - 1))
    queries, first, other = draws(rows, sample, pairs, seed)
    # a piece's float rows, and the sample's scores against it, in about 16 MB each (sparse rows: the scores)
    step = int(min(PIECE_ROWS, max(16, (16 << 20) // (8 * max(1 if sparse else max(ia.dim, ib.dim), len(queries))))))
    cosines, qs = _rows_pass(ia, ib, queries, step)
    overlap, rho = None, None
    if keep and len(queries):
        order = np.argsort(other, kind="stable")
        tops, sims = _neighbours_pass(ia, ib, qs, queries, first[order], other[order], keep, step)
        shared = (tops[0][:, :, None] == tops[1][:, None, :]).any(2).sum(1) / keep
        overlap, rho = {"mean": float(shared.mean()), "min": float(shared.min())}, spearman(*sims)
    stats, moved = None, []
    if cosines is not None and rows:
        p1, median = np.percentile(cosines, [1, 50])
        stats = {"min": float(cosines.min()), "p1": float(p1), "median": float(median), "mean": float(cosines.mean())}
        low = _best(cosines, np.arange(rows), min(top, rows)).tolist()  # ties: the lower row first
        ids, spans = ia.ids(set(low)) or ib.ids(set(low)), ia.provenance(set(low))
        moved = [Moved(r, float(cosines[r]), ids.get(r), *spans.get(r, ())[:2]) for r in low]
    side = [Side(str(x.path), x.sidecar.get("model"), x.sidecar.get("dtype"), x.stored, x.dim, x.rows) for x in (ia, ib)]
    return DiffResult(side[0], side[1], rows, stats, k, len(queries), overlap, len(other), rho, moved,
                      seconds=time.perf_counter() - t0, similarity="dot" if sparse else "cosine")
