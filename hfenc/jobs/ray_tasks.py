"""What runs inside Ray: the scan, probe and chunk plan tasks, the read tasks, the embedding actor
and the shard writer. Imported only after `hfenc.jobs.ray_session.ray_modules()` found Ray installed.

Every input file is read by hfenc's own record parser (hfenc.io.inputs; hfenc.io.parquet for tables),
inside a Ray read task, so a record means exactly what it means to the single-process path. A
file on another filesystem (s3://, gs://, hdfs://: anything `pyarrow.fs` opens) is copied to a
local temporary file first, then parsed the same way.

A leaf: nothing here imports the runner's modules (ray_runner, ray_plan, ...), so a worker that
unpickles a task imports this module and what it needs, and no import runs in a circle.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import posixpath
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata
from ray.data.datasource import BlockBasedFileDatasink

from hfenc.compute.chunking import PLAN_FIELDS
from hfenc.errors import ConfigError, HfencError, InputChanged, OverflowRefused
from hfenc.io.inputs import InputSpec, Tally, records  # the parser the single-process scan uses
from hfenc.io.hashes import hex_hashes, text_hashes
from hfenc.io.parquet import METADATA_KEY, PROVENANCE, embedding_array, hash_array, sparse_array

META_DIR = "_meta"  # beside the shards: one JSON per shard (rows, tokens, bytes, sha256)
DOCS_SUFFIX = ".docs.npy"  # --doc-vectors: beside a shard's JSON, its documents' sums (doc_sums)
# A chunked job's plan records (hfenc.jobs.chunked.PLAN, which imports torch: read tasks do not)
PLAN = np.dtype([(name, "<i8") for name in PLAN_FIELDS])


@dataclass(frozen=True)
class InputFile:
    """One input file: `name` as the user gave it (messages, sidecar, the input hash), `path`
    on `filesystem` (a pyarrow FileSystem, pickled to the workers; absolute when local)."""

    name: str
    path: str
    filesystem: Any

    @property
    def local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)


@contextmanager
def local_copy(f: InputFile) -> Iterator[str]:
    """A local path holding `f`'s bytes: the file itself, or a temporary copy of a remote one
    (named like it, so a .gz is still seen as one)."""
    if f.local:
        yield f.path
        return
    fd, tmp = tempfile.mkstemp(prefix=".hfenc-ray-", suffix="-" + posixpath.basename(f.path))
    try:
        with os.fdopen(fd, "wb") as out, f.filesystem.open_input_stream(f.path, compression=None) as src:
            shutil.copyfileobj(src, out, 1 << 22)
        yield tmp
    finally:
        os.unlink(tmp)


@contextmanager
def naming(f: InputFile, local: str, several: bool) -> Iterator[None]:
    """An error about `f` names it as the user did (not a temporary copy), and with several
    input files says which one it is about."""
    try:
        yield
    except HfencError as exc:
        message = str(exc).replace(local, f.name) if local != f.name else str(exc)
        if several and f.name not in message:
            message = f"{f.name}: {message}"
        exc.args = (message,)
        raise


def _one(spec: InputSpec, path: str) -> InputSpec:
    return replace(spec, path=path, more=())


# ---- tasks --------------------------------------------------------------------------------------

def scan_file(spec: InputSpec, f: InputFile, several: bool, want_lines: bool) -> dict[str, Any]:
    """Validate and count one file's records (the scan of hfenc.io.inputs, file by file); the hash
    is of the very bytes that were parsed. `lines`: kept line numbers, for --skip-blank."""
    with local_copy(f) as path, naming(f, path, several):
        tally, rows, blank, chars, lines = Tally(), 0, 0, 0, []
        for record in records(_one(spec, path), tally):
            rows += 1
            blank += not record.text.strip()
            chars += len(record.text)
            if want_lines:
                lines.append(record.line)
    return {"rows": rows, "blank": blank, "sha256": tally.sha256, "bytes": tally.bytes, "text_bytes": chars,
            "lines": np.asarray(lines, dtype=np.int64) if want_lines else None}


def probe(model: str, options: dict[str, Any], tokenizer: bool = False) -> dict[str, Any]:
    """Load the model as a worker does (its device, its dtype, its threads): the settings, width
    and hashes that the sidecar records, and any bad option that needs the model, before the
    job starts. `tokenizer`: the model's tokenizer too (a chunked job cuts records with it)."""
    from hfenc.compute.embedder import Embedder

    return described(Embedder(model, **options), tokenizer)


