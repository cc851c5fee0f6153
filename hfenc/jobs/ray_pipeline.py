"""The Ray Data pipeline of a --ray job: read tasks -> map_batches(EmbedWorker) -> ShardSink,
checkpointed by `row`, and the driver's view of it while it runs.

Reading, tokenization, inference and writing overlap: Ray Data streams blocks between the stages,
and an actor tokenizes one batch while another holds its model. Resume is Ray Data's job
checkpointing keyed by `row`: a write task records the rows of its shard as pending before writing
it and commits them after; a resumed run deletes shards whose rows were never committed and
filters the committed rows out of the input. Actors are restarted by Ray (max_restarts=-1) and a
batch lost with its actor runs again; the publication's exactly-once check proves that nothing
was lost or doubled. Progress is read from the committed shards' descriptions, never the shards.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from hfenc.compute.engine import Progress
from hfenc.io.outputs import write_state
from hfenc.jobs.ray_output import committed
from hfenc.jobs.ray_plan import IO_CPUS, JobPlan
from hfenc.jobs.ray_session import debug, hfenc_error, ray_modules

if TYPE_CHECKING:
    from ray.data import Dataset

KILL_ENV = "HFENC_RAY_KILL_WORKER"  # fault injection (tests): K:MARKER, see ray_tasks.EmbedWorker._fault
DELAY_ENV = "HFENC_RAY_BATCH_DELAY"  # fault injection (tests): seconds each batch takes longer


def faults_from_env() -> dict[str, Any]:
    """The fault injection the tests ask for, read on the driver and handed to each actor (so it
    works on a runtime started before the variables were set)."""
    faults: dict[str, Any] = {}
    if os.environ.get(KILL_ENV):
        k, _, marker = os.environ[KILL_ENV].partition(":")
        faults["kill"] = (int(k), marker)
    if os.environ.get(DELAY_ENV):
        faults["delay"] = float(os.environ[DELAY_ENV])
    return faults


def run_pipeline(plan: JobPlan, resumed: int, progress: Callable[[Progress], None] | None) -> None:
    """Embed every row not yet committed into shards under the partial output; a task's
    HfencError is raised as itself."""
    from hfenc.io.parquet import schema as parquet_schema

    tasks = ray_modules().tasks
    layout, out, chunks = plan.layout, plan.out, plan.chunks
    schema = parquet_schema(layout.width, layout.dtype, plan.with_id, plan.keep_text, provenance=chunks is not None,
                            sparse=layout.sparse)  # a sparse model's rows: list<struct<index, value>>
    with _data_context(plan):
        ds = _dataset(plan)
        sink = tasks.ShardSink(str(out.shards.resolve()), schema, layout.sidecar(out), min_rows=plan.job.chunk_size,
                               doc_vectors=_doc_vectors(plan))
        with Tracker(plan, resumed, progress):
            try:
                ds.write_datasink(sink, ray_remote_args={"num_cpus": IO_CPUS})
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                found = hfenc_error(exc)
                if found is not None:
                    raise found from None
                raise


@contextmanager
def _data_context(plan: JobPlan) -> Iterator[None]:
    """Ray Data's settings for this job, restored after it (the caller may run other jobs)."""
    r = ray_modules()
    ctx = r.data.DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in ("checkpoint_config", "enable_progress_bars", "print_on_execution_start",
                                          "target_max_block_size", "raise_original_map_exception")}
    ctx.checkpoint_config = r.CheckpointConfig(id_column="row", checkpoint_path=str(plan.out.checkpoint.resolve()),
                                               delete_checkpoint_on_success=False)
    ctx.enable_progress_bars = debug()
    ctx.print_on_execution_start = debug()
    ctx.raise_original_map_exception = True  # a refusal in a worker arrives as itself (one line), not wrapped
    # Blocks of about one chunk: a read task merges what it yields up to this size (128 MiB by
    # default, a million short texts: one block, one actor busy). Bigger map outputs are cut to
    # it too; the sink gathers them back into shards of at least a chunk.
    inp = plan.input
    text_bytes = sum(s["text_bytes"] for s in inp.scans) / max(1, plan.rows)  # a row's: a record's, or a chunk's
    row_bytes = text_bytes + 16 + 16 * plan.with_id + (48 if plan.chunks is not None else 0)  # + provenance
    ctx.target_max_block_size = int(min(128 << 20, max(4096, plan.job.chunk_size * row_bytes)))
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)


def _dataset(plan: JobPlan) -> Dataset:
    """hfenc's readers (one task per file) -> one Embedder per actor, batch by batch."""
    from hfenc.io.parquet import PROVENANCE

    r = ray_modules()
    tasks, data = r.tasks, r.data
    job, inp, replicas, chunks = plan.job, plan.input, plan.replicas, plan.chunks
    source = tasks.InputSource(inp.spec, list(inp.files), list(inp.starts), inp.for_readers(), job.chunk_size,
                               plan.with_id, chunks.for_readers() if chunks is not None else None)
    # a chunk's id (doc_id: its record's) and provenance go through the replicas as they came
    carry = (*(["doc_id"] if plan.with_id else []), *PROVENANCE) if chunks is not None else ()
    ds = data.read_datasource(source, override_num_blocks=max(1, len(inp.files)), num_cpus=IO_CPUS)
    return ds.map_batches(
        tasks.EmbedWorker, batch_size=job.chunk_size, batch_format="pyarrow", zero_copy_batch=True,
        fn_constructor_kwargs={"model": plan.model.load_name, "options": plan.model.options, "out_dtype": job.out_dtype,
                               "quantization": plan.layout.extra["quantization"],
                               "keep_text": plan.keep_text, "on_overflow": job.on_overflow,
                               "faults": faults_from_env(), "with_id": plan.with_id and chunks is None,
                               "carry": carry, "doc_vectors": _doc_vectors(plan),
                               "reuse": plan.reuse.old if plan.reuse is not None else None},
        compute=data.ActorPoolStrategy(size=replicas.workers, max_concurrent_calls_per_actor=2 if replicas.gpu else 1),
        num_cpus=replicas.cpus_per_worker, num_gpus=1 if replicas.gpu else None,
    )


def _doc_vectors(plan: JobPlan) -> bool:
    return plan.chunks is not None and plan.chunks.options.doc_vectors


class Tracker:
    """Progress while the pipeline runs, read from the committed shards every half second (and
    written to the resume state, so `hfenc clean` can say how much an interruption kept)."""

    def __init__(self, plan: JobPlan, resumed: int, progress: Callable[[Progress], None] | None) -> None:
        self.plan, self.resumed, self.progress = plan, resumed, progress
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hfenc-ray-progress", daemon=True)
        self.t0 = time.perf_counter()
        self.saved_rows = resumed

    def __enter__(self) -> Tracker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        layout, out = self.plan.layout, self.plan.out
        while not self.stop.wait(0.5):
            try:
                done = committed(out)
                rows = sum(m["rows"] for m in done.values())
                tokens = sum(m["tokens"] for m in done.values())
                if rows != self.saved_rows:
                    write_state(out.paths, layout.fingerprint, rows, layout.stats)
                    self.saved_rows = rows
                if self.progress is not None:
                    self.progress(Progress(rows, self.plan.rows, tokens, time.perf_counter() - self.t0,
                                           self.resumed))
            except Exception:  # progress must never break the job
                if debug():
                    raise
