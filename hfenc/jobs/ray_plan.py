"""Planning a --ray job, before anything is embedded: how many replicas and what each gets, the
input scanned and the model probed (at the same time), and what the job records and stores.

The scan tasks (one per file) count and hash the records, so every record has its global row
before the pipeline starts (Ray Data keeps no order by default). The probe loads the model as a
replica loads it, so the sidecar's settings, width and hashes, and any bad option that needs the
model, are known first; `--dtype auto` is decided once, there, and handed to every replica (nodes
with and without native bf16 would otherwise mix dtypes in one output). On one machine with CPU
replicas the driver loads the model itself instead of a probe task (a fresh process importing
torch costs seconds), and keeps it for --quantize's calibration sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hfenc.errors import ConfigError
from hfenc.io.inputs import InputSpec
from hfenc.io.quantize import Quantization
from hfenc.jobs.local import JobOptions, RunTotals, input_metadata, job_fingerprint, job_sidecar
from hfenc.jobs.ray_chunks import RayChunks, columns as chunk_columns
from hfenc.jobs.reuse import Reuse
from hfenc.jobs.ray_inputs import ScannedInput
from hfenc.jobs.ray_output import DATASET_FORMAT, ENGINE, RayOutput
from hfenc.jobs.ray_session import RayOptions, get, ray_modules

if TYPE_CHECKING:
    from hfenc.compute.embedder import Embedder
    from hfenc.jobs.ray_tasks import InputFile
    from hfenc.model.spec import ModelSpec

IO_CPUS = 0.25  # each scan / read / write task; the actors get the rest (STYLE.md's Ray pitfall)


# ---- replicas -----------------------------------------------------------------------------------

def cpu_workers(cpus: float) -> int:
    """CPU replicas when none are asked for: one per CPU, each with one torch thread, up to 8
    (each holds a copy of the model). On 2 cores, 2 workers x 1 thread embedded 1.3x as fast as
    the single-process path, 1 worker x 2 threads 0.6x: its two threads share the cores with
    Ray's read and write tasks and stall each other (benchmarks/README.md)."""
    return max(1, min(8, int(cpus)))


@dataclass(frozen=True)
class Replicas:
    """What the cluster can give: GPU replicas or CPU ones, and the resources of each."""

    gpu: bool
    workers: int
    cpus_per_worker: float
    threads: int | None
    device: str

    @property
    def gpu_args(self) -> dict[str, int]:
        return {"num_gpus": 1} if self.gpu else {}


