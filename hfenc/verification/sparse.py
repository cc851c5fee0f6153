"""`verify` on a sparse (SPLADE) output (issue 25): a SciPy CSR .npz or a Parquet file whose
`embedding` column is list<struct<index: int32, value: float32>>.

Layout (one line per kind of problem, naming its first row): the .npz opens as a CSR archive
(hfenc.io.npz.CsrNpz: members, format, lengths, the ends of indptr), its members match their
CRC-32s (hfenc's maps never read them; SciPy's reader does: a pass over the file), it holds
rows x dim of the sidecar (dim: the vocabulary), int32 indices, float32 values and the indptr
dtype SciPy picks; the Parquet column has the sparse type. Then, for both, in blocks of entries
(flat memory): indptr never decreases, each row's indices lie in [0, dim) and strictly increase
(sorted, no repeats), values are finite, and no row holds more than the recorded max_active_dims.

Rows embedded again (`compare_rows`), per row, with the row's largest |value| (of either) as scale
and `rtol` = VALUE_TOLERANCE of the dtype the rows are computed in:
  * the active dimensions match, except entries of at most rtol x scale (an activation that sits
    at 0 tips in or out with the batch), and, when max_active_dims prunes, entries no larger than
    the other row's smallest kept value + rtol x scale (a near-tie at the top-k cut swaps);
  * over the remaining entries (the swapped ties left out), the cosine of the two rows reaches
    hfenc.verification.rows.TOLERANCE (float32 0.99999, 16-bit 0.999), as for dense rows,
  * and no value differs by more than rtol x scale (float32 1e-3; float16/bfloat16 5e-2).
The cosine alone could hide one wrong small entry among large ones; the value bound alone would
pass a row scaled down; both together ask each entry and the row's direction to agree.
"""

from __future__ import annotations

import bisect
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hfenc.errors import InputError
from hfenc.model.sparse import SparseBlock, SparseRows

# the largest difference of a value, as a fraction of its row's largest |value|, by compute dtype
VALUE_TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "bfloat16": 5e-2, "int8": 0.1}
BLOCK_ENTRIES = 1 << 20  # entries checked at a time (~30 MB with their row numbers and temporaries)
_INT32_MAX = int(np.iinfo(np.int32).max)


def is_sparse(path: Path, sidecar: dict[str, Any]) -> bool:
    """Whether `path` is (or its sidecar says it is) a sparse output."""
    return path.suffix.lower() == ".npz" or isinstance(sidecar.get("sparse"), dict)


# ---- layout -------------------------------------------------------------------------------------

def check_sparse_layout(path: Path, sidecar: dict[str, Any], report: Any, files: list[Path]) -> bool:
    """The layout of a sparse .npz (all of it), or of sparse Parquet `files` (a file, or a --ray
    directory's shards): their column type and entries; the caller checks their row numbers.
    False when the entries could not be read."""
    rows, dim = report.rows, int(sidecar["dim"])
    info = sidecar.get("sparse")
    if not isinstance(info, dict):
        report.problems.append(f"{path.name} holds sparse rows but the sidecar does not describe a sparse model "
                               "(it has no \"sparse\" entry)")
        return False
    for key, want in (("vocab_size", dim), ("side", sidecar.get("side")),
                      ("max_active_dims", sidecar.get("max_active_dims"))):
        if info.get(key) != want:
            report.problems.append(f"the sidecar's sparse {key} is {info.get(key)!r}, but its "
                                   f"{'dim' if key == 'vocab_size' else key} is {want!r}")
    if path.suffix.lower() == ".npz":
        return _check_npz(path, sidecar, report, rows, dim)
    return all(_check_parquet(f, sidecar, report, dim) for f in files)


