"""Chunked --ray jobs (issue 23): a row per chunk, the rows, row numbers and provenance of the
single-process path (hfenc.jobs.chunked), made on Ray.

Where the plan is made, and why. A chunk's row is the count of chunks before it, so each file
needs the chunk count of every file before it: the plan exists before the pipeline starts, as
the records' rows do. It is not made in the scan tasks: the scan needs no model and runs while
the model loads (the probe), whereas cutting needs the model's tokenizer. It is not made on the
driver either (hfenc.jobs.chunked.make_plan): cutting tokenizes every record, some of it twice
near each cut, and on one process that would be the job's bottleneck (and a remote input would
have to be copied to the driver). So once the probe is done, one plan task per file cuts its
records with the probe's own tokenizer (pickled to it: the tokenizer a replica builds) and
checks the bytes again; the driver writes their records in file order to one plan file, the
local path's hidden `.OUT.chunks.tsv.scan` (claimed by the resume state, removed when the job
ends), which gives each file its first chunk row. A read task maps its file's slice of that
file (the output is on storage every node sees, as the shards are) and hands out a row per
chunk: its global row, the chunk's text, the record's id (`doc_id`) and the provenance columns.
The replicas embed chunk texts as they embed records, and the shards carry the provenance
(hfenc.io.parquet's schema), so a directory's columns, and a .npy's ids and OUT.chunks.tsv, are
the local path's. A resumed run cuts again: the fingerprint holds the input's bytes, the
tokenizer's files and the chunk settings, so the same chunks come out.

--doc-vectors: each shard's write also saves, per document with chunks in it, their count and
the sum of their float32 vectors (a replica hands the float32 rows on beside quantized or
float16 ones), beside the shard's description in _meta (Ray's recovery drops both with a shard
it never committed); publication adds the parts up into each document's mean, L2-normalized
when the model normalizes, as hfenc.jobs.chunked.DocVectors does: OUT.docs.npy beside a .npy,
or `_docs.parquet` inside a shard directory (pyarrow's dataset reader skips _-names), listed in
the manifest as its own file. Trade-off: the sums go through float64 in another order than the
local path's float32 means, so document vectors agree within float32 rounding, not bit for bit.

--late-chunking is refused: a document's chunks are pooled from one pass over the whole document,
so a batch would have to hold whole documents, while Ray Data cuts batches by rows and its
checkpoint commits rows, not documents.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hfenc.compute.chunking import ChunkOptions
from hfenc.errors import ConfigError
from hfenc.io.outputs import OutputPaths
from hfenc.jobs.chunked import PLAN, ChunkPlan, chunk_counts, doc_means
from hfenc.jobs.local import JobOptions
from hfenc.jobs.ray_inputs import ScannedInput
from hfenc.jobs.ray_session import get, ray_modules

if TYPE_CHECKING:
    from hfenc.jobs.ray_output import RayOutput

DOCS_IN_DATASET = "_docs.parquet"  # --doc-vectors of a shard directory: inside it, beside the manifest


def check_chunking(job: JobOptions) -> None:
    """What --ray cannot do of chunking, refused before anything starts."""
    if job.chunking is not None and job.chunking.late:
        raise ConfigError("--late-chunking runs in the single-process engine only; drop --ray",
                          hint="late chunking pools a record's chunks from one pass over the whole record")


@dataclass(frozen=True)
class RayChunks:
    """A chunked job's plan: the chunks of every record in output order (ChunkPlan, the plan file
    beside the output), and each input file's first chunk row and chunk count."""

    options: ChunkOptions
    plan: ChunkPlan
    starts: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def rows(self) -> int:
        return self.plan.rows

    @property
    def docs(self) -> int:
        return self.plan.docs

    def fingerprint(self) -> dict[str, Any]:
        """What the resume fingerprint and the sidecar add (hfenc.jobs.chunked.ChunkedJob's)."""
        return {"chunking": self.options.record(), "documents": self.plan.docs}

    def for_readers(self) -> list[dict[str, Any]]:
        """Per file, where its read task finds its chunks (ray_tasks.read_file)."""
        path = str(self.plan.path.resolve())
        return [{"plan": path, "first": s, "rows": n} for s, n in zip(self.starts, self.counts)]

    def doc_row(self, row: int) -> int:
        """The record that chunk row `row` is of."""
        return int(self.plan.table()[row]["doc_row"])


