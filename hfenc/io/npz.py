"""Sparse rows as SciPy's CSR .npz: written streamed, read memory-mapped. numpy and stdlib only.

Layout (what `scipy.sparse.save_npz(path, m, compressed=False)` writes for a csr_matrix, so that
`scipy.sparse.load_npz` reads hfenc's file and hfenc reads SciPy's): a ZIP archive of stored
(uncompressed) .npy members, in SciPy's order

  indices.npy  int32, nnz        row i's active vocabulary indices are indices[indptr[i]:indptr[i+1]]
  indptr.npy   int32, rows + 1   from 0; int64 once nnz (or rows) passes 2**31 - 1, as SciPy picks
  format.npy   b'csr'            a 0-d |S3 array
  shape.npy    int64, 2          (rows, dim)
  data.npy     float32, nnz      the values, aligned with indices

Every member is written with a ZIP64 local header, as numpy's savez does (gh-10776), so members
past 4 GiB need nothing special.

Writing (`write_csr`) keeps memory flat however many rows: a .npy header states its length up
front and a ZIP member is written in one go, so the rows are streamed once per member from
`parts()`, a fresh iterator over the rows each time: a first pass counts rows and entries, then
indices, indptr and data each take a pass. Trade-off: the source (for hfenc, the finished chunk
files) is read four times instead of being held in memory once.

Reading (`CsrNpz`) memory-maps the three arrays where they lie in the archive, which is why the
members must be stored, not deflated: opening costs a few header reads whatever the file's size,
and a block of rows touches only its own pages. Opening checks the layout (members, dtypes,
lengths, the ends of indptr); what needs a pass over the data (indptr never decreasing, indices
inside [0, dim)) is checked block by block as the rows are read. Anything wrong is one InputError.
SciPy's own files may hold int64 indices or float64 / float16 values: they are accepted as they lie,
and blocks() / rows_at() convert just their own slice to int32 / float32.
"""

from __future__ import annotations

import bisect
import os
import struct
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, BinaryIO

import numpy as np
from numpy.lib import format as npy

from hfenc.errors import InputError
from hfenc.model.sparse import SparseRows

MEMBERS = ("indices", "indptr", "format", "shape", "data")  # save_npz's order
_INT32_MAX = int(np.iinfo(np.int32).max)
_STORED_HINT = "save it with scipy.sparse.save_npz(path, m, compressed=False)"
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader: 30 bytes
_ALIGN = 64  # where a member's bytes start in hfenc's files (numpy's ARRAY_ALIGN)


# ---- writing --------------------------------------------------------------------------------

def write_csr(fh: BinaryIO | str | os.PathLike, rows: int, dim: int,
              parts: Callable[[], Iterable[SparseRows]]) -> None:
    """Write `rows` sparse rows of width `dim` as a CSR .npz (module docstring) to `fh`, a binary
    file open for writing (or a path). `parts()` returns a fresh iterator over the rows in order,
    as SparseRows chunks; it is called four times. Rows that disagree with `rows` / `dim`, or
    passes that disagree with each other, are a ValueError (the caller's defect)."""
    if dim < 0 or dim > _INT32_MAX + 1:
        raise ValueError(f"a sparse width of {dim} does not fit int32 indices")
    counted, nnz = 0, 0
    for part in parts():
        _check_part(part, dim)
        counted += len(part)
        nnz += part.nnz
    if counted != rows:
        raise ValueError(f"the sparse parts hold {counted} rows, not {rows}")
    # SciPy's get_index_dtype: int32 while every index and offset fits, else int64
    indptr_dtype = np.dtype(np.int32 if max(nnz, rows, dim) <= _INT32_MAX else np.int64)
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        _stream(zf, "indices", np.dtype(np.int32), nnz, (_entries(p, p.indices) for p in _checked(parts, dim)))
        _stream(zf, "indptr", indptr_dtype, rows + 1, _offsets(_checked(parts, dim)))
        _small(zf, "format", np.array(b"csr"))
        _small(zf, "shape", np.array((rows, dim), np.int64))
        _stream(zf, "data", np.dtype(np.float32), nnz, (_entries(p, p.values) for p in _checked(parts, dim)))