def _check_npz(path: Path, sidecar: dict[str, Any], report: Any, rows: int, dim: int) -> bool:
    from hfenc.io.npz import CsrNpz

    try:
        m = CsrNpz(path)
    except InputError as exc:
        report.problems.append(str(exc).replace(os.fspath(path), path.name, 1))
        return False
    try:  # SciPy's and numpy's readers check each member's CRC-32 (hfenc's maps do not): one pass
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (OSError, zipfile.BadZipFile) as exc:
        bad, why = "", f": {exc}"
    else:
        why = ""
    if bad is not None:
        report.problems.append(f"{path.name}: {bad or 'a member'} does not match its CRC-32{why} "
                               "(scipy.sparse.load_npz would refuse it)")
    if (m.rows, m.dim) != (rows, dim):
        report.problems.append(f"{path.name} holds {m.rows:,} x {m.dim:,} sparse rows; the sidecar says "
                               f"{rows:,} x {dim:,}")
        return False
    dtype = str(sidecar.get("out_dtype") or "float32")
    indptr = "int32" if max(m.nnz, m.rows, m.dim) <= _INT32_MAX else "int64"
    for member, array, want in (("indices", m.indices, "int32"), ("indptr", m.indptr, indptr),
                                ("data", m.values, dtype)):
        if str(array.dtype) != want:
            report.problems.append(f"{path.name}: {member}.npy holds {array.dtype}, not the {want} hfenc writes")
    step = 1 << 20  # indptr never decreases (checked before it is used to cut blocks)
    for start in range(0, m.rows, step):
        offsets = np.asarray(m.indptr[start:start + step + 1], np.int64)
        if len(down := np.flatnonzero(offsets[1:] < offsets[:-1])):
            report.problems.append(f"{path.name}: indptr decreases at row {start + int(down[0]):,} "
                                   "(a row cannot end before it starts)")
            return False
    _check_entries(path.name, _npz_blocks(m), dim, sidecar.get("max_active_dims"), report)
    return True


def _npz_blocks(m: Any) -> Iterator[tuple[np.ndarray, SparseRows]]:
    """(row numbers, rows) of at most BLOCK_ENTRIES entries (or one row), read from the maps
    as they are stored (no dtype conversion, so that nothing wrong is hidden)."""
    start = 0
    while start < m.rows:
        end = bisect.bisect_right(m.indptr, int(m.indptr[start]) + BLOCK_ENTRIES, start, m.rows + 1) - 1
        end = min(max(end, start + 1), m.rows)
        offsets = np.asarray(m.indptr[start:end + 1], np.int64)
        a, b = int(offsets[0]), int(offsets[-1])
        yield np.arange(start, end), SparseRows(offsets - a, np.asarray(m.indices[a:b]), np.asarray(m.values[a:b]),
                                                m.dim)
        start = end


def _check_parquet(path: Path, sidecar: dict[str, Any], report: Any, dim: int) -> bool:
    from hfenc.io.parquet import arrow, sparse_rows

    pa, pq = arrow().pa, arrow().pq
    try:
        pf = pq.ParquetFile(str(path))
        kind = pf.schema_arrow.field("embedding").type
    except Exception as exc:  # noqa: BLE001 (pyarrow raises several kinds for a damaged file)
        report.problems.append(f"cannot read {path.name} as Parquet: {' '.join(str(exc).split())[:200]}")
        return False
    value = kind.value_type if pa.types.is_list(kind) else None
    names = [value.field(i).name for i in range(value.num_fields)] if value is not None and pa.types.is_struct(value) \
        else []
    if names != ["index", "value"] or value.field(0).type != pa.int32() or value.field(1).type != pa.float32():
        report.problems.append(f"{path.name} stores {kind}; the sidecar says sparse rows of {dim:,} vocabulary "
                               "entries, list<struct<index: int32, value: float>>")
        return False

    def blocks() -> Iterator[tuple[np.ndarray, SparseRows]]:
        for batch in pf.iter_batches(batch_size=8192, columns=["row", "embedding"]):
            yield batch.column(0).to_numpy(), sparse_rows(batch.column(1), dim)

    try:
        _check_entries(path.name, blocks(), dim, sidecar.get("max_active_dims"), report)
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"cannot read {path.name} as Parquet: {' '.join(str(exc).split())[:200]}")
        return False
    return True


