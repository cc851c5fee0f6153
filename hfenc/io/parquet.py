"""Parquet and Arrow IPC (Feather v2): tables in, a Parquet table out. The only module that
imports pyarrow (the optional extra `parquet`: pip install 'hfenc[parquet]').

Input: one string column of a .parquet / .arrow / .feather file is the text (`--column`, default
"text", else the only column), another may be the id (`--id-column`). Parquet is read row group by
row group and Arrow IPC record batch by record batch, so memory stays flat however big the file.
A missing column, a column that is not a string, a null, invalid UTF-8 or a file pyarrow cannot
read is one InputError. A table has no lines: messages, and OUT.lines.npy with --skip-blank, name
records, counted from 1. Like the text readers, a pass hashes the raw bytes (here: the whole file,
read once through the same open handle that pyarrow then reads from, and checked unchanged by
size and mtime at the end), so --resume and the scan/embed passes see the same file.

Output schema (fixed: the Ray runner writes the same; readers rely on it):

  row        int64                      global row index (row i is record i of the input)
  id         string                     only with --id-column / --id-field
  text       string                     only with --keep-text

A chunked output (--chunk-tokens, issue 23) has a row per chunk, `doc_id` for `id`, and after it
the chunk's provenance, int64 each: doc_row (its record), chunk (its index in the record),
char_start, char_end (`text[char_start:char_end]` of the record is the chunk), token_start,
token_end (of the record's own tokens); `text` is then the chunk's text.
  tokens       int64                    the row's tokens as the model got them (prompt, special tokens)
  truncated    bool                     the text was cut at --max-length
  text_sha256  string                   SHA-256 of the row's text, 64 hex digits (hfenc.io.hashes)
  embedding  fixed_size_list<T>[w]      T = float32 | float16 (--out-dtype), w = d;
                                        --quantize int8|uint8:     T = int8 | uint8,  w = d;
                                        --quantize binary|ubinary: T = int8 | uint8,  w = ceil(d/8)

and the file's key-value metadata key `hfenc` holds the sidecar JSON (all of it but its "files"
map and its seal, which describe this very file), so the file stands alone. One row group per chunk
(`--chunk-size`). pyarrow, numpy and `datasets.Dataset.from_parquet` read it without glue code:
`pq.read_table(p).column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, w)`.

Writing keeps the guarantees of the .npy writer (hfenc.io.outputs): a Parquet file cannot be
appended to after a crash, so each finished chunk is one Arrow IPC file in the hidden directory
`.OUT.partial/` (fsynced, then claimed by the resume state); at the end the chunks are streamed,
one row group at a time, into the staged `.OUT.staged`, which the journaled publication of
hfenc.io.outputs renames into place with the sidecar. Trade-off: every row is written twice (the
chunk files cost little: IPC is the in-memory layout), in exchange for --resume after SIGKILL.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from hfenc.errors import ConfigError, HfencError, InputError
from hfenc.io.hashes import raw_rows, to_hex
from hfenc.io.records import InputSpec, Record, Tally, changed, id_text, one_line, open_raw
from hfenc.io.chunkfiles import ChunkFiles
from hfenc.io.outputs import OutputPaths
from hfenc.model.sparse import SparseBlock, SparseRows

METADATA_KEY = "hfenc"
TABLE_FORMATS = ("parquet", "arrow")
_BATCH_ROWS = 8192  # records decoded at a time when reading an input table


@lru_cache(maxsize=1)
def _arrow_modules() -> SimpleNamespace:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    return SimpleNamespace(pa=pa, pc=pc, ipc=ipc, pq=pq)


def arrow() -> SimpleNamespace:
    """pyarrow's modules, or one ConfigError naming the extra that installs them."""
    try:
        return _arrow_modules()
    except ImportError:
        raise ConfigError("Parquet and Arrow files need pyarrow, which is not installed",
                          hint="pip install 'hfenc[parquet]'") from None


# ---- input ----------------------------------------------------------------------------------

def _is_text(t: Any) -> bool:
    pa = arrow().pa
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", bool)(t)


