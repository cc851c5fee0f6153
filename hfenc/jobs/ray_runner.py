"""`hfenc embed INPUT --ray`: the embedding job of hfenc.jobs.local, run on Ray model replicas.

A job, in the order it runs (issue 13):

  scan tasks, one per input file  the records validated and counted, the bytes hashed (hfenc's
                                  own parser): file k's rows start at the sum of the counts
                                  before it, so every record has its global row index before
                                  anything is embedded (Ray Data keeps no order by default)
  a probe task                    the model loaded as a worker loads it (its device, dtype):
                                  the settings, width and hashes the sidecar records, and any
                                  bad option that needs the model, before the job starts
  read tasks, one per file        blocks of {row, text[, id]}
  map_batches(EmbedWorker)        one Embedder per actor: one actor per GPU (num_gpus=1), or N
                                  CPU actors; each batch goes through Embedder.engine (length
                                  sort + token budget inside the batch), never a second loop
  write tasks (ShardSink)         Parquet shards {row[, id][, text], embedding}: the schema of
                                  hfenc.io.parquet, the sidecar under the `hfenc` key
  publication, on the driver      every row checked present exactly once; a manifest
                                  (_hfenc_manifest.json) written last and the directory renamed
                                  into place, or the shards assembled into one .npy (+ ids) in
                                  input order and published like the local path's output

Reading, tokenization, inference and writing overlap: Ray Data streams blocks between the
stages, and an actor tokenizes one batch while another holds its model.

Readers: hfenc's, not ray.data.read_text/read_json/read_csv. Row i must be record i of the
single-process run, and Ray's readers disagree with it: read_text splits lines with
str.splitlines (a form feed or U+2028 inside a text makes two rows), read_csv infers types (an
id "007" becomes 7) and refuses quoted fields that span lines, read_json infers a schema per
block; none knows a record's position in its file. So each read task runs hfenc's parser over
one file (CSV records span lines and gzip is one stream, so a file is not split: one task per
file is the unit of read parallelism). Ray supplies the rest: scheduling, streaming, retries,
any pyarrow filesystem (a remote file is copied to the worker, then parsed).

Output is all or nothing. Shards are written into the hidden `.OUT.partial/` beside the output,
claimed by `.OUT.resume.json` (the names and the state file of hfenc.io.outputs, so `hfenc clean`
finds them); only a finished, verified job reaches OUT.

Resume: Ray Data's job checkpointing keyed by `row`. A write task records the rows of its shard
as pending before writing it and commits them after; `--resume` deletes shards whose rows were
never committed and filters the committed rows out of the input. Rows are done in no particular
order, so "resumed from" is a count of rows, not a prefix.

Faults: actors are restarted by Ray (max_restarts=-1) and a batch lost with its actor is run
again; the publication's exactly-once check is what proves that nothing was lost or doubled.
After Ctrl-C, Ray Data drops its actors without killing them: they finish the batches already
sent to them, then exit, though in the tests one sometimes never did (a runtime hfenc started
is shut down at once instead). A caller that owns the runtime should restart it before resuming.

Outputs are local paths (on a cluster: a shared mount every node sees, such as NFS); inputs may
be on any filesystem pyarrow can open.
"""

from __future__ import annotations

import glob as _glob
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from hfenc.errors import (ConfigError, HfencError, InputChanged, InputError, Interrupted, OutputError, OverflowRefused,
                      ResumeError)
from hfenc.io.inputs import InputSpec, Tally, combine_hashes, spool_stdin, spool_texts
from hfenc.io.outputs import (OutputPaths, check_writable, default_output, finish_publication, fsync_dir,
                       owns, publish, remove_path, read_sidecar, read_state, write_json_atomic, write_state)

ENGINE = "ray"
MANIFEST = "_hfenc_manifest.json"
DATASET_FORMAT = "parquet-dataset"
EXTRA = "pip install 'hfenc[ray]'"
IO_CPUS = 0.25  # each scan / read / write task; the actors get the rest (STYLE.md's Ray pitfall)
KILL_ENV = "HFENC_RAY_KILL_WORKER"  # fault injection (tests): K:MARKER, see tasks.EmbedWorker._fault
DELAY_ENV = "HFENC_RAY_BATCH_DELAY"  # fault injection (tests): seconds each batch takes longer
_GLOB = "*?["


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: `address` None starts a local Ray runtime on this machine (and stops
    it after); `auto` or `ray://host:10001` joins an existing cluster. `workers`: model replicas
    (default: one per GPU; without GPUs, cpu_workers()). `num_cpus`: CPUs a local runtime may use."""

    address: str | None = None
    workers: int | None = None
    num_cpus: int | None = None
    on_cluster: bool = False  # set by hfenc: this driver runs as a task on the cluster (ray://)


@lru_cache(maxsize=1)
def _ray() -> SimpleNamespace:
    import ray
    import ray.data
    from ray.data.checkpoint import CheckpointConfig

    from hfenc.jobs import ray_tasks as tasks

    return SimpleNamespace(ray=ray, data=ray.data, CheckpointConfig=CheckpointConfig, tasks=tasks)


def ray_modules() -> SimpleNamespace:
    """Ray and the task module, or one error naming the extra that installs them."""
    try:
        return _ray()
    except ImportError:
        raise ConfigError(f"--ray needs Ray Data, which is not installed: {EXTRA}") from None


def cpu_workers(cpus: float) -> int:
    """CPU replicas when none are asked for: one per CPU, each with one torch thread, up to 8
    (each holds a copy of the model). On 2 cores, 2 workers x 1 thread embedded 1.3x as fast as
    the single-process path, 1 worker x 2 threads 0.6x: its two threads share the cores with
    Ray's read and write tasks and stall each other (benchmarks/README.md)."""
    return max(1, min(8, int(cpus)))