def described(embedder: Any, tokenizer: bool = False) -> dict[str, Any]:
    return {"describe": embedder.describe(), "dim": embedder.dim, "notes": list(embedder.notes),
            "max_length": embedder.max_length, **({"tokenizer": embedder.tokenizer} if tokenizer else {})}


def plan_file(spec: InputSpec, f: InputFile, first_doc: int, expect: dict[str, Any], chunker: Any,
              several: bool) -> np.ndarray:
    """A chunked job's plan of one file (hfenc.jobs.chunked.make_plan, file by file): a PLAN
    record per chunk of each record, in order, the file's records counted from global row
    `first_doc`; the bytes are checked to be those the scan counted."""
    from hfenc.jobs.chunked import plan_records  # a plan task holds a tokenizer: torch is loaded anyway

    with local_copy(f) as path, naming(f, path, several):
        tally, parts, texts, n = Tally(), [], [], 0
        for record in records(_one(spec, path), tally, again=True):
            if n >= expect["rows"]:
                raise _changed(f.name, f"has more than the {expect['rows']} records it had")
            texts.append(record.text)
            n += 1
            if len(texts) == 512:
                parts.append(plan_records(chunker, texts, first_doc + n - len(texts)))
                texts = []
        if texts:
            parts.append(plan_records(chunker, texts, first_doc + n - len(texts)))
        _same_file(f, expect, n, tally)
    return np.concatenate(parts) if parts else np.empty(0, PLAN)


def calibrate(embedder: Any, spec: InputSpec, files: list[InputFile], rows: int,
              plan: str | None = None) -> tuple[np.ndarray, dict]:
    """int8/uint8 ranges from the local path's sample of the input (hfenc.io.writers.calibrate),
    over every file in order (remote ones copied here first). `plan`: a chunked job's plan file
    (of `rows` chunks), whose chunks are sampled as the local path samples them."""
    from hfenc.io.writers import calibrate as calibrate_on

    with ExitStack() as stack:
        paths = [stack.enter_context(local_copy(f)) for f in files]
        whole = replace(spec, path=paths[0], more=tuple(paths[1:]))
        texts_of = None
        if plan is not None:
            from hfenc.jobs.chunked import chunk_texts

            table = np.memmap(plan, dtype=PLAN, mode="r", shape=(rows,))
            texts_of = lambda picks: chunk_texts(table, whole, picks)  # noqa: E731
        return calibrate_on(embedder, whole, rows, texts_of)


def calibrate_with(model: str, options: dict[str, Any], spec: InputSpec, files: list[InputFile],
                   rows: int, plan: str | None = None) -> tuple[np.ndarray, dict]:
    """calibrate, in a task of its own on a worker node (the model loaded as a replica loads it)."""
    from hfenc.compute.embedder import Embedder

    return calibrate(Embedder(model, **options), spec, files, rows, plan)


def read_file(spec: InputSpec, f: InputFile, start: int, expect: dict[str, Any], block_rows: int,
              with_id: bool, several: bool, chunks: dict[str, Any] | None = None) -> Iterator[pa.Table]:
    """Blocks of {row, text[, id]}: record k of this file is global row `start + k`; with `chunks`
    (a chunked job: where this file's part of the plan is), a row per chunk (_ChunkRows). The
    pass hashes the bytes again as it streams; a file that changed since the scan fails before
    its last block is handed out (as hfenc.io.inputs.chunks does)."""
    with local_copy(f) as path, naming(f, path, several):
        tally = Tally()
        rows = _Rows(start, with_id) if chunks is None else _ChunkRows(chunks, start, with_id, f.name)
        n = 0
        for record in records(_one(spec, path), tally, again=True):
            if n >= expect["rows"]:
                raise _changed(f.name, f"has more than the {expect['rows']} records it had")
            if len(rows) >= block_rows:
                yield rows.block()
            rows.add(n, record.text, record.id)
            n += 1
        _same_file(f, expect, n, tally)
        rows.check()
        if len(rows):
            yield rows.block()


class _Rows:
    """The rows a read task hands out, a block at a time: a record's each, record k at global
    row `start + k`."""

    def __init__(self, start: int, with_id: bool) -> None:
        self.next, self.with_id = start, with_id
        self.texts: list[str] = []
        self.ids: list[str | None] = []

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, k: int, text: str, record_id: str | None) -> None:
        self.texts.append(text)
        self.ids.append(record_id)

    def check(self) -> None:
        """After the last record: nothing to check (the record count is the scan's)."""

    def block(self) -> pa.Table:
        n = len(self.texts)
        columns = {"row": pa.array(np.arange(self.next, self.next + n, dtype=np.int64)),
                   "text": pa.array(self.texts, pa.string()), "text_sha256": hash_array(text_hashes(self.texts))}
        if self.with_id:
            columns["id"] = pa.array(self.ids, pa.string())
        self.next += n
        self.texts, self.ids = [], []
        return pa.table(columns)