def plan_path(paths: OutputPaths) -> Path:
    """The plan file: the local path's name (hfenc.jobs.local), so the claim and `hfenc clean` know it."""
    return paths.hidden(paths.chunks, "scan")


def plan_chunks(options: ChunkOptions, tokenizer: Any, inp: ScannedInput, paths: OutputPaths) -> RayChunks:
    """Cut every record into chunks (one task per file, with the model's `tokenizer`); write the
    plan file. The Chunker is made here first, so its refusals (a chunk too long for the model,
    no room for text) are one line before any task starts."""
    from hfenc.compute.chunking import Chunker

    chunker = Chunker(tokenizer, options.tokens, options.overlap, options.by)
    r = ray_modules()
    # a CPU each: cutting is tokenizing, and no replica runs yet
    cut = r.ray.remote(r.tasks.plan_file).options(num_cpus=1)
    shared = r.ray.put(chunker)
    several = inp.several
    refs = [cut.remote(inp.spec, f, start, {k: s[k] for k in ("rows", "sha256", "bytes")}, shared, several)
            if s["rows"] else None for f, start, s in zip(inp.files, inp.starts, inp.scans)]
    path = plan_path(paths)
    counts: list[int] = []
    with open(path, "wb") as out:
        for ref in refs:  # in file order, one file's records in memory at a time
            part = get(ref) if ref is not None else np.empty(0, PLAN)
            out.write(np.ascontiguousarray(part, dtype=PLAN).tobytes())
            counts.append(len(part))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    return RayChunks(options, ChunkPlan(path, int(sum(counts)), inp.rows, None), tuple(starts), tuple(counts))


def columns(with_id: bool, keep_text: bool) -> list[str]:
    """A chunked shard directory's columns (hfenc.io.writers.Output.metadata's for Parquet)."""
    from hfenc.io.parquet import PROVENANCE

    return ["row", *(["doc_id"] if with_id else []), *PROVENANCE, *(["text"] if keep_text else []),
            "tokens", "truncated", "text_sha256", "embedding"]


def doc_vectors(chunks: RayChunks, out: RayOutput, shards: list[dict[str, Any]], dim: int, normalize: bool,
                target: Path) -> None:
    """--doc-vectors: every document's vector, from the shards' saved sums, as a float32 .npy at
    `target`: the mean of its chunks' vectors, L2-normalized when the model normalizes."""
    from numpy.lib.format import open_memmap

    suffix = ray_modules().tasks.DOCS_SUFFIX
    vectors = open_memmap(target, mode="w+", dtype=np.float32, shape=(chunks.docs, dim))
    counts = np.zeros(chunks.docs, np.int64)
    for shard in shards:
        part = np.load(out.meta / (shard["file"].removesuffix(".parquet") + suffix))
        docs = part[:, 0].astype(np.int64)  # each document once per shard
        vectors[docs] += part[:, 2:].astype(np.float32)
        counts[docs] += part[:, 1].astype(np.int64)
    expected = np.concatenate(list(chunk_counts(chunks.plan))) if chunks.rows else counts
    if not np.array_equal(counts, expected):  # verify() saw every row once: a sum is missing or doubled
        raise RuntimeError(f"the documents' sums in {out.meta} do not count every chunk once")
    for at in range(0, chunks.docs, 65536):
        vectors[at:at + 65536] = doc_means(vectors[at:at + 65536], counts[at:at + 65536], normalize)
    vectors.flush()
    del vectors
    with open(target, "rb+") as fh:
        os.fsync(fh.fileno())


def doc_ids(out: RayOutput, shards: list[dict[str, Any]], docs: int, target: Path) -> None:
    """Each document's id, one a line (for hfenc.io.parquet.write_vectors), from the shards: the
    doc_id of each document's first chunk."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ids: list[str] = [""] * docs
    for shard in shards:
        table = pq.read_table(out.shards / shard["file"], columns=["doc_row", "chunk", "doc_id"])
        first = table.filter(pc.equal(table.column("chunk"), 0))
        for doc, value in zip(first.column("doc_row").to_pylist(), first.column("doc_id").to_pylist()):
            ids[doc] = value or ""
    with open(target, "w", encoding="utf-8") as fh:
        fh.writelines(v + "\n" for v in ids)