# ---- inputs -------------------------------------------------------------------------------------

def expand_inputs(names: tuple[str, ...]) -> list[Any]:
    """Files (tasks.InputFile), in order: each argument in turn; a directory's files (hidden
    and _-prefixed names skipped, as Ray and Spark do) and a glob's matches sorted by path."""
    import pyarrow.fs as pafs

    tasks = ray_modules().tasks
    files: list[Any] = []
    for name in names:
        if "://" in name:
            files.extend(_remote(name))
            continue
        local = pafs.LocalFileSystem()
        if os.path.isdir(name):
            found = sorted(os.path.join(root, f) for root, dirs, names_ in os.walk(name)
                           for f in names_ if not _hidden(os.path.relpath(os.path.join(root, f), name)))
            if not found:
                raise InputError(f"input directory {name} holds no files")
            files.extend(tasks.InputFile(p, os.path.abspath(p), local) for p in found)
        elif not os.path.exists(name) and any(c in name for c in _GLOB):
            found = sorted(p for p in _glob.glob(name, recursive=True) if os.path.isfile(p))
            if not found:
                raise InputError(f"no file matches {name!r}")
            files.extend(tasks.InputFile(p, os.path.abspath(p), local) for p in found)
        elif not os.path.exists(name):
            raise InputError(f"input file {name} does not exist")
        else:
            files.append(tasks.InputFile(name, os.path.abspath(name), local))
    return files


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.replace(os.sep, "/").split("/"))


def _remote(uri: str) -> list[Any]:
    """A file, directory or glob on a filesystem that pyarrow opens (s3://, gs://, hdfs://, ...)."""
    import fnmatch

    import pyarrow.fs as pafs

    tasks = ray_modules().tasks
    scheme = uri.split("://", 1)[0]
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        if any(c in path for c in _GLOB):  # list from the folder before the first wildcard
            base = path[: min(path.index(c) for c in _GLOB if c in path)].rsplit("/", 1)[0]
            entries = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            found = [e.path for e in entries if e.type == pafs.FileType.File and fnmatch.fnmatchcase(e.path, path)]
            if not found:
                raise InputError(f"no file matches {uri!r}")
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File:
                found = [path]
            elif info.type == pafs.FileType.Directory:
                root = path.rstrip("/")
                entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
                found = [e.path for e in entries
                         if e.type == pafs.FileType.File and not _hidden(e.path[len(root):].lstrip("/"))]
                if not found:
                    raise InputError(f"input directory {uri} holds no files")
            else:
                raise InputError(f"input file {uri} does not exist")
    except InputError:
        raise
    except Exception as exc:  # no credentials, no such bucket, an unknown scheme, ...
        raise InputError(f"cannot open {uri}: {' '.join(str(exc).split())}") from None
    return [tasks.InputFile(f"{scheme}://{p.lstrip('/')}" if scheme != "file" else f"file://{p}", p, fs)
            for p in sorted(found)]


def _input_format(spec: InputSpec, files: list[Any]) -> str:
    """The one format of all files (hfenc's rules: --format, else the suffix), with the options
    that do not apply to it refused."""
    names = [f.name for f in files]
    try:
        probe = replace(spec, path=names[0], more=tuple(names[1:]))
        probe.check()
        return probe.resolved_format()
    except InputError:
        remote = [f.name for f in files if not f.local]
        if remote and spec.format is None:
            raise InputError(f"{remote[0]}: cannot tell its format from its name", hint="give --format") from None
        raise


# ---- outputs ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Output:
    kind: str  # "npy" (assembled) or "dataset" (a directory of shards)
    paths: OutputPaths

    @property
    def path(self) -> Path:
        return self.paths.npy

    @property
    def shards(self) -> Path:
        return self.paths.partial / "shards"

    @property
    def checkpoint(self) -> Path:
        return self.paths.partial / "checkpoint"


def _output(job: Any, files: list[Any]) -> _Output:
    out = job.output
    if out is None:
        if len(files) != 1 or not files[0].local or job.input.path == "-" or job.texts:
            raise ConfigError("with --ray, this input needs an output",
                              hint="pass -o OUT.npy (one array) or -o OUT_DIR (a directory of Parquet shards)")
        out = default_output(files[0].name)
    text = str(out)
    if "://" in text:
        raise ConfigError(f"output {text}: with --ray the output is a local path (on a cluster, a shared mount "
                          "every node sees)")
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        raise ConfigError(f"output {path}: with --ray the output is a directory of Parquet shards or one .npy",
                          hint=f"write -o {path.with_suffix('')} for the shards, or -o {path.with_suffix('.npy')}")
    kind = "npy" if suffix == ".npy" else "dataset"
    fmt = getattr(job, "out_format", None)
    if fmt is not None and (fmt, kind) not in (("npy", "npy"), ("parquet", "dataset")):
        raise ConfigError(f"--out-format {fmt} does not fit the output {path} with --ray",
                          hint="name the output OUT.npy for one array, or a directory for Parquet shards")
    return _Output(kind, OutputPaths(path))


