"""Publishing a --ray job's verified shards: moved into place as a directory of Parquet shards with
its manifest, or assembled into one .npy (+ ids, + kept lines) in input order, or for a sparse
model one .npz (SciPy CSR: the local path's file, hfenc.io.npz.write_csr) with the same side files.

Both are journaled in the resume state before the first step and safe to repeat after a crash at
any step (`--resume` carries out the rest). The .npy goes through the local path's publication
(hfenc.io.outputs.publish). A directory is published file by file, because an existing output
directory may hold the user's files beside hfenc's: hfenc.io.outputs.Listing decides which of
its files the old manifest lists (those, and only those, are replaced); the old manifest goes
first, so no crash pairs new shards with old metadata, and the new manifest arrives last. A
directory left empty is replaced whole (one rename); anything else is left alone and reported,
as the local path reports a side file it did not write.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hfenc.errors import OutputError
from hfenc.io.hashes import WIDTH, hex_hashes
from hfenc.io.outputs import (OutputPaths, directory_entries, file_sha256, finish_publication, fsync_dir, left_alone,
                              publish, read_sidecar, remove_path, stale_files, write_state)
from hfenc.jobs.chunked import chunk_counts, write_chunks_tsv
from hfenc.jobs.ray_chunks import DOCS_IN_DATASET, doc_ids, doc_vectors
from hfenc.jobs.ray_output import MANIFEST, RayOutput
from hfenc.jobs.ray_plan import JobPlan

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa

    from hfenc.model.sparse import SparseRows

# ---- a directory of shards ----------------------------------------------------------------------

def publish_dataset(plan: JobPlan) -> tuple[dict[str, Any], list[str]]:
    """(the manifest, the warnings for what was left alone) of the shard directory, published."""
    out, layout = plan.out, plan.layout
    shutil.rmtree(out.meta, ignore_errors=True)
    shutil.rmtree(out.checkpoint, ignore_errors=True)
    journal = _dataset_journal(out)
    write_state(out.paths, layout.fingerprint, plan.rows, layout.stats, publishing=journal)
    left = complete_dataset(out.paths, journal)
    return json.loads((out.path / MANIFEST).read_text(encoding="utf-8")), left


def dataset_docs(plan: JobPlan, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """--doc-vectors of a shard directory: `_docs.parquet` among the shards (doc_row, doc_id,
    chunks, embedding, as the local path's OUT.docs.parquet), and the manifest keys naming it."""
    chunks, out = plan.chunks, plan.out
    if chunks is None or not chunks.options.doc_vectors:
        return {}
    from hfenc.io.parquet import write_vectors

    vectors, ids = out.paths.partial / "docs.npy", out.paths.partial / "docs.ids"
    target = out.shards / DOCS_IN_DATASET
    doc_vectors(chunks, out, shards, plan.layout.dim, bool(plan.model.describe.get("normalize")), vectors)
    if plan.with_id:
        doc_ids(out, shards, chunks.docs, ids)
    write_vectors(vectors, target, ids if plan.with_id else None, chunk_counts(chunks.plan))
    vectors.unlink()
    ids.unlink(missing_ok=True)
    return {"docs_file": DOCS_IN_DATASET,
            "files": {DOCS_IN_DATASET: {"bytes": target.stat().st_size, "sha256": file_sha256(target)}}}


def _dataset_journal(out: RayOutput) -> dict[str, Any]:
    """The publication's plan: what of an existing output directory goes (hfenc's files that no
    new file replaces, its manifest first) and what stays. A file of someone else's with the name
    of a new shard is refused: publishing would overwrite it."""
    ours, theirs = directory_entries(out.path, MANIFEST)
    new = {p.name for p in out.shards.iterdir()}
    clash = [p for p in theirs if p.name in new]
    if clash:
        raise OutputError(f"{clash[0]} is in the way: hfenc did not write it, and a new shard has its name",
                          hint="move it away, then rerun with --resume")
    remove = [p.name for p in ours if p.name == MANIFEST] + [p.name for p in ours if p.name not in new]
    return {"dataset": str(out.shards), "output": str(out.path), "remove": remove, "left": [p.name for p in theirs]}


def complete_dataset(paths: OutputPaths, journal: dict[str, Any]) -> list[str]:
    """Carry out `journal`; safe to repeat after a crash at any step (while the new manifest is
    still in the shard directory, nothing of the new output is in place). Returns the warnings
    for the files left alone."""
    dataset, output = Path(journal["dataset"]), Path(journal["output"])
    try:
        if (dataset / MANIFEST).exists():
            for name in journal.get("remove", []):
                (output / name).unlink(missing_ok=True)
            if output.is_dir() and not any(output.iterdir()):
                output.rmdir()
            if output.exists():
                _move_into(dataset, output)
            else:
                os.replace(dataset, output)
            fsync_dir(output.parent)
        remove_path(paths.partial)
        for p in (paths.state, paths.hidden(paths.state, "tmp")):
            p.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot publish {output}: {exc.strerror or exc}") from None
    return [left_alone(f"{output.name}/{name}") for name in journal.get("left", [])]


def _move_into(dataset: Path, output: Path) -> None:
    """The new shards into a directory that keeps someone else's files, the manifest last."""
    for name in [*sorted(p.name for p in dataset.iterdir() if p.name != MANIFEST), MANIFEST]:
        os.replace(dataset / name, output / name)
    fsync_dir(output)
    dataset.rmdir()


# ---- one .npy (or a sparse model's .npz) ---------------------------------------------------------

CSR_BLOCK_ENTRIES = 4 << 20  # a sparse .npz is gathered in input order about this many entries at a time


def assemble(plan: JobPlan, metadata: dict[str, Any], shards: list[dict[str, Any]]
             ) -> tuple[dict[str, Any], list[str]]:
    """The shards as one .npy in input order, or a sparse model's .npz (+ OUT.ids.txt,
    OUT.lines.npy, OUT.sha256.npy; a chunked job's OUT.chunks.tsv and OUT.docs.npy), published
    with the local path's journaled step: (the sidecar, the warnings for side files left alone)."""
    paths, spec, chunks = plan.out.paths, plan.input.spec, plan.chunks
    staged = paths.staged(paths.npy)
    side_files: list[tuple[Path, Path]] = []
    extra: dict[str, Any] = {}
    docs = chunks is not None and chunks.options.doc_vectors
    try:
        parts = _write_csr(plan, staged) if plan.out.kind == "npz" else _write_array(plan, staged)
        if plan.with_id:
            _write_ids(paths.staged(paths.ids), *parts)
            side_files.append((paths.staged(paths.ids), paths.ids))
            extra["ids_file"] = paths.ids.name
        shard_hashes(plan, paths.staged(paths.hashes))
        side_files.append((paths.staged(paths.hashes), paths.hashes))
        extra["hashes_file"] = paths.hashes.name
        if spec.skip_blank:
            with open(paths.staged(paths.lines), "wb") as fh:
                np.save(fh, np.concatenate([s["lines"] for s in plan.input.scans]).astype("<i8"))
            side_files.append((paths.staged(paths.lines), paths.lines))
            extra["lines_file"] = paths.lines.name
        if chunks is not None:  # the rows' provenance, and --doc-vectors (hfenc.jobs.chunked.ChunkedJob.side_files)
            write_chunks_tsv(chunks.plan, paths.staged(paths.chunks))
            side_files.append((paths.staged(paths.chunks), paths.chunks))
            extra["chunks_file"] = paths.chunks.name
        if docs:
            doc_vectors(chunks, plan.out, shards, plan.layout.dim,
                        bool(plan.model.describe.get("normalize")), paths.staged(paths.docs))
            side_files.append((paths.staged(paths.docs), paths.docs))
            extra["docs_file"] = paths.docs.name
    except OSError as exc:
        raise OutputError(f"cannot write {staged}: {exc.strerror or exc}") from None
    unused = [final for made, final in ((plan.with_id, paths.ids), (spec.skip_blank, paths.lines),
                                        (chunks is not None, paths.chunks), (docs, paths.docs)) if not made]
    stale, theirs = stale_files(paths, unused)
    layout, rows = plan.layout, plan.rows

    def journal(publishing: dict[str, Any]) -> None:
        write_state(paths, layout.fingerprint, rows, layout.stats, publishing=publishing)
        remove_path(paths.partial)  # the staged files hold every row now

    sidecar = publish(paths, staged, {**metadata, **extra}, side_files, stale, journal)
    return sidecar, [left_alone(p.name) for p in theirs]


def _write_array(plan: JobPlan, staged: Path) -> tuple[list[np.ndarray], list[pa.ChunkedArray]]:
    """Every shard's rows into the staged .npy at their global rows, fsynced; (row indices, id
    columns) per shard when the job has ids."""
    import pyarrow.parquet as pq
    from numpy.lib.format import open_memmap

    layout = plan.layout
    array = open_memmap(staged, mode="w+", dtype=layout.dtype, shape=(plan.rows, layout.width))
    index_parts: list[np.ndarray] = []
    id_parts: list[pa.ChunkedArray] = []
    id_column = "doc_id" if plan.chunks is not None else "id"  # a chunk's id is its record's
    for path in sorted(plan.out.shards.glob("*.parquet")):
        table = pq.read_table(path, columns=["row", *([id_column] if plan.with_id else []), "embedding"])
        index = table.column("row").to_numpy()
        values = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        array[index] = values.reshape(-1, layout.width)
        if plan.with_id:
            index_parts.append(index)
            id_parts.append(table.column(id_column))
    array.flush()
    del array
    with open(staged, "rb+") as fh:
        os.fsync(fh.fileno())
    return index_parts, id_parts


def _write_csr(plan: JobPlan, staged: Path) -> tuple[list[np.ndarray], list[pa.ChunkedArray]]:
    """A sparse model's shards as one CSR .npz in input order at `staged`, fsynced; (row indices,
    id columns) per shard when the job has ids, as _write_array.

    Shards hold rows in no order, and hfenc.io.npz.write_csr streams rows in order (four passes,
    each over a fresh iterator). So one pass over the shards appends each shard's entries, as they
    lie, to two raw files (int32 indices, float32 values) in the partial directory and notes, by
    row, where its entries start there and how many they are (memory-mapped .npy files, 16 bytes a
    row, as the dense .npy is a map of its rows); each of write_csr's passes then gathers the rows
    in input order, CSR_BLOCK_ENTRIES entries at a time. Memory stays flat however many rows; the
    entries are on disk twice until the publication removes the partial directory."""
    import pyarrow.parquet as pq
    from numpy.lib.format import open_memmap

    from hfenc.io.npz import write_csr
    from hfenc.io.parquet import sparse_rows

    rows, dim = plan.rows, plan.layout.dim
    work = plan.out.paths.partial / "csr"
    shutil.rmtree(work, ignore_errors=True)  # an earlier try's, cut short
    work.mkdir()

    def by_row(name: str) -> np.ndarray:
        return open_memmap(work / name, mode="w+", dtype=np.int64, shape=(rows,)) if rows else np.zeros(0, np.int64)

    start, count, end = by_row("start.npy"), by_row("count.npy"), by_row("end.npy")
    index_parts: list[np.ndarray] = []
    id_parts: list[pa.ChunkedArray] = []
    id_column = "doc_id" if plan.chunks is not None else "id"
    nnz = 0
    with open(work / "indices", "wb") as indices_out, open(work / "values", "wb") as values_out:
        for path in sorted(plan.out.shards.glob("*.parquet")):
            if path.name.startswith("_"):
                continue
            table = pq.read_table(path, columns=["row", *([id_column] if plan.with_id else []), "embedding"])
            index = table.column("row").to_numpy()
            part = sparse_rows(table.column("embedding"), dim)
            start[index] = nnz + part.indptr[:-1]
            count[index] = part.counts()
            indices_out.write(np.ascontiguousarray(part.indices, "<i4").tobytes())
            values_out.write(np.ascontiguousarray(part.values, "<f4").tobytes())
            nnz += part.nnz
            if plan.with_id:
                index_parts.append(index)
                id_parts.append(table.column(id_column))
    np.cumsum(count, out=end)  # each row's last entry + 1, counted in input order

    def entries(name: str, dtype: str) -> np.ndarray:
        return np.memmap(work / name, dtype=dtype, mode="r", shape=(nnz,)) if nnz else np.empty(0, dtype)

    indices, values = entries("indices", "<i4"), entries("values", "<f4")
    with open(staged, "wb") as fh:  # write_csr's passes: each a fresh iterator over the rows in input order
        write_csr(fh, rows, dim, lambda: _in_order(start, count, end, indices, values, dim))
        fh.flush()
        os.fsync(fh.fileno())
    shutil.rmtree(work, ignore_errors=True)  # (the maps above go with this call)
    return index_parts, id_parts


def _in_order(start: np.ndarray, count: np.ndarray, end: np.ndarray, indices: np.ndarray, values: np.ndarray,
              dim: int) -> Iterator[SparseRows]:
    """Rows 0, 1, ... as SparseRows blocks of about CSR_BLOCK_ENTRIES entries, gathered from
    `indices` / `values` (the entries in shard order): row r's are [start[r], start[r] + count[r]);
    `end` is the running sum of `count` (where a block ends)."""
    from hfenc.model.sparse import SparseRows

    rows, a = len(count), 0
    while a < rows:
        before = int(end[a - 1]) if a else 0
        b = min(rows, max(a + 1, int(np.searchsorted(end, before + CSR_BLOCK_ENTRIES, side="right"))))
        n = np.asarray(count[a:b])
        indptr = np.zeros(b - a + 1, np.int64)
        np.cumsum(n, out=indptr[1:])
        source = np.repeat(np.asarray(start[a:b]) - indptr[:-1], n) + np.arange(int(indptr[-1]))
        yield SparseRows(indptr, np.asarray(indices[source], np.int32), np.asarray(values[source], np.float32), dim)
        a = b


def _write_ids(path: Path, index_parts: list[np.ndarray], id_parts: list[pa.ChunkedArray]) -> None:
    """The ids in row order, one a line (a null id: an empty line)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    order = np.argsort(np.concatenate(index_parts), kind="stable")
    ids = pa.chunked_array([c for part in id_parts for c in part.chunks], pa.string()).take(pa.array(order))
    ids = pc.fill_null(ids, "")
    with open(path, "w", encoding="utf-8") as fh:
        for start in range(0, len(ids), 65536):
            fh.write("".join(v + "\n" for v in ids.slice(start, 65536).to_pylist()))


def shard_hashes(plan: JobPlan, target: Path | None = None) -> np.ndarray:
    """Every row's text hash (hfenc.io.hashes) from the shards, in row order: into `target` (an
    .npy, OUT.sha256.npy) or in memory."""
    import pyarrow.parquet as pq
    from numpy.lib.format import open_memmap

    hashes = open_memmap(target, mode="w+", dtype=np.uint8, shape=(plan.rows, WIDTH)) if target is not None else \
        np.empty((plan.rows, WIDTH), np.uint8)
    for path in sorted(plan.out.shards.glob("*.parquet")):
        if not path.name.startswith("_"):  # not _docs.parquet
            table = pq.read_table(path, columns=["row", "text_sha256"])
            hashes[table.column("row").to_numpy()] = hex_hashes(table.column("text_sha256").combine_chunks())
    if target is not None:
        hashes.flush()
        with open(target, "rb+") as fh:
            os.fsync(fh.fileno())
    return hashes


def reuse_record(plan: JobPlan, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The sidecar's `reuse` of a --ray job: the replicas counted what they reused, shard by
    shard; OLD's rows that no new row has are found from the shards' hashes."""
    assert plan.reuse is not None
    plan.reuse.reused = sum(int(s.get("reused", 0)) for s in shards)
    plan.reuse.dropped = plan.reuse.old.dropped(shard_hashes(plan))
    return plan.reuse.record(plan.rows)


# ---- after a crash ------------------------------------------------------------------------------

def finish_interrupted(out: RayOutput, publishing: dict[str, Any]) -> tuple[dict[str, Any], Path, list[str]]:
    """--resume after a crash during publication: carry out the rest of it. (the sidecar or
    manifest, its path, the warnings for what was left alone)."""
    if out.assembled:
        remove_path(out.paths.partial)
        return finish_publication(out.paths, publishing), out.paths.sidecar, []
    left = complete_dataset(out.paths, publishing)
    sidecar = out.path / MANIFEST
    return read_sidecar(sidecar) or {}, sidecar, left
