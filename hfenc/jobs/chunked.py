"""Chunked jobs (issue 23): an input's chunk plan, the work the engine gets from it, and the
vectors of whole documents.

The plan is made in one pass over the input after the model's tokenizer is loaded and before any
row is embedded: the output has a row per chunk, and its files are sized by that count. It is a
hidden file of int64 records (PLAN_FIELDS), one per chunk in output order, read through a memory
map (flat memory whatever the input's size). It is a function of the input's bytes, the tokenizer
and the chunk settings (all in the resume fingerprint), so a resumed run makes it again and gets
the same chunks. The engine is handed whole documents' chunks at a time (a chunk of work ends at a
document's end), so a document's chunks are always saved together: --resume starts at a document,
and the vectors of whole documents (--doc-vectors) are made as each chunk of work is saved.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from hfenc.compute.chunking import PLAN_FIELDS, ChunkOptions, Chunker, Span
from hfenc.compute.engine import Progress, Tokenized
from hfenc.errors import ConfigError, ResumeError
from hfenc.io.hashes import text_hashes
from hfenc.io.inputs import InputSpec, Scan, chunks, records
from hfenc.io.outputs import OutputPaths

PLAN = np.dtype([(name, "<i8") for name in PLAN_FIELDS])
_BLOCK = 65536  # plan records read at a time
_READ_RECORDS = 256  # records read at a time: a document may be long, so few, whatever --chunk-size says


def chunker_for(model: Any, options: ChunkOptions) -> Chunker:
    """The model's Chunker; late chunking pools by mean, so a model that pools otherwise is refused."""
    if options.late and model.settings.pooler != "mean":
        raise ConfigError(f"--late-chunking pools each chunk by the mean of its tokens; this model pools by "
                          f"{model.settings.pooler}", hint="drop --late-chunking, or choose a mean-pooling model")
    if options.late and model.settings.backend != "torch":
        raise ConfigError("--late-chunking runs on the torch backend only", hint="drop --backend openvino")
    return Chunker(model.tokenizer, options.tokens, options.overlap, options.by)


@dataclass(frozen=True)
class ChunkPlan:
    """The chunks of every document of an input, in output order."""

    path: Path  # PLAN records
    rows: int  # chunks: the output's rows
    docs: int
    ids: Path | None  # the document's id of every chunk, one per line (an input with ids)

    def table(self) -> np.ndarray:
        return np.memmap(self.path, dtype=PLAN, mode="r", shape=(self.rows,)) if self.rows else np.empty(0, PLAN)

    def docs_done(self, rows_done: int) -> int:
        """Documents whose every chunk is among the first `rows_done` rows."""
        return self.docs if rows_done >= self.rows else int(self.table()[rows_done]["doc_row"])


def make_plan(spec: InputSpec, info: Scan, chunker: Chunker, path: Path, doc_ids: Path | None,
              progress: Callable[[int], None] | None = None, hashes: Path | None = None) -> ChunkPlan:
    """Cut every record of the input (the bytes `info` validated) into chunks; write the plan to
    `path` and, with `doc_ids` (the scan's ids, one per record), each chunk's id beside it; with
    `hashes`, each chunk's text hash (hfenc.io.hashes, raw)."""
    ids_path = path.with_name(path.name + ".ids") if doc_ids is not None else None
    rows = 0
    with open(path, "wb") as out, \
            open(doc_ids, encoding="utf-8") if doc_ids is not None else nullcontext() as ids_in, \
            open(ids_path, "w", encoding="utf-8") if ids_path is not None else nullcontext() as ids_out, \
            open(hashes, "wb") if hashes is not None else nullcontext() as hashes_out:
        for start, texts in chunks(spec, _READ_RECORDS, 0, expected=info):
            found = plan_records(chunker, texts, start)
            if hashes_out is not None:
                hashes_out.write(text_hashes(texts[d][a:b] for d, a, b in zip(
                    (found["doc_row"] - start).tolist(), found["char_start"].tolist(), found["char_end"].tolist()))
                    .tobytes())
            if ids_out is not None:
                for n in np.bincount(found["doc_row"] - start, minlength=len(texts)).tolist():
                    ids_out.write(ids_in.readline() * n)
            out.write(found.tobytes())
            rows += len(found)
            if progress is not None:
                progress(start + len(texts))
    return ChunkPlan(path, rows, info.rows, ids_path)