def _check_output(out: _Output, job: Any) -> None:
    """As hfenc.io.outputs.check_writable, for the Ray job's output (a .npy, or a directory)."""
    paths = out.paths
    if out.kind == "npy":
        writes = tuple(p for made, p in ((job.input.id_field, paths.ids), (job.input.skip_blank, paths.lines)) if made)
        check_writable(paths, job.force, job.resume, writes)
    else:
        parent = out.path.parent
        if not parent.is_dir():
            raise OutputError(f"output directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"output directory {parent} is not writable")
        resuming = job.resume and paths.state.exists()
        if out.path.exists() and not resuming:
            if not out.path.is_dir():
                raise OutputError(f"output {out.path} exists and is not a directory")
            if any(out.path.iterdir()):
                if read_sidecar(out.path / MANIFEST) is None:
                    raise OutputError(f"output {out.path} is a directory that hfenc did not write (it has no {MANIFEST})",
                                      hint="choose another output with -o")
                if not job.force:
                    raise OutputError(f"output {out.path} already exists", hint="pass --force to overwrite it")
        if paths.state.exists() and not job.resume and not job.force:
            raise OutputError(f"an interrupted run of {out.path} can be resumed",
                              hint="pass --resume to continue it, or --force to start over")
        if job.resume and not paths.state.exists():
            raise ResumeError(f"nothing to resume: no interrupted run of {out.path} was found")
        if paths.partial.exists() and not paths.state.exists() and not job.force:
            raise OutputError(f"{paths.partial} exists but no interrupted hfenc run claims it",
                              hint="move it away, or pass --force to overwrite it")


def _check_job(job: Any) -> None:
    from hfenc.jobs.local import check_job
    from hfenc.io.writers import check_quantize

    check_job(job)
    check_quantize(job.quantize, job.ranges, job.out_dtype)


# ---- the Ray session ----------------------------------------------------------------------------

def _debug() -> bool:
    return os.environ.get("HFENC_DEBUG", "") not in ("", "0")


@contextmanager
def _quiet() -> Iterator[None]:
    """Ray's own log lines and deprecation warnings stay out of hfenc's stderr: what goes wrong
    reaches the user as an exception (one line for an HfencError, a traceback for a bug), and
    Ray's logs are still in /tmp/ray/session_*/logs. HFENC_DEBUG=1 lets them through."""
    if _debug():
        yield
        return
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextmanager
def _session(options: RayOptions) -> Iterator[bool]:
    """Ray, started here (and shut down after) unless the caller had initialised it already."""
    ray = ray_modules().ray
    if ray.is_initialized():
        yield False
        return
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR if not _debug() else logging.INFO,
                              "log_to_driver": _debug()}
    if options.address is not None:
        _reachable(options.address)
    try:
        if options.address is None:
            # Idle workers kept a minute (Ray's default: killed after 1 s beyond one per CPU), so
            # the read and write tasks of a stage reuse the processes of the stage before
            # instead of starting (and importing) new ones: 15 s -> 9 s per job on 2 cores.
            # address="local": a new runtime even where `ray start` left a cluster or RAY_ADDRESS
            # names one (ray.init() would join those; --ray-address auto is how to ask for that).
            ray.init(address="local", num_cpus=options.num_cpus, include_dashboard=False,
                     _system_config={"num_workers_soft_limit": 8, "idle_worker_killing_time_threshold_ms": 60_000},
                     **kwargs)
        else:
            import hfenc

            # The cluster's workers run this very hfenc (its dependencies must be installed there).
            ray.init(address=options.address, runtime_env={"py_modules": [os.path.dirname(hfenc.__file__)]}, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where, message = options.address or "this machine", " ".join(str(exc).split())
        hint = None
        if options.address is not None and "Could not find any running Ray instance" in message:
            hint = "start one with `ray start --head`, or drop --ray-address for a local runtime"
        elif options.address is not None:  # Ray says why only in its C++ log lines, e.g. a missing token
            hint = ("if the cluster uses token authentication (Ray's default for `ray start`), set "
                    "RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or ~/.ray/auth_token) here too")
        raise ConfigError(f"cannot start Ray on {where}: {message}", hint=hint) from None
    try:
        yield True
    finally:
        ray.shutdown()


def _reachable(address: str) -> None:
    """A HOST:PORT or ray://HOST:PORT that nothing answers on fails in seconds, not after Ray's
    own retries (minutes). `auto` is left to Ray (it fails at once when it finds no cluster)."""
    import socket

    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}",
                          hint="check the address (HOST:6379 for the head node, ray://HOST:10001 for Ray Client)"
                          ) from None


def _hfenc_error(exc: BaseException) -> HfencError | None:
    """The HfencError a Ray task or actor raised, out of Ray's wrappers (RayTaskError's `cause`,
    Ray Data's UserCodeException chain)."""
    ray = ray_modules().ray
    stack, seen = [exc], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ray.exceptions.RayTaskError):
            stack.extend([getattr(e, "cause", None), e.__cause__])
            continue
        if isinstance(e, HfencError):
            return e
        stack.extend([e.__cause__, e.__context__])
    return None


def _get(refs: Any) -> Any:
    try:
        return ray_modules().ray.get(refs)
    except Exception as exc:
        found = _hfenc_error(exc)
        if found is not None:
            raise found from None
        raise


@dataclass(frozen=True)
class _Plan:
    """What the cluster can give: GPU replicas or CPU ones, and the resources of each."""

    gpu: bool
    workers: int
    cpus_per_worker: float
    threads: int | None
    device: str


def _here(options: RayOptions, plan: _Plan) -> bool:
    """True when the cluster is this one machine (a local runtime) and the workers use its CPU:
    then the driver sees what a worker sees, and loads the model itself instead of a probe task
    (a fresh process importing torch: seconds)."""
    ray = ray_modules().ray
    if plan.gpu or options.address is not None or ray.util.client.ray.is_connected():
        return False
    return len([n for n in ray.nodes() if n.get("Alive")]) == 1


