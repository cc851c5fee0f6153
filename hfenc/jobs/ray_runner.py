"""`hfenc embed INPUT --ray`: the embedding job of hfenc.jobs.local, run on Ray model replicas.

A job, in the order it runs (issue 13), and the module that does each part:

  inputs expanded, output checked   ray_inputs, ray_output: before Ray starts, so a mistake fails
                                    in a second
  scan tasks + a probe (ray_plan)   one scan per file: records validated and counted, bytes
                                    hashed (hfenc's own parser), so every record has its global
                                    row; the model loaded as a worker loads it: the settings,
                                    width and hashes the sidecar records
  a chunked job's plan (ray_chunks) --chunk-tokens: one task per file cuts its records with the
                                    probe's tokenizer, so each file knows its first chunk row; the
                                    read tasks then hand out a row per chunk, with its provenance
  the claim (ray_output)            `.OUT.resume.json` claims `.OUT.partial/`, or --resume picks
                                    up the interrupted run's (refused if a row would change)
  the pipeline (ray_pipeline)       read tasks -> map_batches(EmbedWorker) -> ShardSink, Parquet
                                    shards with hfenc's schema, checkpointed by `row`
  publication (ray_publish)         every row checked present exactly once; a manifest
                                    (_hfenc_manifest.json) written last and the shards moved into
                                    place, or assembled into one .npy (+ ids) in input order (a
                                    sparse model's: one .npz, SciPy CSR)

ray_session holds the Ray runtime (RayOptions, started and stopped here unless the caller had
one) and ray_tasks what runs inside Ray; tasks import none of the runner's modules, so a worker
that unpickles one imports only what it runs.

Readers: hfenc's, not ray.data.read_text/read_json/read_csv. Row i must be record i of the
single-process run, and Ray's readers disagree with it: read_text splits lines with
str.splitlines (a form feed or U+2028 inside a text makes two rows), read_csv infers types (an
id "007" becomes 7) and refuses quoted fields that span lines, read_json infers a schema per
block; none knows a record's position in its file. So each read task runs hfenc's parser over
one file (CSV records span lines and gzip is one stream, so a file is not split: one task per
file is the unit of read parallelism). Ray supplies the rest: scheduling, streaming, retries,
any pyarrow filesystem (a remote file is copied to the worker, then parsed).

Output is all or nothing: only a finished, verified job reaches OUT, and --force replaces only
what hfenc wrote (hfenc.io.outputs.Listing), never a user's file inside an output directory.
Rows are done in no particular order, so "resumed from" is a count of rows, not a prefix.

After Ctrl-C, Ray Data drops its actors without killing them: they finish the batches already
sent to them, then exit, though in the tests one sometimes never did (a runtime hfenc started
is shut down at once instead). A caller that owns the runtime should restart it before resuming.

Outputs are local paths (on a cluster: a shared mount every node sees, such as NFS); inputs may
be on any filesystem pyarrow can open.

Sparse (SPLADE) models (issue 25) follow the local path's rules: a replica's rows are SparseRows
(its engine fills a SparseBlock per batch), a shard's `embedding` column is the local Parquet
output's list<struct<index: int32, value: float32>>, and the sidecar's "dim" is the vocabulary's
size. Outputs: a shard directory, or one .npz (the shards' rows gathered in input order into the
local path's CSR file); a .npy, --quantize, --out-dtype float16, --reuse, --doc-vectors,
--late-chunking and the dense-only model options (--dim, --proj, ...) are refused in one line,
before Ray starts when the model's files say it is sparse (JobOptions.sparse), else once the probe
has loaded it, before anything is claimed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfenc.errors import ConfigError, InputChanged, Interrupted, OverflowRefused
from hfenc.io.claim import Claim
from hfenc.io.inputs import InputSpec
from hfenc.io.outputs import sealed, write_json_atomic, write_state
from hfenc.jobs.local import JobOptions, JobResult, RunTotals, check_job, check_sparse_job, sigterm_as_interrupt
from hfenc.jobs.ray_chunks import check_chunking, plan_chunks, plan_path
from hfenc.jobs.ray_inputs import job_inputs
from hfenc.jobs.ray_output import (ENGINE, MANIFEST, RayOutput, abandon, check_output, choose_output, reserve_partial,
                                   committed_rows, verify)
from hfenc.jobs.ray_pipeline import run_pipeline
from hfenc.jobs.ray_plan import (JobPlan, Prepared, model_name, plan_replicas, quantization, quantization_stats,
                                 sampler, scan_and_probe, settle_model, worker_options)
from hfenc.jobs.ray_publish import assemble, dataset_docs, finish_interrupted, publish_dataset, reuse_record
from hfenc.jobs.ray_session import RayOptions, get, quiet, ray_modules, session
from hfenc.jobs.reuse import open_reuse

if TYPE_CHECKING:
    from hfenc.compute.embedder import Embedder
    from hfenc.compute.engine import Progress
    from hfenc.jobs.ray_tasks import InputFile
    from hfenc.model.spec import ModelSpec

__all__ = ["MANIFEST", "RayOptions", "embed_ray", "ray_modules"]


def embed_ray(job: JobOptions, model: str | ModelSpec, options: dict[str, Any], cluster: RayOptions | None = None,
              progress: Callable[[Progress], None] | None = None) -> JobResult:
    """Run the embedding job `job` on Ray.

    `model`: a name, a folder or a resolved hfenc.model.spec.ModelSpec; `options`: Embedder's options
    (pooler, dim, prompt, device, dtype, ...), as for the local path."""
    t0 = time.perf_counter()
    cluster = cluster or RayOptions()
    ray_modules()  # no Ray: one line naming the extra, before anything else
    check_job(job)
    check_chunking(job)
    from hfenc.io.writers import check_quantize

    check_quantize(job.quantize, job.ranges, job.out_dtype)
    if (cluster.address or "").startswith("ray://") and not cluster.on_cluster:
        return _through_client(job, model, options, cluster)
    with sigterm_as_interrupt(), quiet(), job_inputs(job) as (spec, files):
        out = choose_output(job, files)
        check_sparse_output(job, out, job.sparse, options)  # what the model's files say: before Ray starts
        with Claim(out.path):  # the output is this job's alone (a local job's too) until it returns
            check_output(out, job)
            try:
                with session(cluster):
                    prepared, local = _prepare(job, spec, files, out, model, options, cluster)
                    planned = _plan(prepared, local, t0)
                    del local  # the replicas hold their own model: the driver's copy goes before they start
                    if isinstance(planned, JobResult):  # the interrupted run had only its publication left
                        return planned
                    try:
                        return _embed_and_publish(planned, progress, t0)
                    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: what is committed stays, for --resume
                        raise _Stopped(out, planned.rows, getattr(exc, "signum", signal.SIGINT)) from None
            except _Stopped as stopped:
                raise stopped.interrupted() from None
            finally:  # a chunked job's plan is made again by a resumed run (as the local path's)
                plan_path(out.paths).unlink(missing_ok=True)


def check_sparse_output(job: JobOptions, out: RayOutput, sparse: bool | None,
                        options: dict[str, Any] | None = None) -> None:
    """A sparse model's job refused where the local path refuses it (hfenc.io.writers.check_sparse,
    hfenc.jobs.local.check_sparse_job), and a dense model's .npz; `options`: Embedder's, whose
    dense-only ones (--dim, --proj, ...) a sparse model refuses (checked here before the replicas
    load it). `sparse` None: not known until the probe has loaded the model."""
    from hfenc.io.writers import check_sparse

    check_sparse(out.format, sparse, job.quantize, job.out_dtype)
    if sparse:
        check_sparse_job(job)
        if options is not None:
            from hfenc.compute.embedder import EmbedOptions
            from hfenc.compute.sparse import refuse_dense_options

            refuse_dense_options(EmbedOptions(**options))


def _through_client(job: JobOptions, model: str | ModelSpec, options: dict[str, Any],
                    cluster: RayOptions) -> JobResult:
    """A ray:// address (Ray Client): the driver's part runs as a task on the cluster. Ray Data
    cannot run a pipeline from a Ray Client (Ray 2.60 fails in write_datasink: the client has no
    core worker), and the driver's work (scans, checks, publication) belongs beside the data
    anyway. So the node Ray picks for that task must see the inputs, the output and a local model
    folder at the paths given (a shared mount); relative paths are made absolute here first.
    Progress is not reported back; Ctrl-C cancels the task, whose saved shards stay for --resume."""
    if job.texts or "-" in job.input.paths:
        raise ConfigError("--text and standard input cannot go through Ray Client (ray://): the job runs on the cluster",
                          hint="write the texts to a file on storage the cluster reads")
    ray = ray_modules().ray

    def absolute(p: str | Path | None) -> str | Path | None:  # of the type given; a URI is left alone
        return p if p is None or "://" in str(p) else type(p)(os.path.abspath(p))

    spec = replace(job.input, path=absolute(job.input.path), more=tuple(absolute(p) for p in job.input.more))
    job = replace(job, input=spec, output=absolute(job.output), ranges=absolute(job.ranges))
    load_name, _ = model_name(model)
    options = {**options, **({"proj_weights": absolute(options["proj_weights"])} if options.get("proj_weights") else {})}
    inside = replace(cluster, on_cluster=True)
    with session(cluster):
        driver = ray.remote(num_cpus=0, max_retries=0)(embed_ray)  # this very function, on a node
        ref = driver.remote(job, load_name, options, inside)
        try:
            return get(ref)
        except KeyboardInterrupt:
            ray.cancel(ref)
            raise Interrupted("the job on the cluster was stopped; the shards it saved stay for --resume") from None


def _prepare(job: JobOptions, spec: InputSpec, files: list[InputFile], out: RayOutput, model: str | ModelSpec,
             options: dict[str, Any], cluster: RayOptions) -> tuple[Prepared, Embedder | None]:
    """The replicas planned, the input scanned and the model probed; with the driver's own
    model when it loaded one instead of a probe task (the caller drops it before the pipeline)."""
    from hfenc.compute.embedder import EmbedOptions

    asked = EmbedOptions(**{**options, "device": options.get("device") or "auto"})
    replicas = plan_replicas(cluster, asked.requested_device())  # OpenVINO's backend: CPU replicas
    load_name, shown_name = model_name(model)
    chosen = worker_options(options, replicas)
    want_lines = spec.skip_blank and out.assembled
    chunking = job.chunking
    scanned, probed, local = scan_and_probe(spec, files, want_lines, load_name, chosen, replicas, cluster,
                                            want_tokenizer=chunking is not None)
    model_plan = settle_model(load_name, shown_name, chosen, probed)
    check_sparse_output(job, out, model_plan.sparse)  # the loaded model says (a hub model's files could not)
    chunks = None if chunking is None else \
        plan_chunks(chunking, local.tokenizer if local is not None else probed["tokenizer"], scanned, out.paths)
    reuse = open_reuse(job.reuse, out.paths, job.resume, model_plan.describe, job.out_dtype, job.quantize)
    return Prepared(job, scanned, out, replicas, model_plan, cluster, chunks, reuse), local


def _plan(prepared: Prepared, local: Embedder | None, t0: float) -> JobPlan | JobResult:
    """Claim the output (or pick up the interrupted run's) and settle the quantization: the plan
    of the pipeline, or the result when an interrupted run had only its publication left."""
    job, out = prepared.job, prepared.out
    fingerprint = prepared.fingerprint()
    found = reserve_partial(out, job, fingerprint)
    if found.publishing:
        return _finish_interrupted(prepared, found.publishing, t0)
    try:
        quant = quantization(job, prepared.model.dim, found.stats, sampler(prepared, local), prepared.reuse)
    except BaseException:
        if not job.resume:
            abandon(out.paths)  # nothing was embedded yet: leave nothing behind
        raise
    stats = {"engine": ENGINE, **quantization_stats(quant)}
    write_state(out.paths, fingerprint, committed_rows(out) if job.resume else 0, stats)
    plan = JobPlan.of(prepared, fingerprint, stats, quant)
    out.meta.mkdir(parents=True, exist_ok=True)
    return plan


def _finish_interrupted(prepared: Prepared, publishing: dict[str, Any], t0: float) -> JobResult:
    """--resume after a crash during publication: carry out the rest of it."""
    out, inp, rows = prepared.out, prepared.input, prepared.rows
    metadata, sidecar, left = finish_interrupted(out, publishing)
    return JobResult(out.path, sidecar, rows, prepared.model.dim, time.perf_counter() - t0,
                     metadata.get("truncated_rows", 0), inp.blank, metadata.get("tokens", 0), rows, metadata,
                     warnings=["the interrupted run had finished; its output is now published", *left],
                     documents=prepared.documents)


class _Stopped(Exception):
    """A job stopped by a signal, on its way out of the Ray session: the rows saved are counted
    once the session is closed (write tasks in flight at Ctrl-C may still commit a shard)."""

    def __init__(self, out: RayOutput, rows: int, signum: int) -> None:
        super().__init__("stopped")
        self.out, self.rows, self.signum = out, rows, signum

    def interrupted(self) -> Interrupted:
        out, rows = self.out, self.rows
        done = rows if out.done.exists() or not out.paths.partial.exists() else committed_rows(out)
        return Interrupted(f"{done:,} of {rows:,} rows are saved in {out.paths.partial.name}", rows_done=done,
                           signum=self.signum)


def _embed_and_publish(plan: JobPlan, progress: Callable[[Progress], None] | None, t0: float) -> JobResult:
    """The pipeline (unless an earlier run finished it), every row verified, then publication."""
    out, inp, layout, rows = plan.out, plan.input, plan.layout, plan.rows
    t_embed = time.perf_counter()
    if out.done.exists():  # an earlier run embedded every row; only its publication is left
        manifest = json.loads(out.done.read_text(encoding="utf-8"))
        shards, resumed, embed_seconds = manifest["shards"], rows, 0.0
        side = {k: manifest[k] for k in ("docs_file", "files") if k in manifest}
    else:
        resumed = committed_rows(out)
        _embed(plan, resumed, progress)
        embed_seconds = time.perf_counter() - t_embed
        shards = verify(out, rows)
        side = dataset_docs(plan, shards) if out.kind == "dataset" else {}
    tokens = sum(s["tokens"] for s in shards)
    truncated = sum(s["truncated_rows"] for s in shards)
    metadata = layout.sidecar(out, RunTotals(truncated, inp.blank, tokens, resumed, time.perf_counter() - t0,
                                             embed_seconds))
    if plan.reuse is not None:
        metadata["reuse"] = reuse_record(plan, shards)
    write_json_atomic(out.done, sealed({**metadata, **side, "shards": shards}))  # last: the Ray part is done
    if out.assembled:
        metadata, left = assemble(plan, metadata, shards)
        sidecar = out.paths.sidecar
    else:
        metadata, left = publish_dataset(plan)
        sidecar = out.path / MANIFEST
    return JobResult(out.path, sidecar, rows, layout.dim, time.perf_counter() - t0, truncated, inp.blank, tokens,
                     resumed, metadata, embed_seconds=embed_seconds, warnings=[*_warnings(plan, truncated), *left],
                     documents=plan.documents, reuse=metadata.get("reuse"))


def _embed(plan: JobPlan, resumed: int, progress: Callable[[Progress], None] | None) -> None:
    try:
        run_pipeline(plan, resumed, progress)
    except (OverflowRefused, InputChanged) as exc:  # a refusal, or rows of other bytes: nothing stays
        row = getattr(exc, "row", None)
        if row is not None and plan.chunks is not None:  # a chunk's record (read before abandon drops the plan)
            row = plan.chunks.doc_row(row)
        abandon(plan.out.paths)
        if isinstance(exc, OverflowRefused) and row is not None:  # named by its line, as the local path names it
            raise OverflowRefused(f"{plan.input.where(row)} is longer than the maximum of {plan.model.max_length} "
                                  "tokens", hint=exc.hint) from None
        raise


def _warnings(plan: JobPlan, truncated: int) -> list[str]:
    """The local path's warnings: the model's notes, the calibration's, blank and truncated rows."""
    found = list(plan.model.notes)
    if plan.layout.quantization is not None:
        from hfenc.io.writers import calibration_warnings

        found.extend(calibration_warnings(plan.layout.quantization))
    blank = plan.input.blank
    if blank and not plan.input.spec.skip_blank:
        found.append(f"{blank:,} blank record(s) were embedded as empty texts; --skip-blank drops them")
    if truncated:
        found.append(f"{truncated:,} text(s) were longer than {plan.model.max_length} tokens and truncated")
    return found