def plan_records(chunker: Chunker, texts: list[str], first_doc: int) -> np.ndarray:
    """The PLAN records of `texts`, records `first_doc`, `first_doc + 1`, ... of the input."""
    return np.array([(first_doc + i, s.chunk, s.char_start, s.char_end, s.token_start, s.token_end)
                     for i, spans in enumerate(chunker.spans_many(texts)) for s in spans], dtype=PLAN)


def doc_means(sums: np.ndarray, counts: np.ndarray, normalize: bool) -> np.ndarray:
    """Documents' vectors from the sums of their chunks' vectors and their counts: the means,
    L2-normalized when the model normalizes."""
    means = sums / counts[:, None]
    if normalize:
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return means


def chunk_texts(table: np.ndarray, spec: InputSpec, rows: np.ndarray) -> list[str]:
    """The texts of the plan's chunks at `rows` (ascending), in one pass over the input: int8/uint8
    calibration samples chunks, not records (hfenc.io.writers.calibrate)."""
    wanted: dict[int, list[int]] = {}
    for row in rows.tolist():
        wanted.setdefault(int(table[row]["doc_row"]), []).append(row)
    texts = []
    for doc, record in enumerate(records(spec)):
        for row in wanted.get(doc, ()):
            texts.append(record.text[int(table[row]["char_start"]):int(table[row]["char_end"])])
    return texts


def _doc_chunks(table: np.ndarray, start_row: int) -> Iterator[np.ndarray]:
    """The plan's records from `start_row` on, a document's at a time."""
    row = start_row
    while row < len(table):
        block = np.array(table[row:row + _BLOCK])
        docs = block["doc_row"]
        cuts = np.flatnonzero(docs[1:] != docs[:-1]) + 1
        if row + len(block) < len(table):  # the block's last document may go on in the next block
            if len(cuts) == 0:
                block = np.array(table[row:_doc_end(table, row)])
                yield block
                row += len(block)
                continue
            block = block[:cuts[-1]]
            cuts = cuts[:-1]
        yield from np.split(block, cuts)
        row += len(block)


def _doc_end(table: np.ndarray, row: int) -> int:
    doc, end = table[row]["doc_row"], row
    while end < len(table) and table[end]["doc_row"] == doc:
        end += 1
    return end


@dataclass(frozen=True)
class LateDocs:
    """A chunk of work for late chunking: documents and their chunks."""

    texts: list[str]
    spans: list[list[Span]]

    def chunk_texts(self) -> list[str]:
        """The chunks' texts, a row's each (for --keep-text)."""
        return [text[s.char_start:s.char_end] for text, spans in zip(self.texts, self.spans) for s in spans]


def work(spec: InputSpec, info: Scan, plan: ChunkPlan, chunk_size: int, start_row: int,
         late: bool) -> Iterator[tuple[int, Any]]:
    """(first row, payload) chunks of work of whole documents, about `chunk_size` rows each, from
    row `start_row` (a document's first chunk) on: the chunks' texts, or with `late` LateDocs."""
    table = plan.table()
    if start_row >= plan.rows:
        return
    if table[start_row]["chunk"] != 0:
        raise ResumeError(f"cannot resume: row {start_row:,} is not the first chunk of a document",
                          hint="use --force to start over")
    pieces = _doc_chunks(table, start_row)
    row, first, texts, late_docs = start_row, start_row, [], LateDocs([], [])
    for doc_start, doc_texts in chunks(spec, _READ_RECORDS, int(table[start_row]["doc_row"]), expected=info):
        for i, text in enumerate(doc_texts):
            mine = next(pieces)
            assert mine[0]["doc_row"] == doc_start + i  # the plan was made from these bytes
            if late:
                late_docs.texts.append(text)
                late_docs.spans.append([Span(int(r["chunk"]), int(r["char_start"]), int(r["char_end"]),
                                             int(r["token_start"]), int(r["token_end"])) for r in mine])
            else:
                texts.extend(text[s:e] for s, e in zip(mine["char_start"].tolist(), mine["char_end"].tolist()))
            row += len(mine)
            if row - first >= chunk_size:
                yield first, (late_docs if late else texts)
                first, texts, late_docs = row, [], LateDocs([], [])
    if row > first:
        yield first, (late_docs if late else texts)