def _plan(options: RayOptions, device: str) -> _Plan:
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
        return _Plan(True, workers, per, None, "cuda")  # Ray gives each actor its GPU as cuda:0
    workers = options.workers or cpu_workers(cpus)
    per = max(IO_CPUS, (cpus - 2 * IO_CPUS) / workers)
    return _Plan(False, workers, round(per, 2), max(1, int(cpus // workers)), "cpu" if device == "auto" else device)


@dataclass(frozen=True)
class _Layout:
    """What the job stores and records, settled before anything is embedded: the float width,
    the quantization (None: floats of `float_dtype`), the resume fingerprint and state stats, and
    the sidecar's parts (both engines' shape: hfenc.jobs.local.job_sidecar)."""

    dim: int
    quantization: Any
    float_dtype: str
    chunk_size: int
    fingerprint: dict
    stats: dict
    extra: dict
    input_meta: dict
    describe: dict

    @property
    def dtype(self) -> np.dtype:
        return self.quantization.dtype if self.quantization is not None else np.dtype(self.float_dtype)

    @property
    def width(self) -> int:
        return self.quantization.width if self.quantization is not None else self.dim

    def sidecar(self, out: _Output, totals: Any = None) -> dict:
        from hfenc.jobs.local import job_sidecar

        return job_sidecar(out.path, self.fingerprint["rows"], self.dim, str(self.dtype), self.input_meta,
                           self.describe, self.chunk_size, self.extra, totals)


def _quantization(job: Any, dim: int, saved: dict, sample: Callable[[], tuple[np.ndarray, dict]]) -> Any:
    """--quantize, as the local path does it (hfenc.io.writers.open_output): binary/ubinary need
    nothing; int8/uint8 ranges are the interrupted run's (the very arrays its shards used), or
    --ranges FILE, or a sample of the input embedded once before the job."""
    if job.quantize is None:
        return None
    from hfenc.io.quantize import SCALAR, Quantization
    from hfenc.io.writers import scalar_ranges

    if job.quantize not in SCALAR:
        return Quantization(job.quantize, dim)
    if saved.get("quantization_ranges") is not None:
        return Quantization(job.quantize, dim, np.asarray(saved["quantization_ranges"], dtype=np.float32),
                            saved.get("quantization_calibration"))
    return Quantization(job.quantize, dim, *scalar_ranges(dim, job.ranges, sample))


def _quantization_stats(quantization: Any) -> dict:
    if quantization is None or quantization.ranges is None:
        return {}
    return {"quantization_ranges": quantization.ranges.tolist(), "quantization_calibration": quantization.calibration}


# ---- the job ------------------------------------------------------------------------------------

def embed_ray(job: Any, model: Any, options: dict[str, Any], cluster: RayOptions | None = None,
              progress: Callable[[Any], None] | None = None) -> Any:
    """Run the embedding job `job` (hfenc.jobs.local.JobOptions) on Ray; returns a hfenc.jobs.local.JobResult.

    `model`: a name, a folder or a resolved hfenc.model.spec.ModelSpec; `options`: Embedder's options
    (pooler, dim, prompt, device, dtype, ...), as for the local path."""
    from hfenc.jobs.local import JobResult, sigterm_as_interrupt

    t0 = time.perf_counter()
    cluster = cluster or RayOptions()
    ray_modules()  # no Ray: one line naming the extra, before anything else
    _check_job(job)
    if (cluster.address or "").startswith("ray://") and not cluster.on_cluster:
        return _through_client(job, model, options, cluster)
    spooled: Path | None = None
    with sigterm_as_interrupt(), _quiet():
        try:
            spec = job.input
            if job.texts or spec.path == "-":
                where = Path(job.output).parent if job.output is not None else Path(".")
                spooled = spool_texts(where, job.texts) if job.texts else spool_stdin(where)
                spec = replace(spec, path=str(spooled), more=(),
                               format="jsonl" if job.texts else job.input.resolved_format())
            files = expand_inputs(spec.paths)
            if spooled is not None:  # named as the single-process path names it
                files = [replace(files[0], name="(--text)" if job.texts else "-")]
            if spooled is not None and not job.texts:
                job.input.check()  # an option that does not apply to the format, as for a file
            fmt = _input_format(spec, files) if spooled is None else str(spec.format)
            out = _output(job, files)
            _check_output(out, job)
            try:
                with _session(cluster):
                    return _run(job, JobResult, spec, fmt, files, out, model, options, cluster, progress, t0)
            except _Stopped as stopped:
                raise stopped.interrupted() from None
        finally:
            if spooled is not None:
                spooled.unlink(missing_ok=True)


def _through_client(job: Any, model: Any, options: dict[str, Any], cluster: RayOptions) -> Any:
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
    absolute = (lambda p: p if p is None or "://" in str(p) else type(p)(os.path.abspath(p)))  # noqa: E731
    spec = replace(job.input, path=absolute(job.input.path), more=tuple(absolute(p) for p in job.input.more))
    job = replace(job, input=spec, output=absolute(job.output), ranges=absolute(job.ranges))
    load_name, _ = _model_name(model)
    options = {**options, **({"proj_weights": absolute(options["proj_weights"])} if options.get("proj_weights") else {})}
    inside = replace(cluster, on_cluster=True)
    with _session(cluster):
        driver = ray.remote(num_cpus=0, max_retries=0)(ray_modules().tasks.run_driver)
        ref = driver.remote(job, load_name, options, inside)
        try:
            return _get(ref)
        except KeyboardInterrupt:
            ray.cancel(ref)
            raise Interrupted("the job on the cluster was stopped; the shards it saved stay for --resume") from None


def _model_name(model: Any) -> tuple[str, str]:
    """(what workers load, what the sidecar says): a local folder travels as an absolute path."""
    name = model if isinstance(model, str) else model.name
    resolved = getattr(model, "resolved", None)
    if resolved is not None and resolved.source == "local":
        return str(Path(resolved.path).resolve()), name
    if isinstance(model, str) and Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().resolve()), name
    return name, name


def _run(job, JobResult, spec, fmt, files, out: _Output, model, options, cluster, progress, t0):
    r = ray_modules()
    ray, tasks = r.ray, r.tasks
    paths = out.paths
    from hfenc.compute.embedder import EmbedOptions

    asked = EmbedOptions(**{**options, "device": options.get("device") or "auto"})
    plan = _plan(cluster, asked.requested_device())  # OpenVINO's backend: CPU replicas
    load_name, shown_name = _model_name(model)
    worker_options = {**options, "device": plan.device}
    if worker_options.get("threads") is None and plan.threads is not None:
        worker_options["threads"] = plan.threads  # the CPUs Ray gives a replica, not the whole machine
    if worker_options.get("proj_weights") is not None:
        worker_options["proj_weights"] = str(Path(worker_options["proj_weights"]).resolve())
    spec = replace(spec, format=fmt, more=())
    several = len(files) > 1
    want_lines = spec.skip_blank and out.kind == "npy"
    gpu_args = {"num_gpus": 1} if plan.gpu else {}

    # Scan every file and load the model once, at the same time.
    scan = ray.remote(tasks.scan_file).options(num_cpus=IO_CPUS)
    scan_refs = [scan.remote(spec, f, several, want_lines) for f in files]
    local_model = None
    if _here(cluster, plan):  # this machine is the cluster and the replicas are CPU ones: load it here
        from hfenc.compute.embedder import Embedder

        local_model = Embedder(load_name, **{**worker_options, "threads": None})  # (torch threads are process-wide)
        probed = tasks.described(local_model)
        probed["describe"]["threads"] = worker_options.get("threads")
    else:  # max_calls=1: the probe's process exits after it, freeing the memory (and GPU) it held
        probe = ray.remote(max_calls=1)(tasks.probe).options(num_cpus=plan.cpus_per_worker, **gpu_args)
        probed = probe.remote(load_name, worker_options)
    scans = _get(scan_refs)
    if not isinstance(probed, dict):
        probed = _get(probed)
    # Every replica computes in the dtype the probe settled on (`auto` decided once, here, not
    # per node: nodes with and without native bf16 would otherwise mix dtypes in one output).
    worker_options["dtype"] = probed["describe"]["dtype"]
    if probed["describe"].get("int8_group_size") is not None:  # OpenVINO int8: the same groups everywhere
        worker_options["int8_group_size"] = probed["describe"]["int8_group_size"]
    rows = sum(s["rows"] for s in scans)
    if rows == 0:
        raise InputError(f"input {' '.join(f.name for f in files)} is empty: no records to embed")
    starts = np.concatenate(([0], np.cumsum([s["rows"] for s in scans])[:-1])).astype(int).tolist()
    blank = sum(s["blank"] for s in scans)
    if several:
        tally = Tally()
        combine_hashes(tally, [(f.name, Tally(s["sha256"], s["bytes"])) for f, s in zip(files, scans)])
        input_sha, input_bytes = tally.sha256, tally.bytes
    else:
        input_sha, input_bytes = scans[0]["sha256"], scans[0]["bytes"]
    describe = dict(probed["describe"])
    dim = int(probed["dim"])
    describe["model"] = shown_name
    describe["versions"] = {**describe.get("versions", {}), "ray": ray.__version__}
    from hfenc.compute.embedder import EmbedSettings
    from hfenc.jobs.local import input_metadata, job_fingerprint
    from hfenc.io.writers import fingerprint_of

    settings = {f.name: describe.get(f.name) for f in fields(EmbedSettings)}
    with_id, keep_text = spec.id_field is not None, bool(job.keep_text)
    fingerprint = job_fingerprint(
        job, spec, fmt, input_sha, rows, settings, describe.get("weights_sha256"), describe.get("config_sha256"),
        engine=ENGINE, output_kind=out.kind, keep_text=keep_text,
        files=[[f.name, s["sha256"], s["bytes"], s["rows"]] for f, s in zip(files, scans)],
        **fingerprint_of("npy", job.quantize, job.ranges, keep_text))  # its quantization keys
    input_meta = input_metadata(job, spec, fmt, input_sha, input_bytes,
                                [(f.name, s["rows"]) for f, s in zip(files, scans)] if several else None)
    ray_meta = {"version": ray.__version__, "address": cluster.address or "local", "workers": plan.workers,
                "device": "gpu" if plan.gpu else "cpu", "cpus_per_worker": plan.cpus_per_worker,
                "gpus_per_worker": 1 if plan.gpu else 0, "threads_per_worker": worker_options.get("threads")}

    # Claim the partial output, or pick up the interrupted run's.
    resumed_publication, saved = None, {}
    if job.resume and paths.state.exists():
        state = read_state(paths)
        if state["fingerprint"].get("engine") != ENGINE:
            raise ResumeError(f"the interrupted run of {out.path} was not a --ray run",
                              hint="resume it without --ray, or use --force to start over")
        from hfenc.io.outputs import resume_state

        state = resume_state(paths, fingerprint)  # refuses a changed input or option, naming it
        saved, resumed_publication = state.get("stats") or {}, state.get("publishing")
    else:
        remove_path(paths.partial)
        write_state(paths, fingerprint, 0, {"engine": ENGINE})  # the claim first
    if resumed_publication:
        return _finish_publication(JobResult, out, resumed_publication, rows, dim, blank, t0)

    def sample() -> tuple[np.ndarray, dict]:  # embedded by the model the driver holds, or by a task
        if local_model is not None:
            return tasks.calibrate(local_model, spec, files, rows)
        calibrate = ray.remote(max_calls=1)(tasks.calibrate_with).options(num_cpus=plan.cpus_per_worker, **gpu_args)
        return _get(calibrate.remote(load_name, worker_options, spec, files, rows))

    try:
        quantization = _quantization(job, dim, saved, sample)
    except BaseException:
        if not job.resume:
            _abandon(paths)  # nothing was embedded yet: leave nothing behind
        raise
    local_model = None  # the replicas hold their own
    stats = {"engine": ENGINE, **_quantization_stats(quantization)}
    write_state(paths, fingerprint, _committed_rows(out) if job.resume else 0, stats)
    columns = ["row", *(["id"] if with_id else []), *(["text"] if keep_text else []), "embedding"]
    layout = _Layout(dim, quantization, job.out_dtype, job.chunk_size, fingerprint, stats, {
        "out_format": "npy" if out.kind == "npy" else DATASET_FORMAT,
        "quantization": None if quantization is None else quantization.record(),
        **({"columns": columns} if out.kind == "dataset" else {}),
        "engine": ENGINE, "workers": plan.workers, "ray": ray_meta,
    }, input_meta, describe)
    (out.shards / tasks.META_DIR).mkdir(parents=True, exist_ok=True)

    try:
        return _embed_and_publish(job, JobResult, spec, files, starts, scans, out, load_name, worker_options, plan,
                                  layout, rows, blank, probed, progress, t0)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: what is committed stays, for --resume
        raise _Stopped(out, rows, getattr(exc, "signum", 2)) from None


class _Stopped(Exception):
    """A job stopped by a signal, on its way out of the Ray session: the rows saved are counted
    once the session is closed (write tasks in flight at Ctrl-C may still commit a shard)."""

    def __init__(self, out: _Output, rows: int, signum: int) -> None:
        super().__init__("stopped")
        self.out, self.rows, self.signum = out, rows, signum

    def interrupted(self) -> Interrupted:
        out, rows = self.out, self.rows
        done = rows if (out.shards / MANIFEST).exists() or not out.paths.partial.exists() else _committed_rows(out)
        return Interrupted(f"{done:,} of {rows:,} rows are saved in {out.paths.partial.name}", rows_done=done,
                           signum=self.signum)


def _embed_and_publish(job, JobResult, spec, files, starts, scans, out: _Output, load_name, worker_options, plan,
                       layout: "_Layout", rows, blank, probed, progress, t0):
    paths = out.paths
    done = out.shards / MANIFEST
    t_embed = time.perf_counter()
    if done.exists():  # an earlier run embedded every row; only its publication is left
        manifest = json.loads(done.read_text(encoding="utf-8"))
        shards, resumed, embed_seconds = manifest["shards"], rows, 0.0
    else:
        resumed = _committed_rows(out)
        try:
            _embed(job, spec, files, starts, scans, out, load_name, worker_options, plan, layout, rows, resumed,
                   progress)
        except (OverflowRefused, InputChanged) as exc:  # a refusal, or rows of other bytes: nothing stays
            _abandon(paths)
            if isinstance(exc, OverflowRefused) and getattr(exc, "row", None) is not None:
                where = _where(spec, files, starts, scans, exc.row)  # type: ignore[attr-defined]
                raise OverflowRefused(f"{where} is longer than the maximum of {probed['max_length']} tokens",
                                      hint=exc.hint) from None
            raise
        embed_seconds = time.perf_counter() - t_embed
        shards = _verify(out, rows)
    tokens = sum(s["tokens"] for s in shards)
    truncated = sum(s["truncated_rows"] for s in shards)
    warnings_ = list(probed["notes"])
    if layout.quantization is not None:
        from hfenc.io.writers import calibration_warnings

        warnings_.extend(calibration_warnings(layout.quantization))
    if blank and not spec.skip_blank:
        warnings_.append(f"{blank:,} blank record(s) were embedded as empty texts; --skip-blank drops them")
    if truncated:
        warnings_.append(f"{truncated:,} text(s) were longer than {probed['max_length']} tokens and truncated")
    from hfenc.jobs.local import RunTotals

    metadata = layout.sidecar(out, RunTotals(truncated, blank, tokens, resumed, time.perf_counter() - t0,
                                             embed_seconds))
    write_json_atomic(done, {**metadata, "shards": shards})  # written last: the Ray part is done
    if out.kind == "npy":
        metadata = _assemble(out, spec, scans, rows, job, metadata, layout)
        sidecar = paths.sidecar
    else:
        metadata = _publish_dataset(out, layout, rows)
        sidecar = out.path / MANIFEST
    return JobResult(out.path, sidecar, rows, layout.dim, time.perf_counter() - t0, truncated, blank, tokens, resumed,
                     metadata, embed_seconds=embed_seconds, warnings=warnings_)


def _embed(job, spec, files, starts, scans, out, load_name, worker_options, plan, layout: "_Layout", rows, resumed,
           progress) -> None:
    """The Ray Data pipeline: read -> map_batches(EmbedWorker) -> write shards, checkpointed."""
    r = ray_modules()
    tasks, data = r.tasks, r.data
    from hfenc.io.parquet import schema as parquet_schema

    with_id, keep_text = spec.id_field is not None, bool(getattr(job, "keep_text", False))
    schema = parquet_schema(layout.width, layout.dtype, with_id, keep_text)
    ctx = data.DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in ("checkpoint_config", "enable_progress_bars", "print_on_execution_start",
                                          "target_max_block_size", "raise_original_map_exception")}
    ctx.checkpoint_config = r.CheckpointConfig(id_column="row", checkpoint_path=str(out.checkpoint.resolve()),
                                               delete_checkpoint_on_success=False)
    ctx.enable_progress_bars = _debug()
    ctx.print_on_execution_start = _debug()
    ctx.raise_original_map_exception = True  # a refusal in a worker arrives as itself (one line), not wrapped
    # Blocks of about one chunk: a read task merges what it yields up to this size (128 MiB by
    # default, a million short texts: one block, one actor busy). Bigger map outputs are cut to
    # it too; the sink gathers them back into shards of at least a chunk.
    text_bytes = sum(s["text_bytes"] for s in scans) / max(1, rows)
    ctx.target_max_block_size = int(min(128 << 20, max(4096, job.chunk_size * (text_bytes + 16 + 16 * with_id))))
    try:
        scans = [{k: v for k, v in s.items() if k != "lines"} for s in scans]  # not shipped to read tasks
        source = tasks.InputSource(spec, files, starts, scans, job.chunk_size, with_id)
        ds = data.read_datasource(source, override_num_blocks=max(1, len(files)), num_cpus=IO_CPUS)
        ds = ds.map_batches(
            tasks.EmbedWorker, batch_size=job.chunk_size, batch_format="pyarrow", zero_copy_batch=True,
            fn_constructor_kwargs={"model": load_name, "options": worker_options, "out_dtype": job.out_dtype,
                                   "quantization": layout.extra["quantization"], "with_id": with_id,
                                   "keep_text": keep_text, "on_overflow": job.on_overflow,
                                   "faults": faults_from_env()},
            compute=data.ActorPoolStrategy(size=plan.workers, max_concurrent_calls_per_actor=2 if plan.gpu else 1),
            num_cpus=plan.cpus_per_worker, num_gpus=1 if plan.gpu else None,
        )
        sink = tasks.ShardSink(str(out.shards.resolve()), schema, layout.sidecar(out), min_rows=job.chunk_size)
        with _Tracker(out, rows, resumed, progress, layout):
            try:
                ds.write_datasink(sink, ray_remote_args={"num_cpus": IO_CPUS})
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                found = _hfenc_error(exc)
                if found is not None:
                    raise found from None
                raise
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)


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