def _batches(path: str, fmt: str, handle: Any, columns: list[str]) -> tuple[list[str], Any, Iterator[Any]]:
    """(column names, schema, record batches of `columns`) of an open table file."""
    a = arrow()
    if fmt == "parquet":
        pf = a.pq.ParquetFile(handle)
        schema = pf.schema_arrow
        names = schema.names

        def parquet_batches() -> Iterator[Any]:
            for group in range(pf.metadata.num_row_groups):  # one row group in memory at a time
                yield from pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=[group], columns=columns)

        return names, schema, parquet_batches()
    try:
        reader = a.ipc.open_file(handle)
        batches: Iterator[Any] = (reader.get_batch(i) for i in range(reader.num_record_batches))
    except a.pa.ArrowInvalid:  # not the IPC file format: perhaps the stream format
        handle.seek(0)
        reader = a.ipc.open_stream(handle)
        batches = iter(reader)
    schema = reader.schema
    wanted = [schema.get_field_index(c) for c in columns]
    return schema.names, schema, (batch.select(wanted) if hasattr(batch, "select") else batch for batch in batches)


def _strings(array: Any, first: int, what: str, errors: str) -> list[str]:
    """A string array as Python strings; invalid UTF-8 is refused (naming the record) or replaced."""
    try:
        return array.to_pylist()
    except UnicodeDecodeError:
        pass
    a = arrow()
    if a.pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    values = []
    for i, raw in enumerate(array.cast(a.pa.large_binary()).to_pylist()):
        try:
            values.append(raw.decode("utf-8", errors))
        except UnicodeDecodeError as exc:
            raise InputError(f"record {first + i}: {what} holds invalid UTF-8 at byte {exc.start} of the value",
                             hint="fix the file's encoding, or pass --encoding-errors replace") from None
    return values


def _nulls(array: Any, first: int, what: str) -> None:
    if arrow().pa.types.is_dictionary(array.type):  # a null in the dictionary is not in null_count
        array = array.dictionary_decode()
    if array.null_count:
        at = arrow().pc.index(array.is_null(), True).as_py()
        raise InputError(f"record {first + at}: {what} is null",
                         hint="fill or drop the nulls, or choose another column with --column")


def table_records(spec: InputSpec, tally: Tally | None = None, again: bool = False) -> Iterator[Record]:
    """Every record of a Parquet / Arrow IPC file (`spec.resolved_format()` in TABLE_FORMATS)."""
    fmt, path = spec.resolved_format(), spec.path
    if path.endswith(".gz"):
        raise InputError(f"{path}: a gzipped {fmt} file cannot be read", hint=f"decompress it: {fmt} compresses its own data")
    a = arrow()
    raw = open_raw(path, again)
    with io.BufferedReader(raw, 1 << 20) as fh:
        before = os.fstat(fh.fileno())
        digest, size = _hash(fh)
        fh.seek(0)
        kind = "a Parquet" if fmt == "parquet" else "an Arrow IPC (Feather)"
        try:
            names, schema, _ = _batches(path, fmt, fh, [])
            column = spec.column or ("text" if "text" in names or len(names) != 1 else names[0])
            for key in (column, spec.id_field):
                if key is not None and key not in names:
                    shown = ", ".join(n if n.isprintable() else repr(n) for n in names)
                    raise InputError(f"no column {key!r}; the file has: {shown}", hint="choose the column with --column")
                if key is not None and names.count(key) > 1:
                    raise InputError(f"column {key!r} appears {names.count(key)} times in {path}")
            kind_of = schema.field(column).type
            if not _is_text(kind_of):
                raise InputError(f"column {column!r} holds {kind_of}, not strings",
                                 hint="choose the text column with --column")
            columns = [column] + ([spec.id_field] if spec.id_field is not None and spec.id_field != column else [])
            fh.seek(0)
            _, _, batches = _batches(path, fmt, fh, columns)
            n = 0
            for batch in batches:
                first = n + 1
                texts = batch.column(0)
                _nulls(texts, first, f"column {column!r}")
                values = _strings(texts, first, f"column {column!r}", spec.encoding_errors)
                ids: list[Any] = [None] * len(values)
                if spec.id_field is not None:
                    id_array = batch.column(columns.index(spec.id_field))
                    _nulls(id_array, first, f"id column {spec.id_field!r}")
                    ids = id_array.to_pylist() if not _is_text(id_array.type) else \
                        _strings(id_array, first, f"id column {spec.id_field!r}", spec.encoding_errors)
                for i, text in enumerate(values):
                    record_id = None if ids[i] is None else id_text(ids[i], f"record {first + i}")
                    yield Record(first + i, text, record_id)
                n += len(values)
        except HfencError:  # ours (InputError is a ValueError too): as it is
            raise
        except (a.pa.ArrowException, OSError, ValueError, TypeError) as exc:
            raise InputError(f"cannot read {path} as {kind} file: {one_line(exc)}") from None
        after = os.fstat(fh.fileno())
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise changed(path, "was written to while it was read")
    if tally is not None:
        tally.sha256, tally.bytes = digest, size