def _check_entries(name: str, blocks: Iterator[tuple[np.ndarray, SparseRows]], dim: int, k: int | None,
                   report: Any) -> None:
    """Each kind of bad row, counted over every block: one line per kind, naming the first row."""
    kinds = {"outside": f"an index outside [0, {dim:,})",
             "order": "indices that do not strictly increase (unsorted or repeated)",
             "finite": "a value that is not finite",
             "over": f"more than the {k} active dimensions max_active_dims allows"}
    found: dict[str, list[int]] = {}  # kind -> [rows, first row]
    for numbers, rows in blocks:
        n, base = len(rows), int(rows.indptr[0])
        indices = np.asarray(rows.indices[base:rows.indptr[-1]], np.int64)
        values = rows.values[base:rows.indptr[-1]]
        counts = rows.counts()
        of = np.repeat(np.arange(n), counts)
        step = indices[1:] <= indices[:-1]
        starts = (rows.indptr[1:-1] - base).astype(np.int64)  # where a new row starts: its first step is free
        step[starts[(starts > 0) & (starts < len(indices))] - 1] = False
        bad = {"outside": np.unique(of[(indices < 0) | (indices >= dim)]),
               "order": np.unique(of[1:][step]),
               "finite": np.unique(of[~np.isfinite(values)]),
               "over": np.flatnonzero(counts > k) if k is not None else np.empty(0, np.int64)}
        for kind, at in bad.items():
            if len(at):
                tally = found.setdefault(kind, [0, int(numbers[at[0]])])
                tally[0] += len(at)
    for kind, (count, first) in found.items():
        report.problems.append(f"{name}: {count:,} {'row holds' if count == 1 else 'rows hold'} {kinds[kind]} "
                               f"(first: row {first:,})")


# ---- stored rows --------------------------------------------------------------------------------

def stored_rows(path: Path, files: list[Path], sidecar: dict[str, Any], picks: np.ndarray) -> SparseRows:
    """Rows `picks` (ascending) of a sparse .npz or Parquet file(s), in that order."""
    dim = int(sidecar["dim"])
    if path.suffix.lower() == ".npz":
        from hfenc.io.npz import CsrNpz

        return CsrNpz(path).rows_at(picks)
    from hfenc.io.parquet import arrow, sparse_rows

    pq = arrow().pq
    block = SparseBlock(len(picks), dim)
    for f in files:
        index = pq.read_table(f, columns=["row"]).column("row").to_numpy()
        at = np.searchsorted(picks, index)
        hit = np.flatnonzero((at < len(picks)) & (picks[np.minimum(at, len(picks) - 1)] == index))
        if len(hit):
            block[at[hit]] = sparse_rows(pq.read_table(f, columns=["embedding"]).column("embedding").take(hit), dim)
    return block.rows()


# ---- rows embedded again ------------------------------------------------------------------------