def _committed(out: _Output) -> dict[str, dict]:
    """The shards whose rows Ray's checkpoint has committed: name -> their _meta JSON."""
    found = {}
    try:
        names = os.listdir(out.checkpoint)
    except FileNotFoundError:
        return found
    for name in names:
        if not name.endswith(".parquet") or name.endswith(".pending.parquet"):
            continue
        base = name.removesuffix(".parquet")
        try:
            found[base] = json.loads((out.shards / "_meta" / (base + ".json")).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return found


def _committed_rows(out: _Output) -> int:
    return sum(m["rows"] for m in _committed(out).values())


class _Tracker:
    """Progress while the pipeline runs, read from the committed shards every half second (and
    written to the resume state, so `hfenc clean` can say how much an interruption kept)."""

    def __init__(self, out: _Output, rows: int, resumed: int, progress, layout: "_Layout") -> None:
        import threading

        self.out, self.rows, self.resumed, self.progress, self.layout = out, rows, resumed, progress, layout
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hfenc-ray-progress", daemon=True)
        self.t0 = time.perf_counter()
        self.saved_rows = resumed

    def __enter__(self) -> "_Tracker":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                done = _committed(self.out)
                rows = sum(m["rows"] for m in done.values())
                tokens = sum(m["tokens"] for m in done.values())
                if rows != self.saved_rows:
                    write_state(self.out.paths, self.layout.fingerprint, rows, self.layout.stats)
                    self.saved_rows = rows
                if self.progress is not None:
                    from hfenc.compute.engine import Progress

                    self.progress(Progress(rows, self.rows, tokens, time.perf_counter() - self.t0, self.resumed))
            except Exception:  # progress must never break the job
                if _debug():
                    raise


def _verify(out: _Output, rows: int) -> list[dict]:
    """Every row in [0, rows) in exactly one shard, every shard described; the shard list."""
    import pyarrow.parquet as pq

    metas = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (out.shards / "_meta").glob("*.json")}
    data = {p.stem: p for p in out.shards.glob("*.parquet")}
    if set(metas) != set(data):
        raise RuntimeError(f"shards and their descriptions disagree in {out.shards}: "
                           f"{sorted(set(metas) ^ set(data))[:5]}")
    count = np.zeros(rows, dtype=np.uint8)
    for name, path in data.items():
        index = pq.read_table(path, columns=["row"]).column("row").to_numpy()
        if len(index) != metas[name]["rows"]:
            raise RuntimeError(f"shard {path} holds {len(index)} rows, its description says {metas[name]['rows']}")
        np.add.at(count, index, 1)
    missing, doubled = np.flatnonzero(count == 0), np.flatnonzero(count > 1)
    if len(missing) or len(doubled):
        raise RuntimeError(f"the shards in {out.shards} do not hold every row exactly once: {len(missing)} missing "
                           f"(first {missing[:5].tolist()}), {len(doubled)} doubled (first {doubled[:5].tolist()})")
    return sorted(metas.values(), key=lambda m: m["row_min"])