def plan_replicas(options: RayOptions, device: str) -> Replicas:
    resources = ray_modules().ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    if device.startswith("cuda") and gpus == 0:
        raise ConfigError(f"--device {device}: the Ray cluster has no GPU", hint="use --device cpu (or auto)")
    if options.workers is not None and options.workers < 1:
        raise ConfigError(f"--workers must be a positive number, got {options.workers}")
    if gpus and (device == "auto" or device.startswith("cuda")):
        workers = options.workers or gpus
        if workers > gpus:
            raise ConfigError(f"--workers {workers}: the cluster has {gpus} GPU(s), and a replica takes one",
                              hint=f"pass --workers {gpus} or fewer, or --device cpu")
        per = max(1.0, min(4.0, (cpus - 1) / workers))  # tokenization and batch assembly on the CPU
        return Replicas(True, workers, per, None, "cuda")  # Ray gives each actor its GPU as cuda:0
    workers = options.workers or cpu_workers(cpus)
    per = max(IO_CPUS, (cpus - 2 * IO_CPUS) / workers)
    return Replicas(False, workers, round(per, 2), max(1, int(cpus // workers)), "cpu" if device == "auto" else device)


def _here(options: RayOptions, replicas: Replicas) -> bool:
    """True when the cluster is this one machine (a local runtime) and the workers use its CPU:
    then the driver sees what a worker sees, and may load the model itself."""
    ray = ray_modules().ray
    if replicas.gpu or options.address is not None or ray.util.client.ray.is_connected():
        return False
    return len([n for n in ray.nodes() if n.get("Alive")]) == 1


# ---- the model ----------------------------------------------------------------------------------

def model_name(model: str | ModelSpec) -> tuple[str, str]:
    """(what workers load, what the sidecar says): a local folder travels as an absolute path."""
    name = model if isinstance(model, str) else model.name
    resolved = getattr(model, "resolved", None)
    if resolved is not None and resolved.source == "local":
        return str(Path(resolved.path).resolve()), name
    if isinstance(model, str) and Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().resolve()), name
    return name, name


def worker_options(options: dict[str, Any], replicas: Replicas) -> dict[str, Any]:
    """Embedder's options for a replica: its device, the CPUs Ray gives it (not the whole
    machine's), a projection file by absolute path."""
    chosen = {**options, "device": replicas.device}
    if chosen.get("threads") is None and replicas.threads is not None:
        chosen["threads"] = replicas.threads
    if chosen.get("proj_weights") is not None:
        chosen["proj_weights"] = str(Path(chosen["proj_weights"]).resolve())
    return chosen


@dataclass(frozen=True)
class ModelPlan:
    """The model as every replica loads it, and what the probe learnt of it."""

    load_name: str  # what replicas load (a local folder: its absolute path)
    options: dict[str, Any]  # Embedder's options, the same for every replica (dtype settled)
    describe: dict[str, Any]  # the sidecar's model part, named as the user named the model
    dim: int
    notes: tuple[str, ...]
    max_length: int

    @property
    def sparse(self) -> bool:
        """A sparse (SPLADE) model: rows of `dim` vocabulary entries, SparseRows (Embedder.describe()
        has its "sparse" object)."""
        return self.describe.get("sparse") is not None


def scan_and_probe(spec: InputSpec, files: list[InputFile], want_lines: bool, load_name: str,
                   options: dict[str, Any], replicas: Replicas, cluster: RayOptions, want_tokenizer: bool = False
                   ) -> tuple[ScannedInput, dict[str, Any], Embedder | None]:
    """Scan every file and load the model once, at the same time: (the scanned input, the
    probe's description, the driver's own model when it loaded one instead of a probe task).
    `want_tokenizer`: the description holds the model's tokenizer too (a chunked job's)."""
    r = ray_modules()
    ray, tasks = r.ray, r.tasks
    scan = ray.remote(tasks.scan_file).options(num_cpus=IO_CPUS)
    scan_refs = [scan.remote(spec, f, len(files) > 1, want_lines) for f in files]
    local = None
    if _here(cluster, replicas):
        from hfenc.compute.embedder import Embedder

        local = Embedder(load_name, **{**options, "threads": None})  # (torch threads are process-wide)
        probed = tasks.described(local, want_tokenizer)
        probed["describe"]["threads"] = options.get("threads")
    else:  # max_calls=1: the probe's process exits after it, freeing the memory (and GPU) it held
        probe = ray.remote(max_calls=1)(tasks.probe).options(num_cpus=replicas.cpus_per_worker, **replicas.gpu_args)
        probe_ref = probe.remote(load_name, options, want_tokenizer)
    scans = get(scan_refs)
    if local is None:
        probed = get(probe_ref)
    # the probe's own thread policy says nothing of the workers' (threads_per_worker None: each
    # worker follows the cores free where it runs)
    probed["describe"]["thread_policy"] = {"mode": "ray workers", "threads_per_worker": options.get("threads")}
    return ScannedInput.of(spec, files, scans), probed, local


def settle_model(load_name: str, shown_name: str, options: dict[str, Any], probed: dict[str, Any]) -> ModelPlan:
    """Every replica computes as the probe settled: its dtype (`auto` decided once, here), and
    OpenVINO int8's group size (the same groups everywhere)."""
    settled = {**options, "dtype": probed["describe"]["dtype"]}
    if probed["describe"].get("int8_group_size") is not None:
        settled["int8_group_size"] = probed["describe"]["int8_group_size"]
    describe = {**probed["describe"], "model": shown_name}
    describe["versions"] = {**describe.get("versions", {}), "ray": ray_modules().ray.__version__}
    return ModelPlan(load_name, settled, describe, int(probed["dim"]), tuple(probed["notes"]),
                     int(probed["max_length"]))


# ---- what the job records -----------------------------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    """A job settled up to its claim: the input scanned, the output chosen, the replicas planned,
    the model probed. Its fingerprint is what a resumed run must match."""

    job: JobOptions
    input: ScannedInput
    out: RayOutput
    replicas: Replicas
    model: ModelPlan
    cluster: RayOptions
    chunks: RayChunks | None  # a chunked job's plan (hfenc.jobs.ray_chunks): a row per chunk
    reuse: Reuse | None  # --reuse OLD (hfenc.jobs.reuse), its fingerprint checked

    @property
    def rows(self) -> int:
        """The output's rows: the input's records, or a chunked job's chunks."""
        return self.chunks.rows if self.chunks is not None else self.input.rows

    @property
    def documents(self) -> int | None:
        return self.chunks.docs if self.chunks is not None else None

    @property
    def with_id(self) -> bool:
        return self.input.spec.id_field is not None

    @property
    def keep_text(self) -> bool:
        return bool(self.job.keep_text)

    def fingerprint(self) -> dict[str, Any]:
        from hfenc.compute.embedder import EmbedSettings
        from hfenc.io.writers import fingerprint_of

        job, inp, describe = self.job, self.input, self.model.describe
        settings = {f.name: describe.get(f.name) for f in fields(EmbedSettings)}
        return job_fingerprint(
            job, inp.spec, inp.format, inp.hashed()[0], self.rows, settings, describe.get("weights_sha256"),
            describe.get("config_sha256"), engine=ENGINE, output_kind=self.out.kind, keep_text=self.keep_text,
            files=[[f.name, s["sha256"], s["bytes"], s["rows"]] for f, s in zip(inp.files, inp.scans)],
            **fingerprint_of("npy", job.quantize, job.ranges, self.keep_text),  # its quantization keys
            **(self.chunks.fingerprint() if self.chunks is not None else {}))

    def input_meta(self) -> dict[str, Any]:
        inp = self.input
        sha, nbytes = inp.hashed()
        files = [(f.name, s["rows"]) for f, s in zip(inp.files, inp.scans)] if inp.several else None
        return input_metadata(self.job, inp.spec, inp.format, sha, nbytes, files)

    def ray_meta(self) -> dict[str, Any]:
        rep = self.replicas
        return {"version": ray_modules().ray.__version__, "address": self.cluster.address or "local",
                "workers": rep.workers, "device": "gpu" if rep.gpu else "cpu", "cpus_per_worker": rep.cpus_per_worker,
                "gpus_per_worker": 1 if rep.gpu else 0, "threads_per_worker": self.model.options.get("threads")}


def quantization(job: JobOptions, dim: int, saved: dict[str, Any],
                 sample: Callable[[], tuple[np.ndarray, dict[str, Any]]], reuse: Reuse | None = None
                 ) -> Quantization | None:
    """--quantize, as the local path does it (hfenc.io.writers.open_output): binary/ubinary need
    nothing; int8/uint8 ranges are the interrupted run's (the very arrays its shards used), or
    --ranges FILE, or with --reuse OLD's, or a sample of the input embedded once before the job."""
    if job.quantize is None:
        return None
    from hfenc.io.quantize import SCALAR
    from hfenc.io.writers import scalar_ranges

    if job.quantize not in SCALAR:
        return Quantization(job.quantize, dim)
    given = reuse.ranges(job.quantize) if reuse is not None else None
    if saved.get("quantization_ranges") is not None:  # from the resume state: validated as a record
        found = Quantization.from_record({"precision": job.quantize, "dim": dim, "ranges": saved["quantization_ranges"],
                                          "calibration": saved.get("quantization_calibration")}, "the resume state")
        if reuse is not None:
            reuse.check_ranges(job.quantize, found.ranges)
        return found
    return Quantization(job.quantize, dim, *(given or scalar_ranges(dim, job.ranges, sample)))


def sampler(prepared: Prepared, local: Embedder | None) -> Callable[[], tuple[np.ndarray, dict[str, Any]]]:
    """The calibration sample, embedded by the model the driver holds, or by a task of its own."""
    r = ray_modules()
    inp, model, replicas = prepared.input, prepared.model, prepared.replicas
    rows = prepared.rows  # the output's rows, as the local path passes them (a chunked job: its chunks)
    plan = str(prepared.chunks.plan.path.resolve()) if prepared.chunks is not None else None  # chunks are sampled

    def sample() -> tuple[np.ndarray, dict[str, Any]]:
        if local is not None:
            return r.tasks.calibrate(local, inp.spec, list(inp.files), rows, plan)
        calibrate = r.ray.remote(max_calls=1)(r.tasks.calibrate_with).options(
            num_cpus=replicas.cpus_per_worker, **replicas.gpu_args)
        return get(calibrate.remote(model.load_name, model.options, inp.spec, list(inp.files), rows, plan))

    return sample


def quantization_stats(quantization: Quantization | None) -> dict[str, Any]:
    if quantization is None or quantization.ranges is None:
        return {}
    return {"quantization_ranges": quantization.ranges.tolist(), "quantization_calibration": quantization.calibration}


@dataclass(frozen=True)
class Layout:
    """What the job stores and records, settled before anything is embedded: the float width,
    the quantization (None: floats of `float_dtype`), the resume fingerprint and state stats, and
    the sidecar's parts (both engines' shape: hfenc.jobs.local.job_sidecar)."""

    dim: int
    quantization: Quantization | None
    float_dtype: str
    chunk_size: int
    fingerprint: dict[str, Any]
    stats: dict[str, Any]
    extra: dict[str, Any]
    input_meta: dict[str, Any]
    describe: dict[str, Any]
    sparse: bool = False  # rows of `dim` vocabulary entries, stored as list<struct<index, value>>

    @property
    def dtype(self) -> np.dtype:
        return self.quantization.dtype if self.quantization is not None else np.dtype(self.float_dtype)

    @property
    def width(self) -> int:
        return self.quantization.width if self.quantization is not None else self.dim

    def sidecar(self, out: RayOutput, totals: RunTotals | None = None) -> dict[str, Any]:
        return job_sidecar(out.path, self.fingerprint["rows"], self.dim, str(self.dtype), self.input_meta,
                           self.describe, self.chunk_size, self.extra, totals)


@dataclass(frozen=True)
class JobPlan(Prepared):
    """A prepared job with its layout: everything the pipeline and the publication need."""

    layout: Layout

    @classmethod
    def of(cls, prepared: Prepared, fingerprint: dict[str, Any], stats: dict[str, Any],
           quantization: Quantization | None) -> JobPlan:
        job, out, chunks = prepared.job, prepared.out, prepared.chunks
        columns = ["row", *(["id"] if prepared.with_id else []), *(["text"] if prepared.keep_text else []),
                   "tokens", "truncated", "text_sha256", "embedding"]
        if chunks is not None:
            columns = chunk_columns(prepared.with_id, prepared.keep_text)
        extra = {
            "out_format": out.kind if out.assembled else DATASET_FORMAT,
            "quantization": None if quantization is None else quantization.record(),
            **({"columns": columns} if out.kind == "dataset" else {}),
            "engine": ENGINE, "workers": prepared.replicas.workers, "ray": prepared.ray_meta(),
            **(chunks.fingerprint() if chunks is not None else {}),
        }
        layout = Layout(prepared.model.dim, quantization, job.out_dtype, job.chunk_size, fingerprint, stats, extra,
                        prepared.input_meta(), prepared.model.describe, prepared.model.sparse)
        return cls(**{f.name: getattr(prepared, f.name) for f in fields(Prepared)}, layout=layout)