def compare_rows(stored: SparseRows, fresh: SparseRows, *, rtol: float, k: int | None = None) -> dict[str, np.ndarray]:
    """Row i of `stored` against row i of `fresh` (module docstring), as per-row arrays:
    cosine, difference (the largest |a - b| over the row's scale), differ (active dimensions that
    differ beyond the rule) and largest (the largest such entry's value)."""
    if len(stored) != len(fresh) or stored.dim != fresh.dim:
        raise ValueError(f"{stored.shape} sparse rows against {fresh.shape}")
    n, dim = len(stored), max(1, stored.dim)

    def keyed(rows: SparseRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        base, end = int(rows.indptr[0]), int(rows.indptr[-1])
        row = np.repeat(np.arange(n, dtype=np.int64), rows.counts())
        return row * dim + rows.indices[base:end], rows.values[base:end].astype(np.float64), row

    ks, vs, rs = keyed(stored)
    kf, vf, rf = keyed(fresh)
    keys = np.union1d(ks, kf)
    a, b = np.zeros(len(keys)), np.zeros(len(keys))
    in_a, in_b = np.zeros(len(keys), bool), np.zeros(len(keys), bool)
    a[at := np.searchsorted(keys, ks)], in_a[at] = vs, True
    b[at := np.searchsorted(keys, kf)], in_b[at] = vf, True
    row = keys // dim
    scale = np.zeros(n)
    np.maximum.at(scale, row, np.maximum(np.abs(a), np.abs(b)))
    atol = rtol * scale[row]
    gap = np.abs(a - b)
    only = in_a != in_b
    tie = np.zeros(len(keys), bool)
    if k is not None:  # a near-tie at the top-k cut: kept on one side, cut on the other
        for mine, other, values, (their_rows, their_values, theirs) in ((in_a, in_b, a, (rf, vf, fresh)),
                                                                        (in_b, in_a, b, (rs, vs, stored))):
            least = np.full(n, np.inf)  # the other row's smallest kept value
            np.minimum.at(least, their_rows, their_values)
            tie |= mine & ~other & (theirs.counts() >= k)[row] & (values <= least[row] + atol)
    differ = only & (gap > atol) & ~tie
    keep = ~tie
    dot = np.bincount(row[keep], (a * b)[keep], minlength=n)
    na = np.bincount(row[keep], (a * a)[keep], minlength=n)
    nb = np.bincount(row[keep], (b * b)[keep], minlength=n)
    norm = np.sqrt(na * nb)
    cosine = np.where(norm > 0, dot / np.where(norm > 0, norm, 1), np.where((na == 0) & (nb == 0), 1.0, 0.0))
    worst = np.zeros(n)
    np.maximum.at(worst, row[keep], gap[keep])
    largest = np.zeros(n)
    np.maximum.at(largest, row[differ], gap[differ])
    return {"cosine": cosine, "difference": np.where(scale > 0, worst / np.where(scale > 0, scale, 1), 0.0),
            "differ": np.bincount(row[differ], minlength=n), "largest": largest, "scale": scale}


def check_sparse_rows(stored: SparseRows, fresh: SparseRows, picks: np.ndarray, computed: str, bound: float,
                      k: int | None, report: Any, listed: int) -> None:
    """Problems (one line per row, at most `listed`) and the figures of the rows embedded again."""
    rtol = VALUE_TOLERANCE.get(computed, 0.1)
    if not isinstance(fresh, SparseRows):
        report.problems.append("the model now makes dense rows; the output holds sparse ones")
        return
    if fresh.dim != stored.dim:
        report.problems.append(f"the model now makes rows of {fresh.dim:,} vocabulary entries; the output's have "
                               f"{stored.dim:,}")
        return
    got = compare_rows(stored, fresh, rtol=rtol, k=k)
    cos, rel, differ = got["cosine"], got["difference"], got["differ"]
    report.sampled, report.min_cosine = len(picks), float(cos.min())
    report.max_difference, report.value_tolerance = float(rel.max()), rtol
    report.tolerance, report.computed_in = bound, computed
    bad = np.flatnonzero((differ > 0) | (cos < bound) | (rel > rtol))
    for i in bad[:listed].tolist():
        r = int(picks[i])
        if differ[i]:
            report.problems.append(
                f"row {r}: embedded again, {int(differ[i])} of its active dimensions differ from the stored row's "
                f"(the largest {got['largest'][i]:.4g}; {computed} lets entries up to {rtol} of the row's largest "
                f"value, {rtol * got['scale'][i]:.3g}, differ)")
        elif cos[i] < bound:
            report.problems.append(f"row {r}: embedded again, its cosine to the stored row is {cos[i]:.6f} "
                                   f"({computed} allows >= {bound})")
        else:
            report.problems.append(f"row {r}: embedded again, a value differs from the stored one by {rel[i]:.2g} of "
                                   f"the row's largest value ({computed} allows {rtol})")
    if len(bad) > listed:
        report.problems.append(f"and {len(bad) - listed:,} more rows differ")