def _abandon(paths: OutputPaths) -> None:
    remove_path(paths.partial)
    for p in (paths.state, paths.hidden(paths.state, "tmp"), paths.staged(paths.npy)):
        p.unlink(missing_ok=True)


def _where(spec: InputSpec, files: list[Any], starts: list[int], scans: list[dict], row: int) -> str:
    """`line N` (`FILE line N` with several inputs) of global row `row`, as hfenc.jobs.local says it."""
    from hfenc.io.inputs import records

    tasks = ray_modules().tasks
    for f, start, s in zip(files, starts, scans):
        if start <= row < start + s["rows"]:
            with tasks.local_copy(f) as path:
                for i, record in enumerate(records(replace(spec, path=path, more=()))):
                    if i == row - start:
                        return f"{f.name} line {record.line}" if len(files) > 1 else f"line {record.line}"
    return f"record {row + 1}"


# ---- publication --------------------------------------------------------------------------------

def _publish_dataset(out: _Output, layout: "_Layout", rows: int) -> dict:
    """The shard directory, its manifest already written last inside it, renamed into place
    (an earlier dataset of ours at OUT goes only after the new one is complete)."""
    shutil.rmtree(out.shards / "_meta", ignore_errors=True)
    shutil.rmtree(out.checkpoint, ignore_errors=True)
    exists = out.path.exists() and any(out.path.iterdir())
    plan = {"dataset": str(out.shards), "output": str(out.path),
            "old": str(out.paths.hidden(out.path, "old")) if exists else None}
    write_state(out.paths, layout.fingerprint, rows, layout.stats, publishing=plan)
    _complete_dataset(out.paths, plan)
    return json.loads((out.path / MANIFEST).read_text(encoding="utf-8"))