class _ChunkRows(_Rows):
    """A chunked job's rows: a row per chunk of each record, numbered and cut as the plan says
    (`chunks`: the plan file, the global row of this file's first chunk and its count), with the
    record's id as `doc_id` and the chunk's provenance columns (hfenc.io.parquet's schema)."""

    def __init__(self, chunks: dict[str, Any], first_doc: int, with_id: bool, name: str) -> None:
        super().__init__(chunks["first"], with_id)
        self.name, self.first_doc, n = name, first_doc, chunks["rows"]
        self.plan = np.memmap(chunks["plan"], dtype=PLAN, mode="r", offset=chunks["first"] * PLAN.itemsize,
                              shape=(n,)) if n else np.empty(0, PLAN)
        self.docs = np.asarray(self.plan["doc_row"])  # sorted: the plan is in output order
        self.at = self.block_at = 0  # the plan's next record; the block's first

    def add(self, k: int, text: str, record_id: str | None) -> None:
        end = int(np.searchsorted(self.docs, self.first_doc + k, side="right"))
        if end <= self.at:  # every record has a chunk: the plan was made from other bytes
            raise _changed(self.name, "has other records than when it was cut into chunks")
        records = np.array(self.plan[self.at:end])
        self.texts.extend(text[s:e] for s, e in zip(records["char_start"].tolist(), records["char_end"].tolist()))
        self.ids.extend([record_id] * len(records))
        self.at = end

    def check(self) -> None:
        if self.at != len(self.plan):
            raise _changed(self.name, "has other records than when it was cut into chunks")

    def block(self) -> pa.Table:
        records = np.array(self.plan[self.block_at:self.at])
        columns = {"row": pa.array(np.arange(self.next, self.next + len(records), dtype=np.int64)),
                   "text": pa.array(self.texts, pa.string()), "text_sha256": hash_array(text_hashes(self.texts))}
        if self.with_id:
            columns["doc_id"] = pa.array(self.ids, pa.string())
        columns.update((name, pa.array(records[name])) for name in PROVENANCE)
        self.next += len(records)
        self.block_at = self.at
        self.texts, self.ids = [], []
        return pa.table(columns)


def _same_file(f: InputFile, expect: dict[str, Any], n: int, tally: Tally) -> None:
    """The records and bytes the scan counted, or InputChanged."""
    if n != expect["rows"]:
        raise _changed(f.name, f"has {n} records, not the {expect['rows']} it had")
    if (tally.sha256, tally.bytes) != (expect["sha256"], expect["bytes"]):
        raise _changed(f.name, f"no longer has the bytes it was checked with ({tally.bytes} bytes, "
                               f"it had {expect['bytes']})")


def _changed(name: str, detail: str) -> InputChanged:
    return InputChanged(f"input changed while it was being embedded: {name} {detail}",
                        hint="embed a copy of the file that nothing writes to while hfenc runs")


class InputSource(Datasource):
    """One read task per input file (a file is parsed from its start: CSV records span lines,
    gzip is one stream); each task streams blocks of `block_rows` rows."""

    def __init__(self, spec: InputSpec, files: list[InputFile], starts: list[int], scans: list[dict[str, Any]],
                 block_rows: int, with_id: bool, chunks: list[dict[str, Any]] | None = None) -> None:
        self.spec, self.files, self.starts, self.scans = spec, files, starts, scans
        self.block_rows, self.with_id = block_rows, with_id
        self.chunks = chunks  # a chunked job: each file's part of the plan (read_file)

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(s["bytes"] for s in self.scans)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        several = len(self.files) > 1
        tasks = []
        for k, (f, start, s) in enumerate(zip(self.files, self.starts, self.scans)):
            if s["rows"] == 0:
                continue
            expect = {key: s[key] for key in ("rows", "sha256", "bytes")}
            chunks = self.chunks[k] if self.chunks is not None else None
            read = functools.partial(read_file, self.spec, f, start, expect, self.block_rows, self.with_id, several,
                                     chunks)
            rows = chunks["rows"] if chunks is not None else s["rows"]
            meta = BlockMetadata(num_rows=rows, size_bytes=s["bytes"], exec_stats=None, input_files=(f.name,))
            tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return tasks


# ---- the embedding actor ------------------------------------------------------------------------

