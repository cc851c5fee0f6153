"""hfenc.io.npz: SciPy's CSR .npz, written streamed and read memory-mapped."""

from __future__ import annotations

import itertools
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from hfenc.errors import InputError
from hfenc.io.npz import CsrNpz, write_csr
from hfenc.model.sparse import SparseRows

DIM = 30522


def random_csr(rows: int, dim: int = 1000, density: float = 0.02, seed: int = 0) -> sparse.csr_matrix:
    m = sparse.random(rows, dim, density=density, format="csr", dtype=np.float32, random_state=seed)
    if rows > 3:  # some empty rows for sure, the first and last among them
        keep = np.ones(rows, bool)
        keep[[0, rows // 2, rows - 1]] = False
        m = sparse.csr_matrix(sparse.diags(keep.astype(np.float32)) @ m)
        m.eliminate_zeros()
    m.sort_indices()
    return m


def as_rows(m: sparse.csr_matrix) -> SparseRows:
    return SparseRows(m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data.astype(np.float32), m.shape[1])


def split(rows: SparseRows, cuts: list[int]) -> list[SparseRows]:
    """Uneven parts, each a view of `rows` (its indptr does not start at 0): what a writer may get."""
    edges = [0, *cuts, len(rows)]
    return [SparseRows(rows.indptr[a:b + 1], rows.indices, rows.values, rows.dim) for a, b in itertools.pairwise(edges)]


def write(path: Path, m: sparse.csr_matrix, cuts: list[int] | None = None) -> Path:
    parts = split(as_rows(m), cuts or [])
    with open(path, "wb") as fh:
        write_csr(fh, m.shape[0], m.shape[1], lambda: iter(parts))
    return path


def same(a: SparseRows, m: sparse.csr_matrix) -> None:
    assert a.indptr.dtype == np.int64 and a.indices.dtype == np.int32 and a.values.dtype == np.float32
    assert a.indptr[0] == 0 and a.shape == m.shape
    assert np.array_equal(a.indptr, m.indptr) and np.array_equal(a.indices, m.indices)
    assert np.array_equal(a.values, m.data.astype(np.float32))


# ---- SciPy reads hfenc's files -----------------------------------------------------------------

@pytest.mark.parametrize("rows,cuts", [(200, [1, 2, 77, 150]), (57, [57]), (1, []), (0, []), (300, [0, 0, 299])])
def test_scipy_loads_what_hfenc_writes(tmp_path: Path, rows: int, cuts: list[int]) -> None:
    m = random_csr(rows, seed=rows)
    path = write(tmp_path / "m.npz", m, cuts)
    back = sparse.load_npz(path)
    assert back.format == "csr" and back.shape == m.shape
    assert back.indices.dtype == np.int32 and back.indptr.dtype == np.int32 and back.data.dtype == np.float32
    assert np.array_equal(back.indptr, m.indptr) and np.array_equal(back.indices, m.indices)
    assert np.array_equal(back.data, m.data)
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["indices.npy", "indptr.npy", "format.npy", "shape.npy", "data.npy"]
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        assert zf.testzip() is None
    f = CsrNpz(path)
    assert all(a.offset % 64 == 0 for a in (f.indptr, f.indices, f.values) if isinstance(a, np.memmap))
    with np.load(path) as arrays:
        assert arrays["format"].dtype == np.dtype("S3") and arrays["format"].shape == ()


def test_members_match_scipys_bytes(tmp_path: Path) -> None:
    m = random_csr(120, seed=3)
    ours = write(tmp_path / "ours.npz", m, [40, 41, 100])
    sparse.save_npz(tmp_path / "scipy.npz", m, compressed=False)
    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(tmp_path / "scipy.npz") as b:
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            assert a.read(name) == b.read(name), name


def test_writer_refuses_rows_that_disagree(tmp_path: Path) -> None:
    rows = as_rows(random_csr(30))
    with open(tmp_path / "x.npz", "wb") as fh:
        with pytest.raises(ValueError, match="31"):
            write_csr(fh, 31, rows.dim, lambda: iter([rows]))
        with pytest.raises(ValueError, match="width"):
            write_csr(fh, 30, rows.dim + 1, lambda: iter([rows]))
    calls = iter([[rows], [rows], [rows], split(rows, [10])[:1]])  # the data pass comes up short
    with open(tmp_path / "y.npz", "wb") as fh, pytest.raises(ValueError, match="changed between passes"):
        write_csr(fh, 30, rows.dim, lambda: iter(next(calls)))


# ---- hfenc reads SciPy's files and its own -------------------------------------------------------

def test_reads_scipy_and_own_files_alike(tmp_path: Path) -> None:
    m = random_csr(400, seed=7)
    sparse.save_npz(tmp_path / "scipy.npz", m, compressed=False)
    write(tmp_path / "ours.npz", m, [3, 250])
    for path in (tmp_path / "scipy.npz", tmp_path / "ours.npz"):
        f = CsrNpz(path)
        assert (f.rows, f.dim, f.nnz, len(f)) == (400, 1000, m.nnz, 400)
        assert all(isinstance(a, np.memmap) for a in (f.indptr, f.indices, f.values))
        assert np.array_equal(f.indptr, m.indptr) and np.array_equal(f.indices, m.indices)
        assert np.array_equal(f.values, m.data)
        same(SparseRows.concat([rows for _, rows in f.blocks(97)]), m)


def test_reads_scipy_float64_and_int64(tmp_path: Path) -> None:
    m = sparse.csr_matrix(random_csr(50, seed=2), dtype=np.float64)
    m.indices, m.indptr = m.indices.astype(np.int64), m.indptr.astype(np.int64)
    np.savez(tmp_path / "wide.npz", indices=m.indices, indptr=m.indptr, format=b"csr", shape=m.shape, data=m.data)
    f = CsrNpz(tmp_path / "wide.npz")
    same(next(f.blocks())[1], m)
    same(f.rows_at(np.arange(50)), m)
    f = CsrNpz(write(tmp_path / "empty.npz", random_csr(0)))
    assert (f.rows, f.nnz, list(f.blocks())) == (0, 0, [])


def test_blocks_cover_rows_within_max_nnz(tmp_path: Path) -> None:
    m = random_csr(500, density=0.03, seed=5)
    m = sparse.vstack([m[:10], sparse.random(1, 1000, density=0.5, format="csr", dtype=np.float32,
                                            random_state=1), m[10:]]).tocsr()  # row 10 alone: 500 entries
    m.sort_indices()
    f = CsrNpz(write(tmp_path / "m.npz", m))
    for max_nnz in (1, 60, 499, 10**9):
        blocks = list(f.blocks(max_nnz))
        starts = [s for s, _ in blocks]
        assert starts[0] == 0 and all(s + len(r) == t for (s, r), t in zip(blocks, starts[1:]))
        assert sum(len(r) for _, r in blocks) == m.shape[0]
        for start, rows in blocks:
            assert rows.nnz <= max_nnz or len(rows) == 1
            if len(rows) and start + len(rows) < m.shape[0]:  # the next row would not have fitted
                assert rows.nnz + (m.indptr[start + len(rows) + 1] - m.indptr[start + len(rows)]) > max_nnz
            assert np.shares_memory(rows.values, f.values) or rows.nnz == 0  # a view, not a copy
            assert np.shares_memory(rows.indices, f.indices) or rows.nnz == 0
        same(SparseRows.concat([r for _, r in blocks]), m)
    assert len(list(f.blocks(10**9))) == 1
    with pytest.raises(ValueError):
        next(f.blocks(0))


def test_rows_at(tmp_path: Path) -> None:
    m = random_csr(300, seed=9)
    f = CsrNpz(write(tmp_path / "m.npz", m, [100]))
    order = np.array([299, 0, 150, 150, 7, 0])
    same(f.rows_at(order), m[order])
    same(f.rows_at(np.array([], np.int64)), m[[]])
    with pytest.raises(IndexError):
        f.rows_at(np.array([300]))


# ---- refusals: one InputError each -----------------------------------------------------------

def savez(path: Path, **members: object) -> Path:
    m = random_csr(20, dim=50, density=0.2, seed=4)
    arrays = {"indices": m.indices, "indptr": m.indptr, "format": b"csr", "shape": m.shape, "data": m.data}
    arrays.update(members)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def refused(path: Path, match: str) -> InputError:
    with pytest.raises(InputError, match=match) as err:
        f = CsrNpz(path)
        for _ in f.blocks(7):  # what only a pass over the rows can find
            pass
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    return err.value


def test_refusals(tmp_path: Path) -> None:
    m = random_csr(20, dim=50, density=0.2, seed=4)
    sparse.save_npz(tmp_path / "deflated.npz", m)
    assert "compressed=False" in refused(tmp_path / "deflated.npz", "compressed").hint
    sparse.save_npz(tmp_path / "csc.npz", m.tocsc(), compressed=False)
    refused(tmp_path / "csc.npz", "'csc', not 'csr'")
    whole = write(tmp_path / "whole.npz", m).read_bytes()
    for cut in (len(whole) // 2, len(whole) - 10, 0):
        (tmp_path / "cut.npz").write_bytes(whole[:cut])
        refused(tmp_path / "cut.npz", "truncated|zip")
    refused(tmp_path / "absent.npz", "No such file")
    (tmp_path / "text.npz").write_text("not a zip")
    refused(tmp_path / "text.npz", "zip")
    bad = m.indptr.copy()
    refused(savez(tmp_path / "end.npz", indptr=np.r_[bad[:-1], bad[-1] - 1]), "ends at")
    refused(savez(tmp_path / "start.npz", indptr=np.r_[1, bad[1:]]), "starts at 1")
    refused(savez(tmp_path / "short.npz", indptr=bad[:-1]), "offsets for 20 rows")
    swapped = bad.copy()
    swapped[5], swapped[6] = bad[6] + 1, bad[5]
    refused(savez(tmp_path / "down.npz", indptr=swapped), "decreases")
    refused(savez(tmp_path / "index.npz", indices=np.full(m.nnz, 50, np.int32)), r"outside \[0, 50\)")
    refused(savez(tmp_path / "missing.npz", data=None), "no data.npy")
    refused(savez(tmp_path / "shape.npz", shape=(20, 50, 1)), "shape")
    refused(savez(tmp_path / "intdata.npz", data=np.ones(m.nnz, np.int32)), "data.npy holds int32")
    refused(savez(tmp_path / "uindex.npz", indices=m.indices.astype(np.uint32)), "indices.npy holds uint32")


# ---- memory stays flat -------------------------------------------------------------------------

ROWS, PART = 2_000_000, 16384


def lazy_parts() -> Iterator[SparseRows]:
    """ROWS rows of 25..35 entries (30 on average), made part by part: only one part ever exists."""
    for start in range(0, ROWS, PART):
        rows = np.arange(start, min(start + PART, ROWS))
        yield _rows(rows)


def _rows(rows: np.ndarray) -> SparseRows:
    counts = 25 + rows % 11
    indptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    within = np.arange(indptr[-1]) - np.repeat(indptr[:-1], counts)
    row_of = np.repeat(rows, counts)
    indices = (within * 800 + row_of % 97).astype(np.int32)  # sorted within a row, < DIM
    return SparseRows(indptr, indices, (within + row_of % 13).astype(np.float32), DIM)


def test_memory_stays_flat(tmp_path: Path) -> None:
    path = tmp_path / "big.npz"
    tracemalloc.start()
    try:
        with open(path, "wb") as fh:
            write_csr(fh, ROWS, DIM, lazy_parts)
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        f = CsrNpz(path)
        entries = sum(rows.nnz for _, rows in f.blocks())
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = path.stat().st_size
    print(f"\n{ROWS} rows, {f.nnz} entries, file {size / 2**20:.0f} MiB: peak traced "
          f"{write_peak / 2**20:.1f} MiB writing, {read_peak / 2**20:.1f} MiB reading blocks()")
    assert f.nnz == entries == 25 * ROWS + 55 * (ROWS // 11) + sum(range(ROWS % 11))
    assert (f.rows, f.dim, f.indptr.dtype) == (ROWS, DIM, np.int32)
    assert write_peak < size / 10 and read_peak < size / 10
    probe = np.array([ROWS - 1, 0, 1_234_567, 16383, 16384])
    same(f.rows_at(probe), _rows(probe).to_scipy())