def _complete_dataset(paths: OutputPaths, plan: dict) -> None:
    """Safe to repeat after a crash at any step: each step checks what is already done."""
    dataset, output = Path(plan["dataset"]), Path(plan["output"])
    old = Path(plan["old"]) if plan.get("old") else None
    try:
        if dataset.exists():
            if old is not None and output.exists():
                os.replace(output, old)
            elif output.is_dir() and not any(output.iterdir()):
                output.rmdir()
            os.replace(dataset, output)
            fsync_dir(output.parent)
        if old is not None and old.exists():
            shutil.rmtree(old)
        remove_path(paths.partial)
        for p in (paths.state, paths.hidden(paths.state, "tmp")):
            p.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot publish {output}: {exc.strerror or exc}") from None


def _assemble(out: _Output, spec: InputSpec, scans: list[dict], rows: int, job: Any, metadata: dict,
              layout: "_Layout") -> dict:
    """The shards as one .npy in input order (+ OUT.ids.txt, OUT.lines.npy), published with the
    local path's journaled step (hfenc.io.outputs.publish)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from numpy.lib.format import open_memmap

    paths = out.paths
    staged = paths.staged(paths.npy)
    with_id = spec.id_field is not None
    side_files: list[tuple[Path, Path]] = []
    extra: dict[str, Any] = {}
    try:
        array = open_memmap(staged, mode="w+", dtype=layout.dtype, shape=(rows, layout.width))
        index_parts, id_parts = [], []
        for path in sorted(out.shards.glob("*.parquet")):
            table = pq.read_table(path, columns=["row", *(["id"] if with_id else []), "embedding"])
            index = table.column("row").to_numpy()
            values = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            array[index] = values.reshape(-1, layout.width)
            if with_id:
                index_parts.append(index)
                id_parts.append(table.column("id"))
        array.flush()
        del array
        with open(staged, "rb+") as fh:
            os.fsync(fh.fileno())
        if with_id:
            order = np.argsort(np.concatenate(index_parts), kind="stable")
            ids = pa.chunked_array([c for part in id_parts for c in part.chunks], pa.string()).take(pa.array(order))
            ids = pc.fill_null(ids, "")
            with open(paths.staged(paths.ids), "w", encoding="utf-8") as fh:
                for start in range(0, len(ids), 65536):
                    fh.write("".join(v + "\n" for v in ids.slice(start, 65536).to_pylist()))
            side_files.append((paths.staged(paths.ids), paths.ids))
            extra["ids_file"] = paths.ids.name
        if spec.skip_blank:
            with open(paths.staged(paths.lines), "wb") as fh:
                np.save(fh, np.concatenate([s["lines"] for s in scans]).astype("<i8"))
            side_files.append((paths.staged(paths.lines), paths.lines))
            extra["lines_file"] = paths.lines.name
    except OSError as exc:
        raise OutputError(f"cannot write {staged}: {exc.strerror or exc}") from None
    stale = [final for made, final in ((with_id, paths.ids), (spec.skip_blank, paths.lines))
             if not made and final.exists() and owns(paths, final)]

    def journal(plan: dict) -> None:
        write_state(paths, layout.fingerprint, rows, layout.stats, publishing=plan)
        remove_path(paths.partial)  # the staged files hold every row now

    return publish(paths, staged, {**metadata, **extra}, side_files, stale, journal)


def _finish_publication(JobResult, out: _Output, plan: dict, rows: int, dim: int, blank: int, t0: float) -> Any:
    """--resume after a crash during publication: carry out the rest of it."""
    if out.kind == "npy":
        remove_path(out.paths.partial)
        metadata = finish_publication(out.paths, plan)
        sidecar = out.paths.sidecar
    else:
        _complete_dataset(out.paths, plan)
        metadata = read_sidecar(out.path / MANIFEST) or {}
        sidecar = out.path / MANIFEST
    return JobResult(out.path, sidecar, rows, dim, time.perf_counter() - t0, metadata.get("truncated_rows", 0),
                     blank, metadata.get("tokens", 0), rows, metadata,
                     warnings=["the interrupted run had finished; its output is now published"])