def late_tokenizer(chunker: Chunker) -> Callable[[LateDocs], Tokenized]:
    """Late chunking's tokenize step: each document's passes (Chunker.windows) as rows, each
    chunk as a span of its pass's tokens."""

    def tokenize(docs: LateDocs) -> Tokenized:
        ids, spans = [], []
        for windows in chunker.windows_many(docs.texts, docs.spans):
            for window in windows:
                spans.extend((len(ids), start, end) for start, end in window.positions)
                ids.append(window.ids)
        lengths = np.array([len(i) for i in ids], np.int64)
        flat = np.concatenate(ids) if ids else np.empty(0, np.int64)
        return Tokenized(flat, lengths, np.zeros(len(ids), bool), np.array(spans, np.int64).reshape(-1, 3))

    return tokenize


class DocVectors:
    """--doc-vectors: each document's vector, the mean of its chunks' vectors (L2-normalized when
    the model normalizes), kept in float32 in a hidden .npy beside the output while the job runs.
    Made from the float32 rows as each chunk of work is saved, so quantized outputs get them too."""

    def __init__(self, path: Path, docs: int, dim: int, normalize: bool, resume: bool) -> None:
        self.path, self.normalize = path, normalize
        if resume and not path.is_file():
            raise ResumeError(f"cannot resume: the partial document vectors {path} are missing",
                              hint="use --force to start over")
        if resume:
            self.array = open_memmap(path, mode="r+")
            if self.array.shape != (docs, dim):
                raise ResumeError(f"cannot resume: {path} does not hold {docs:,} x {dim} document vectors",
                                  hint="use --force to start over")
        else:
            self.array = open_memmap(path, mode="w+", dtype=np.float32, shape=(docs, dim))

    def add(self, records: np.ndarray, rows: np.ndarray) -> None:
        """The documents of one saved chunk of work: its plan `records` and their `rows`."""
        docs = records["doc_row"]
        starts = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
        sums = np.add.reduceat(rows.astype(np.float32, copy=False), starts, axis=0)
        self.array[docs[starts]] = doc_means(sums, np.diff(np.r_[starts, len(docs)]), self.normalize)
        self.array.flush()

    def close(self) -> None:
        self.array.flush()
        del self.array
        with open(self.path, "rb+") as fh:
            os.fsync(fh.fileno())


def chunk_counts(plan: ChunkPlan) -> Iterator[np.ndarray]:
    """The number of chunks of each document, in order, a block of documents at a time."""
    table, last, carried = plan.table(), -1, 0  # the previous block's last document, its chunks so far
    for at in range(0, plan.rows, _BLOCK):
        docs = np.array(table[at:at + _BLOCK]["doc_row"])
        counts = np.bincount(docs - docs[0])  # every document has a chunk: no gaps
        if docs[0] == last:  # it goes on in this block
            counts[0] += carried
        elif carried:
            yield np.array([carried])
        last, carried = int(docs[-1]), int(counts[-1])  # the last document may go on in the next block
        if len(counts) > 1:
            yield counts[:-1]
    if plan.rows:
        yield np.array([carried])


def write_chunks_tsv(plan: ChunkPlan, path: Path) -> None:
    """The provenance of a .npy output's rows: OUT.chunks.tsv, a header then a line per row."""
    table = plan.table()
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        out.write("\t".join(("row", *PLAN_FIELDS)) + "\n")
        for at in range(0, plan.rows, _BLOCK):
            block = np.array(table[at:at + _BLOCK])
            columns = [np.arange(at, at + len(block))] + [block[name] for name in PLAN_FIELDS]
            out.write("".join("\t".join(map(str, line)) + "\n" for line in zip(*(c.tolist() for c in columns))))
        out.flush()
        os.fsync(out.fileno())