def _hash(fh: Any) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while block := fh.read(1 << 22):
        digest.update(block)
        size += len(block)
    return "sha256:" + digest.hexdigest(), size


# ---- output ---------------------------------------------------------------------------------

PROVENANCE = ("doc_row", "chunk", "char_start", "char_end", "token_start", "token_end")  # chunking's PLAN_FIELDS


def schema(width: int, dtype: np.dtype, with_id: bool, with_text: bool, metadata: dict | None = None,
           provenance: bool = False, sparse: bool = False) -> Any:
    """The output schema (see the module docstring)."""
    pa = arrow().pa
    fields = [pa.field("row", pa.int64(), nullable=False)]
    if with_id:
        fields.append(pa.field("doc_id" if provenance else "id", pa.string()))
    if provenance:
        fields.extend(pa.field(name, pa.int64(), nullable=False) for name in PROVENANCE)
    if with_text:
        fields.append(pa.field("text", pa.string()))
    fields.extend(ROW_INFO(pa))
    kind = sparse_type(pa) if sparse else pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), width)
    fields.append(pa.field("embedding", kind, nullable=False))
    meta = None if metadata is None else {METADATA_KEY: json.dumps(metadata, indent=None)}
    return pa.schema(fields, metadata=meta)


def ROW_INFO(pa: Any) -> list[Any]:  # noqa: N802 (a constant, made once pyarrow is loaded)
    """Each row's provenance columns (issue 24), between the texts and the embedding."""
    return [pa.field("tokens", pa.int64(), nullable=False), pa.field("truncated", pa.bool_(), nullable=False),
            pa.field("text_sha256", pa.string(), nullable=False)]


def hash_array(hashes: np.ndarray) -> Any:
    """(n, 32) uint8 hashes as a string column of 64 hex digits each, built from buffers."""
    pa = arrow().pa
    n = len(hashes)
    offsets = np.arange(0, 64 * (n + 1), 64, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(to_hex(hashes))))


def sparse_type(pa: Any) -> Any:
    """A sparse row: its active vocabulary entries, sorted by index (issue 25)."""
    return pa.list_(pa.struct([pa.field("index", pa.int32(), nullable=False),
                               pa.field("value", pa.float32(), nullable=False)]))


def sparse_array(rows: SparseRows) -> Any:
    """SparseRows as list<struct<index: int32, value: float32>>, built from its buffers."""
    pa = arrow().pa
    base = int(rows.indptr[0])
    entries = pa.StructArray.from_arrays(
        [pa.array(rows.indices[base:rows.indptr[-1]], pa.int32()), pa.array(rows.values[base:rows.indptr[-1]], pa.float32())],
        fields=list(sparse_type(pa).value_type))
    return pa.ListArray.from_arrays(pa.array((rows.indptr - base).astype(np.int32)), entries, type=sparse_type(pa))


def sparse_rows(column: Any, dim: int) -> SparseRows:
    """A list<struct<index, value>> column (chunked or not) as SparseRows."""
    array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    offsets = array.offsets.to_numpy().astype(np.int64)
    entries = array.values
    indices = entries.field("index").to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    values = entries.field("value").to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return SparseRows(offsets - offsets[0], indices[offsets[0]:offsets[-1]], values[offsets[0]:offsets[-1]], dim)


def embedding_array(rows: np.ndarray) -> Any:
    """An (n, w) array as fixed_size_list<T>[w] (zero-copy for a C-contiguous array)."""
    pa = arrow().pa
    rows = np.ascontiguousarray(rows)
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])