def _check_part(part: SparseRows, dim: int) -> None:
    if part.dim != dim:
        raise ValueError(f"a sparse part of width {part.dim} in an output of width {dim}")


def _checked(parts: Callable[[], Iterable[SparseRows]], dim: int) -> Iterator[SparseRows]:
    for part in parts():
        _check_part(part, dim)
        yield part


def _entries(part: SparseRows, array: np.ndarray) -> np.ndarray:
    return array[int(part.indptr[0]):int(part.indptr[-1])]  # a part's indptr need not start at 0


def _offsets(parts: Iterator[SparseRows]) -> Iterator[np.ndarray]:
    yield np.zeros(1, np.int64)
    end = 0
    for part in parts:
        yield part.indptr[1:] - (int(part.indptr[0]) - end)
        end += part.nnz


def _stream(zf: zipfile.ZipFile, name: str, dtype: np.dtype, length: int, chunks: Iterable[np.ndarray]) -> None:
    """One 1-D .npy member of `length` items, written chunk by chunk."""
    written = 0
    with _member(zf, name) as out:
        # the header np.save writes: version 1.0 always fits a 1-D shape
        npy.write_array_header_1_0(out, {"descr": npy.dtype_to_descr(dtype), "fortran_order": False,
                                         "shape": (length,)})
        for chunk in chunks:
            if written + len(chunk) > length:
                raise ValueError(f"the sparse parts changed between passes: {name} passes {length} items")
            out.write(np.ascontiguousarray(chunk, dtype).data)
            written += len(chunk)
    if written != length:
        raise ValueError(f"the sparse parts changed between passes: {name} has {written} of {length} items")