class ChunkedJob:
    """What chunking adds to a local job (hfenc.jobs.local): the plan, the engine's work and
    tokenize step, the documents' vectors, and the side files."""

    def __init__(self, options: ChunkOptions, model: Any, spec: InputSpec, info: Scan, paths: OutputPaths,
                 doc_ids: Path | None, progress: Callable[[Progress], None] | None = None) -> None:
        self.options, self.spec, self.info, self.paths, self.doc_ids = options, spec, info, paths, doc_ids
        self.chunker = chunker_for(model, options)
        t0 = time.perf_counter()

        def cutting(docs: int) -> None:  # the job's progress, before any row: records cut so far
            if progress is not None:
                progress(Progress(0, None, 0, time.perf_counter() - t0, docs_done=docs, docs_total=info.rows,
                                  phase="chunking"))

        self.hashes = paths.hidden(paths.hashes, "plan")  # the chunks' text hashes (hfenc.io.hashes)
        self.plan = make_plan(spec, info, self.chunker, paths.hidden(paths.chunks, "scan"), doc_ids, cutting,
                              self.hashes)
        self.vectors: DocVectors | None = None
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # chunks of work in flight: (float32, stored)

    def fingerprint(self) -> dict[str, Any]:
        """What the resume fingerprint and the sidecar add."""
        return {"chunking": self.options.record(), "documents": self.info.rows}

    def start(self, rows: Callable[[int, int], np.ndarray], dim: int, normalize: bool,
              resumed: bool) -> Callable[[int, int], np.ndarray]:
        """The engine's destination of rows: the writer's `rows`, kept for --doc-vectors."""
        if not self.options.doc_vectors:
            return rows
        self.vectors = DocVectors(self.paths.hidden(self.paths.docs, "partial"), self.plan.docs, dim, normalize,
                                  resume=resumed)

        def kept(start: int, n: int) -> np.ndarray:
            stored = rows(start, n)  # float16 (--out-dtype) would round the rows the mean is of
            block = stored if stored.dtype == np.float32 else np.zeros(stored.shape, np.float32)
            self._blocks[start] = (block, stored)
            return block

        return kept

    def saved(self, start: int, n: int) -> None:
        """A chunk of work is done (before its rows are claimed saved)."""
        if self.vectors is not None:
            block, stored = self._blocks.pop(start)
            if stored is not block:
                stored[...] = block
            self.vectors.add(self.plan.table()[start:start + n], block)

    def texts_of(self, rows: np.ndarray) -> list[str]:
        return chunk_texts(self.plan.table(), self.spec, rows)

    def work(self, chunk_size: int, start_row: int) -> Iterator[tuple[int, Any]]:
        return work(self.spec, self.info, self.plan, chunk_size, start_row, self.options.late)

    def tokenize(self) -> Callable[[LateDocs], Tokenized] | None:
        return late_tokenizer(self.chunker) if self.options.late else None

    def abandon(self) -> None:
        if self.vectors is not None:
            del self.vectors.array
            self.vectors.path.unlink(missing_ok=True)

    def side_files(self, fmt: str) -> tuple[dict[str, str], list[tuple[Path, Path]]]:
        """The side files, staged: the rows' provenance (.npy outputs: OUT.chunks.tsv; Parquet
        holds it in columns) and the documents' vectors (OUT.docs.npy or .parquet)."""
        paths, side, files = self.paths, {}, []
        if fmt != "parquet":  # .npy and .npz
            write_chunks_tsv(self.plan, paths.staged(paths.chunks))
            files.append((paths.staged(paths.chunks), paths.chunks))
            side["chunks_file"] = paths.chunks.name
        if self.vectors is not None:  # the partial stays until the output is published: a --resume needs it
            self.vectors.close()
            staged = paths.staged(paths.docs)
            staged.unlink(missing_ok=True)
            if fmt == "parquet":
                from hfenc.io.parquet import write_vectors

                write_vectors(self.vectors.path, staged, self.doc_ids, chunk_counts(self.plan))
            else:
                try:
                    os.link(self.vectors.path, staged)
                except OSError:  # a filesystem without hard links
                    shutil.copyfile(self.vectors.path, staged)
            files.append((staged, paths.docs))
            side["docs_file"] = paths.docs.name
        return side, files


def published(paths: OutputPaths) -> None:
    """After publication (or before a fresh run): the partial document vectors go."""
    paths.hidden(paths.docs, "partial").unlink(missing_ok=True)