class ParquetWriter(ChunkFiles):
    """A Parquet output (hfenc.io.chunkfiles: a chunk is an Arrow IPC file, merged at the end).
    `ids`: the scan's ids file (one per row), read at the end; `keep_text`: texts arrive through
    tap(); `provenance`: a chunked job's plan (a structured array with PROVENANCE's fields, a record
    per row), read at the end; `hashes`: the rows' text hashes (a raw file, hfenc.io.hashes), read
    at the end; each chunk's token counts and truncation arrive through counts(). `sparse`: the
    rows are SparseRows of `width` vocabulary entries (issue 25), stored as list<struct<index, value>>."""

    suffix = ".arrow"

    def __init__(self, paths: OutputPaths, rows: int, width: int, dtype: np.dtype, fingerprint: dict,
                 resume: bool, ids: Path | None = None, keep_text: bool = False,
                 provenance: Any = None, hashes: Path | None = None, sparse: bool = False) -> None:
        assert hashes is not None, "a Parquet output has a text_sha256 column"
        arrow()  # a missing pyarrow fails before anything is written
        self.rows_total, self.width, self.dtype, self.sparse = rows, width, np.dtype(dtype), sparse
        self.ids, self.keep_text, self.provenance, self.hashes = ids, keep_text, provenance, hashes
        self._counts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._texts: dict[int, list[str]] = {}
        pa = arrow().pa
        self._chunk_schema = pa.schema([f for f in schema(width, self.dtype, False, keep_text, sparse=sparse)
                                        if f.name != "text_sha256"])
        super().__init__(paths, fingerprint, resume)

    def tap(self, chunks: Iterator[tuple[int, list[str]]]) -> Iterator[tuple[int, list[str]]]:
        """Pass (start, texts) chunks through, keeping the texts for --keep-text (late chunking's
        work, hfenc.jobs.chunked.LateDocs, says its chunks' texts)."""
        for start, texts in chunks:
            if self.keep_text:
                self._texts[start] = texts if isinstance(texts, list) else texts.chunk_texts()
            yield start, texts

    def rows(self, start: int, n: int) -> Any:
        block = SparseBlock(n, self.width) if self.sparse else np.zeros((n, self.width), dtype=self.dtype)
        self._pending = (start, block)
        return block

    def counts(self, start: int, tokens: np.ndarray, truncated: np.ndarray) -> None:
        """The token count and truncation of the rows of the chunk at `start`."""
        self._counts[start] = (tokens, truncated)

    def _write_chunk(self, start: int, block: Any) -> None:
        a = arrow()
        n = len(block)
        columns = [a.pa.array(np.arange(start, start + n, dtype=np.int64))]
        if self.keep_text:
            columns.append(a.pa.array(self._texts.pop(start), type=a.pa.string()))
        tokens, truncated = self._counts.pop(start)
        columns += [a.pa.array(np.asarray(tokens, np.int64)), a.pa.array(np.asarray(truncated, bool))]
        columns.append(sparse_array(block.rows()) if self.sparse else embedding_array(block))
        table = a.pa.Table.from_arrays(columns, schema=self._chunk_schema)

        def write(fh: Any) -> None:
            with a.ipc.new_file(fh, self._chunk_schema) as writer:
                writer.write_table(table)

        self._commit(start, n, write)

    def _merge(self, sidecar: dict, fh: Any) -> None:
        """Stream the chunk files, in row order, into one Parquet file: a row group per chunk."""
        a = arrow()
        meta = {k: v for k, v in sidecar.items() if k != "files"}
        chunked = self.provenance is not None
        out_schema = schema(self.width, self.dtype, self.ids is not None, self.keep_text, meta, chunked, self.sparse)
        ids = open(self.ids, encoding="utf-8") if self.ids is not None else None
        try:
            writer = a.pq.ParquetWriter(
                fh, out_schema, compression={"row": "snappy", "id": "snappy", "doc_id": "snappy",
                                             **{name: "snappy" for name in PROVENANCE if chunked},
                                             "text": "zstd", "tokens": "snappy", "truncated": "snappy",
                                             "text_sha256": "snappy",
                                             **({"embedding.list.element.index": "snappy",
                                                 "embedding.list.element.value": "none"} if self.sparse
                                                else {"embedding": "none"})},
                use_dictionary=False, write_statistics=["row", *(["doc_row"] if chunked else [])])
            try:
                for start, n, path in self._in_order():
                    with a.pa.memory_map(str(path)) as source:
                        table = a.ipc.open_file(source).read_all()
                    columns = [table.column("row")]
                    if ids is not None:
                        columns.append(a.pa.array([ids.readline().rstrip("\n") for _ in range(n)], type=a.pa.string()))
                    if chunked:
                        records = np.array(self.provenance[start:start + n])
                        columns.extend(a.pa.array(records[name]) for name in PROVENANCE)
                    if self.keep_text:
                        columns.append(table.column("text"))
                    columns += [table.column("tokens"), table.column("truncated")]
                    columns.append(hash_array(raw_rows(self.hashes, start, n)))
                    columns.append(table.column("embedding"))
                    writer.write_table(a.pa.Table.from_arrays(columns, schema=out_schema), row_group_size=max(n, 1))
            finally:
                writer.close()
        finally:
            if ids is not None:
                ids.close()