def _small(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with _member(zf, name) as out:
        npy.write_array(out, array, allow_pickle=False)


def _member(zf: zipfile.ZipFile, name: str) -> IO[bytes]:
    """A stored member, opened as numpy's savez opens it (ZIP64 forced), whose bytes start at a
    multiple of 64 in the file: an alignment extra field (zipalign's 0xD935: an alignment, then
    zeros) pads the local header. The .npy header is a multiple of 64 bytes too, so the maps the
    reader makes are aligned (an unaligned array is copied by some numpy operations, searchsorted
    among them). Readers skip extra fields they do not know; if zipfile ever lays the local header
    out otherwise, the member is merely unaligned."""
    info = zipfile.ZipInfo(name + ".npy", date_time=time.localtime(time.time())[:6])
    info.compress_type = zipfile.ZIP_STORED
    header = _LOCAL_HEADER.size + len(info.filename.encode("utf-8")) + 20  # + the ZIP64 extra field
    pad = -(zf.fp.tell() + header + 6) % _ALIGN
    info.extra = struct.pack("<HHH", 0xD935, 2 + pad, _ALIGN) + bytes(pad)
    return zf.open(info, "w", force_zip64=True)


# ---- reading --------------------------------------------------------------------------------

class CsrNpz:
    """A CSR .npz (module docstring), memory-mapped: `indptr`, `indices` and `values` are read-only
    np.memmap arrays in their stored dtypes. Every problem with the file is one InputError."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as fh:
                arrays = _stored_arrays(self.path, fh)
                for name in MEMBERS:
                    if name not in arrays:
                        raise self._error(f"it has no {name}.npy (members: {', '.join(sorted(arrays)) or 'none'})")
                self._format(arrays["format"])  # read while the file is open: they are small
                self.rows, self.dim = self._shape(arrays["shape"])
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise self._error(_reason(exc)) from None
        self.indptr = self._array(arrays, "indptr", "i")
        self.indices = self._array(arrays, "indices", "i")
        self.values = self._array(arrays, "data", "f")
        self.nnz = len(self.indices)
        self._lengths()

    def __len__(self) -> int:
        return self.rows

    def blocks(self, max_nnz: int = 4 << 20) -> Iterator[tuple[int, SparseRows]]:
        """(first row, rows) covering every row in order, each block at most `max_nnz` entries
        unless one row alone holds more (then that row is a block of its own). A block's indices
        and values are views of the map when stored as int32 / float32; it copies only its indptr."""
        if max_nnz < 1:
            raise ValueError(f"max_nnz must be at least 1, not {max_nnz}")
        start = 0
        while start < self.rows:
            # bisect reads ~log2(rows) offsets; np.searchsorted copies an unaligned map (SciPy's files)
            end = bisect.bisect_right(self.indptr, int(self.indptr[start]) + max_nnz, start, self.rows + 1) - 1
            end = min(max(end, start + 1), self.rows)
            yield start, self._slice(start, end)
            start = end

    def rows_at(self, rows: np.ndarray) -> SparseRows:
        """Those rows, in the order given (repeats allowed)."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.rows):
            bad = int(rows[(rows < 0) | (rows >= self.rows)][0])
            raise IndexError(f"row {bad} is outside {self.path}'s {self.rows} rows")
        starts = self.indptr[rows].astype(np.int64)
        ends = self.indptr[rows + 1].astype(np.int64)
        counts = ends - starts
        if len(rows) and (counts.min() < 0 or starts.min() < 0 or ends.max() > self.nnz):
            raise self._error(f"indptr is not a non-decreasing run of offsets into the {self.nnz} entries")
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        source = np.repeat(starts - indptr[:-1], counts) + np.arange(int(indptr[-1]))
        return self._rows(indptr, self.indices[source], self.values[source], "the rows asked for")

    # -- layout checks --

    def _error(self, problem: str, hint: str | None = None) -> InputError:
        return InputError(f"cannot read {self.path} as a sparse CSR .npz: {problem}", hint=hint)

    def _format(self, info: _Member) -> None:
        value = info.read() if info.dtype.kind in "SU" and info.shape == () else None
        text = value.item() if value is not None else None
        text = text.decode("ascii", "replace") if isinstance(text, bytes) else text
        if text != "csr":
            shown = repr(text) if text is not None else f"a {info.dtype} array of shape {info.shape}"
            raise self._error(f"its format is {shown}, not 'csr'", hint="convert it with m.tocsr() before saving")

    def _shape(self, info: _Member) -> tuple[int, int]:
        value = info.read() if info.dtype.kind in "iu" and info.shape == (2,) else None
        if value is None or value.min() < 0:
            shown = value.tolist() if value is not None else f"a {info.dtype} array of shape {info.shape}"
            raise self._error(f"its shape is {shown}, not two non-negative integers")
        rows, dim = (int(v) for v in value)
        if dim > _INT32_MAX + 1:
            raise self._error(f"its {dim} columns do not fit int32 indices")
        return rows, dim

    def _array(self, arrays: dict[str, _Member], name: str, kind: str) -> np.ndarray:
        info = arrays[name]
        ok = info.dtype.kind == kind and info.dtype.itemsize in ((4, 8) if kind == "i" else (2, 4, 8))
        if not ok or len(info.shape) != 1:
            wanted = "int32 or int64" if kind == "i" else "float32 (or float16 / float64)"
            raise self._error(f"{name}.npy holds {info.dtype} of shape {info.shape}, not a 1-D {wanted} array")
        return info.map(self.path)

    def _lengths(self) -> None:
        if len(self.indptr) != self.rows + 1:
            raise self._error(f"indptr has {len(self.indptr)} offsets for {self.rows} rows (needs {self.rows + 1})")
        first, last = int(self.indptr[0]), int(self.indptr[-1])
        if first != 0:
            raise self._error(f"indptr starts at {first}, not 0")
        if not last == len(self.indices) == len(self.values):
            raise self._error(f"indptr ends at {last} but there are {len(self.indices)} indices and "
                              f"{len(self.values)} values")

    # -- rows --

    def _slice(self, start: int, end: int) -> SparseRows:
        offsets = self.indptr[start:end + 1].astype(np.int64)
        a, b = int(offsets[0]), int(offsets[-1])
        if b < a or (len(offsets) > 2 and np.any(offsets[1:] < offsets[:-1])):
            raise self._error(f"indptr decreases within rows {start}..{end - 1}")
        return self._rows(offsets - a, self.indices[a:b], self.values[a:b], f"rows {start}..{end - 1}")

    def _rows(self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, where: str) -> SparseRows:
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= self.dim):
            raise self._error(f"{where} hold an index outside [0, {self.dim})")
        # a plain view of the map; a copy of just these entries where the stored dtype differs or
        # the member is unaligned (SciPy's files: an array's bytes start wherever its ZIP header ends)
        return SparseRows(indptr, np.require(np.asarray(indices), np.int32, "A"),
                          np.require(np.asarray(values), np.float32, "A"), self.dim)