class EmbedWorker:
    """One model replica: loads the Embedder once, then embeds batch after batch through its
    engine (length sort + token budget inside the batch, as for a chunk of the local path).

    Two batches may be in the actor at once (`max_concurrent_calls_per_actor`): one is tokenized
    while the other holds the model (the lock), so tokenization overlaps inference on a GPU.

    A sparse model's batch fills a SparseBlock (the engine assigns its rows by position, as into
    a dense array) and its `embedding` column is list<struct<index, value>> (hfenc.io.parquet's
    sparse_array); the driver refused what sparse rows cannot have (quantization, float16, reuse,
    document vectors) before the job started."""

    def __init__(self, model: str, options: dict[str, Any], out_dtype: str, with_id: bool, keep_text: bool,
                 on_overflow: str, quantization: dict[str, Any] | None = None,
                 faults: dict[str, Any] | None = None, carry: tuple[str, ...] = (), doc_vectors: bool = False,
                 reuse: Any = None) -> None:
        from hfenc.compute.embedder import Embedder
        from hfenc.io.quantize import Quantization

        self.embedder = Embedder(model, **options)
        if self.embedder.settings.dtype != options.get("dtype", self.embedder.settings.dtype):
            # e.g. bf16 asked for on a node without native bf16: its rows would differ from the rest
            raise ConfigError(f"a replica on this node computes in {self.embedder.settings.dtype}, not the job's "
                              f"{options['dtype']}: {'; '.join(self.embedder.notes) or 'its CPU differs'}",
                              hint="give --dtype float32, or run on nodes of one kind")
        self.out_dtype = np.dtype(out_dtype)
        self.quantization = None if quantization is None else Quantization.from_record(quantization)
        self.keep_text, self.on_overflow = keep_text, on_overflow
        # handed on as they came (a chunk's provenance, the texts' hashes)
        self.carry = (("id",) if with_id else ()) + tuple(carry) + ("text_sha256",)
        self.reuse = reuse  # --reuse: the earlier output (hfenc.jobs.reuse.OldOutput)
        self.doc_vectors = doc_vectors
        self.lock = threading.Lock()
        self.calls = 0
        self.faults = faults or {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        engine = self.embedder.engine
        texts = batch.column("text").to_pylist()
        tok = engine.tokenizer(texts, getattr(engine, "tokenize_threads", 1))
        if self.on_overflow == "error" and tok.truncated.any():
            row = batch.column("row")[int(np.argmax(tok.truncated))].as_py()
            exc = OverflowRefused(f"row {row} is longer than the maximum of {self.embedder.max_length} tokens",
                                  hint="raise --max-length, or drop --on-overflow error to truncate")
            exc.row = row  # type: ignore[attr-defined]  (the driver names the line)
            raise exc
        if self.embedder.sparse:
            return self._sparse(batch, tok)
        dest = np.empty((len(texts), self.embedder.dim), dtype=np.float32)
        given, slots = self._given(batch)
        if given is not None:  # reused rows: OLD's stored values, the rest computed as if alone
            tok = replace(tok, given=given)
            old = self.reuse.values(slots[given])
            dest[given] = old if self.quantization is None else 0  # codes go in after quantization
        with self.lock:
            engine.embed_tokenized(tok, dest)
        self.calls += 1
        self._fault()
        stored = self.quantization(dest) if self.quantization is not None else dest.astype(self.out_dtype, copy=False)
        if given is not None and self.quantization is not None:
            stored[given] = old
        table = self._columns(batch, tok, embedding_array(stored),
                              given if given is not None else np.zeros(len(texts), bool))
        if self.doc_vectors and stored is not dest:  # documents' vectors are of the float32 rows (ShardSink)
            table = table.append_column("_float", embedding_array(dest))
        return table

    def _sparse(self, batch: pa.Table, tok: Any) -> pa.Table:
        """A sparse model's batch: its rows as the local path's sparse Parquet column."""
        from hfenc.model.sparse import SparseBlock

        block = SparseBlock(len(tok.lengths), self.embedder.dim)
        with self.lock:
            self.embedder.engine.embed_tokenized(tok, block)
        self.calls += 1
        self._fault()
        return self._columns(batch, tok, sparse_array(block.rows()), np.zeros(len(tok.lengths), bool))

    def _columns(self, batch: pa.Table, tok: Any, embedding: pa.Array, reused: np.ndarray) -> pa.Table:
        """The batch's output: its row, the columns handed on, the rows and their token counts."""
        columns: dict[str, Any] = {"row": batch.column("row")}
        columns.update((name, batch.column(name)) for name in self.carry)
        if self.keep_text:
            columns["text"] = batch.column("text")
        columns["embedding"] = embedding
        columns["tokens"] = pa.array(tok.lengths.astype(np.int64))
        columns["truncated"] = pa.array(tok.truncated)
        columns["_reused"] = pa.array(reused)
        return pa.table(columns)

    def _given(self, batch: pa.Table) -> tuple[np.ndarray | None, np.ndarray]:
        """Which rows of the batch OLD holds, and where (its slots)."""
        if self.reuse is None:
            return None, np.empty(0, np.int64)
        slots = self.reuse.match(hex_hashes(batch.column("text_sha256").combine_chunks()))
        return (slots >= 0 if (slots >= 0).any() else None), slots

    def _fault(self) -> None:
        """Fault injection for the tests (hfenc.jobs.ray_pipeline.faults_from_env): `delay`
        seconds per batch; `kill` (K, MARKER): after its K-th batch, the first actor to create
        MARKER SIGKILLs its own process, its batch still in hand."""
        if self.faults.get("delay"):
            time.sleep(float(self.faults["delay"]))
        kill = self.faults.get("kill")
        if kill is None or self.calls != kill[0]:
            return
        try:
            os.close(os.open(kill[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


# ---- the shard writer ---------------------------------------------------------------------------

class ShardSink(BlockBasedFileDatasink):
    """Writes each block as one Parquet shard with hfenc's schema (hfenc.io.parquet.schema) and
    the job's sidecar under the `hfenc` key, then a small JSON beside it in _meta/ (rows, row
    range, tokens, truncated, bytes, sha256), which progress and the manifest read instead of
    the shards. Both carry the shard's name, so Ray's checkpoint recovery removes both when a
    write was cut short."""

    def __init__(self, path: str, schema: pa.Schema, sidecar: dict[str, Any], min_rows: int | None = None,
                 doc_vectors: bool = False) -> None:
        super().__init__(path, file_format="parquet", min_rows_per_file=min_rows)
        self.schema, self.sidecar, self.doc_vectors = schema, sidecar, doc_vectors
        self._path: str | None = None

    def open_output_stream(self, path: str) -> Any:
        self._path = path
        return super().open_output_stream(path)

    def write_block_to_file(self, block: Any, file: Any) -> None:
        table = block.to_arrow()
        rows = table.column("row").to_numpy()
        truncated = table.column("truncated").to_numpy(zero_copy_only=False)
        shard = {"rows": len(rows), "row_min": int(rows.min()), "row_max": int(rows.max()),
                 "tokens": int(pc.sum(table.column("tokens")).as_py() or 0), "truncated_rows": int(truncated.sum()),
                 "first_truncated": int(rows[truncated].min()) if truncated.any() else None,
                 "reused": int(table.column("_reused").to_numpy(zero_copy_only=False).sum())}
        schema = self.schema.with_metadata({METADATA_KEY: json.dumps({**self.sidecar, "shard": shard})})
        out = table.select(schema.names).cast(schema)
        buffer = pa.BufferOutputStream()
        pq.write_table(out, buffer)
        data = buffer.getvalue()
        file.write(data)
        assert self._path is not None
        name = posixpath.basename(self._path)
        info = {"file": name, **shard, "bytes": data.size, "sha256": "sha256:" + hashlib.sha256(data).hexdigest()}
        meta = posixpath.join(posixpath.dirname(self._path), META_DIR, name.removesuffix(".parquet"))
        if self.doc_vectors:  # before the description: a described shard has its sums
            buffer = io.BytesIO()
            np.save(buffer, doc_sums(table))
            with self.filesystem.open_output_stream(meta + DOCS_SUFFIX) as fh:
                fh.write(buffer.getvalue())
        with self.filesystem.open_output_stream(meta + ".json") as fh:
            fh.write(json.dumps(info).encode())


def doc_sums(table: pa.Table) -> np.ndarray:
    """--doc-vectors, a shard's part: per document with chunks in it, a float64 row of its
    doc_row, its chunks here, and the sum of their float32 vectors (the replica's `_float`
    column when the stored rows are quantized or float16)."""
    column = table.column("_float" if "_float" in table.column_names else "embedding").combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(table), -1)
    docs = table.column("doc_row").to_numpy()
    order = np.argsort(docs, kind="stable")
    unique, starts, counts = np.unique(docs[order], return_index=True, return_counts=True)
    sums = np.add.reduceat(values[order].astype(np.float64), starts, axis=0) if len(docs) else values[:0]
    return np.column_stack([unique, counts, sums]).astype(np.float64)