def write_vectors(array: Path, out: Path, ids: Path | None, counts: Iterator[np.ndarray]) -> None:
    """--doc-vectors of a Parquet output: the documents' float32 vectors (a .npy) as a table of
    doc_row, doc_id (an input with ids), chunks (how many the vector is the mean of), embedding."""
    a = arrow()
    vectors = np.load(array, mmap_mode="r")
    fields = [a.pa.field("doc_row", a.pa.int64(), nullable=False),
              *([a.pa.field("doc_id", a.pa.string())] if ids is not None else []),
              a.pa.field("chunks", a.pa.int64(), nullable=False),
              a.pa.field("embedding", a.pa.list_(a.pa.float32(), vectors.shape[1]), nullable=False)]
    out_schema = a.pa.schema(fields)
    id_lines = open(ids, encoding="utf-8") if ids is not None else None
    try:
        with open(out, "wb") as fh:
            with a.pq.ParquetWriter(fh, out_schema, compression="snappy", use_dictionary=False) as writer:
                at = 0
                for block in counts:
                    n = len(block)
                    columns = [a.pa.array(np.arange(at, at + n, dtype=np.int64))]
                    if id_lines is not None:
                        columns.append(a.pa.array([id_lines.readline().rstrip("\n") for _ in range(n)], a.pa.string()))
                    columns += [a.pa.array(block.astype(np.int64)), embedding_array(np.asarray(vectors[at:at + n]))]
                    writer.write_table(a.pa.Table.from_arrays(columns, schema=out_schema))
                    at += n
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        if id_lines is not None:
            id_lines.close()


# ---- reading an index -----------------------------------------------------------------------

def read_metadata(path: str | Path) -> dict | None:
    """The sidecar stored in a Parquet file's key-value metadata, or None."""
    a = arrow()
    try:
        meta = a.pq.read_schema(str(path)).metadata or {}
    except (a.pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read {path} as a Parquet file: {one_line(exc)}") from None
    raw = meta.get(METADATA_KEY.encode())
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class ParquetIndex:
    """An embeddings table read row group by row group (flat memory whatever its size)."""

    def __init__(self, path: str | Path) -> None:
        a = arrow()
        self.path = Path(path)
        try:
            self._file = a.pq.ParquetFile(str(path))
        except (a.pa.ArrowException, OSError) as exc:
            raise InputError(f"cannot read {path} as a Parquet file: {one_line(exc)}") from None
        s = self._file.schema_arrow
        if "embedding" not in s.names or "row" not in s.names:
            raise InputError(f"{path} has no 'row' and 'embedding' columns: not an hfenc embeddings table")
        t = s.field("embedding").type
        if not a.pa.types.is_fixed_size_list(t):
            raise InputError(f"{path}: column 'embedding' is {t}, not a fixed-size list")
        self.width = t.list_size
        self.dtype = np.dtype(t.value_type.to_pandas_dtype())
        self.rows = self._file.metadata.num_rows
        self.columns = s.names

    def blocks(self, with_docs: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """(row indices, (n, width) embeddings, each row's doc_row or None) per row group."""
        for group in range(self._file.metadata.num_row_groups):
            table = self._file.read_row_group(group, columns=["row", "embedding", *(["doc_row"] if with_docs else [])])
            emb = table.column("embedding").combine_chunks()
            values = emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.width)
            docs = table.column("doc_row").to_numpy() if with_docs else None
            yield table.column("row").to_numpy(), values, docs

    def lookup(self, rows: set[int], column: str) -> dict[int, str]:
        """Values of `column` at the given row indices (one pass over that column and `row`)."""
        found: dict[int, str] = {}
        if column not in self.columns or not rows:
            return found
        for group in range(self._file.metadata.num_row_groups):
            table = self._file.read_row_group(group, columns=["row", column])
            index = table.column("row").to_numpy()
            hit = np.flatnonzero(np.isin(index, np.fromiter(rows, np.int64)))
            if len(hit):
                values = table.column(column).take(hit).to_pylist()
                found.update(zip(index[hit].tolist(), values))
        return found