class _Member:
    """A stored .npy member: its dtype, shape and where its items start in the archive."""

    def __init__(self, fh: BinaryIO, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> None:
        self.fh, self.dtype, self.shape, self.offset = fh, dtype, shape, offset

    def read(self) -> np.ndarray:  # a small member, read while the file is open
        self.fh.seek(self.offset)
        count = int(np.prod(self.shape))
        return np.frombuffer(self.fh.read(count * self.dtype.itemsize), self.dtype, count).reshape(self.shape)

    def map(self, path: str) -> np.ndarray:
        if self.shape[0] == 0:  # mmap refuses empty ranges
            return np.empty(0, self.dtype)
        return np.memmap(path, self.dtype, "r", offset=self.offset, shape=self.shape)


def _stored_arrays(path: str, fh: BinaryIO) -> dict[str, _Member]:
    """The archive's .npy members by name (without .npy), each checked stored and whole."""
    size = os.fstat(fh.fileno()).st_size
    arrays = {}
    with zipfile.ZipFile(fh) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            if info.compress_type != zipfile.ZIP_STORED:
                raise InputError(f"cannot read {path} as a sparse CSR .npz: {info.filename} is compressed, "
                                 "and only a stored member can be memory-mapped", hint=_STORED_HINT)
            if info.flag_bits & 0x1:
                raise InputError(f"cannot read {path} as a sparse CSR .npz: {info.filename} is encrypted")
            start = _data_offset(fh, info)
            if start + info.file_size > size:
                raise EOFError(f"{info.filename} runs past the end of the file (truncated?)")
            arrays[name] = _npy_member(fh, info, start)
    return arrays


def _data_offset(fh: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where a member's bytes start: after its local header, whose name and extra field lengths
    may differ from the central directory's."""
    fh.seek(info.header_offset)
    raw = fh.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        raise EOFError(f"{info.filename}'s local header is cut short (truncated?)")
    fields = _LOCAL_HEADER.unpack(raw)
    if fields[0] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"{info.filename}'s local header is damaged")
    return info.header_offset + _LOCAL_HEADER.size + fields[10] + fields[11]


def _npy_member(fh: BinaryIO, info: zipfile.ZipInfo, start: int) -> _Member:
    fh.seek(start)
    try:
        version = npy.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(fh)
        else:
            raise ValueError(f"npy format version {version} is not supported")
    except ValueError as exc:
        raise zipfile.BadZipFile(f"{info.filename} is not a readable .npy: {_reason(exc)}") from None
    if dtype.hasobject or (fortran and len(shape) > 1):
        raise zipfile.BadZipFile(f"{info.filename} holds {'objects' if dtype.hasobject else 'a Fortran-order array'}")
    offset = fh.tell()
    if offset - start + int(np.prod(shape)) * dtype.itemsize > info.file_size:
        raise EOFError(f"{info.filename} holds fewer bytes than its shape {shape} needs")
    return _Member(fh, dtype, shape, offset)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:  # without the path, which the message names already
        return exc.strerror
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[0].lower() + text[1:]
