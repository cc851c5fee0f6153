"""An embedding job: input file -> validated records -> Embedder -> .npy + sidecar, resumable.

Order matters for failing early: output checks and the input scan (cheap, and they catch most
mistakes) run before the model is loaded. The output is claimed (hfenc.io.claim) before anything
of it is read and held until the job returns; its files are reserved only after the model loaded.
A run that fails after rows were saved keeps its partial output, in-flight rows and state for
--resume; a run refused on purpose (--on-overflow error) removes everything it wrote.
"""

from __future__ import annotations

import datetime as _dt
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hfenc import faults
from hfenc.compute.chunking import ChunkOptions
from hfenc.compute.embedder import Embedder, library_versions
from hfenc.compute.engine import Progress, RunStats, Tokenized
from hfenc.errors import (ConfigError, HfencError, InputChanged, Interrupted, OutputError, OverflowRefused,
                          UnknownChoiceError)
from hfenc.io.claim import Claim
from hfenc.io.hashes import WIDTH, raw_to_npy
from hfenc.io.inputs import InputSpec, Scan, chunks, records, scan, spool_stdin, spool_texts
from hfenc.io.outputs import (SIDECAR_FORMAT, OutputPaths, check_writable, default_output, left_alone, owns,
                              read_state, saved_rows)
from hfenc.io.writers import check_options, check_sparse, default_path, open_output, out_format
from hfenc.jobs.checkpoint import Checkpoints
from hfenc.jobs.chunked import ChunkedJob, published
from hfenc.jobs.reuse import ReusedRows, open_reuse

OUT_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class JobOptions:
    input: InputSpec
    output: Path | None = None
    force: bool = False
    resume: bool = False
    out_dtype: str = "float32"
    chunk_size: int = 16384
    on_overflow: Literal["truncate", "error"] = "truncate"
    texts: tuple[str, ...] = ()  # --text: texts given on the command line (instead of a file)
    out_format: str | None = None  # npy | parquet; None: from the output's suffix (hfenc.io.writers)
    quantize: str | None = None  # int8 | uint8 | binary | ubinary (hfenc.io.quantize)
    ranges: str | Path | None = None  # int8/uint8 calibration ranges file (default: a sample of the input)
    keep_text: bool = False  # Parquet output: a `text` column
    chunking: ChunkOptions | None = None  # --chunk-tokens ...: a row per chunk of each record (issue 23)
    reuse: str | Path | None = None  # --reuse OLD: rows of an earlier output whose text is unchanged (issue 24)
    # the model makes sparse rows (issue 25): the default output is .npz and dense-only options are
    # refused before anything is read; None: not known until the model loads (checked again then)
    sparse: bool | None = None


@dataclass
class JobResult:
    output: Path
    sidecar: Path
    rows: int
    dim: int
    seconds: float
    truncated: int
    blank: int
    tokens: int
    resumed_from: int
    metadata: dict[str, Any]
    embed_seconds: float = 0.0  # the model's part: reading, tokenizing, computing, writing rows
    warnings: list[str] = field(default_factory=list)
    documents: int | None = None  # a chunked job: the records its `rows` chunks came from
    reuse: dict[str, Any] | None = None  # --reuse: the sidecar's record (reused, embedded, dropped, ...)


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwinding like Ctrl-C (so temporary files go) but remembered as SIGTERM."""

    signum = signal.SIGTERM


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the job like Ctrl-C does: finished work is kept for --resume."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_job(job: JobOptions) -> None:
    """The options every engine checks before it reads anything."""
    if job.out_dtype not in OUT_DTYPES:
        raise UnknownChoiceError("output dtype", job.out_dtype, OUT_DTYPES)
    if job.on_overflow not in ("truncate", "error"):
        raise UnknownChoiceError("overflow policy", job.on_overflow, ("truncate", "error"))
    if job.chunk_size < 1:
        raise ConfigError(f"chunk size must be positive, got {job.chunk_size}")
    if "-" in job.input.more or (job.input.path == "-" and job.input.more):
        raise ConfigError("standard input (-) cannot be combined with other inputs")
    if job.chunking is not None:
        job.chunking.check()
    if job.sparse:
        check_sparse_job(job)
    if job.reuse is not None:
        check_reuse(job)


def check_sparse_job(job: JobOptions) -> None:
    """What a sparse model's job cannot do (its rows are not fixed-width vectors)."""
    if job.reuse is not None:
        raise ConfigError("--reuse is for dense outputs; a sparse output is embedded whole", hint="drop --reuse")
    if job.chunking is not None and (job.chunking.late or job.chunking.doc_vectors):
        what = "--late-chunking" if job.chunking.late else "--doc-vectors"
        raise ConfigError(f"{what} is for dense models: it pools a document's tokens or chunks into one vector",
                          hint="plain --chunk-tokens gives a sparse row per chunk")


def check_reuse(job: JobOptions) -> None:
    """--reuse with options it cannot serve, before anything is read; OLD is opened later."""
    if job.chunking is not None and job.chunking.late:
        raise ConfigError("--reuse cannot serve --late-chunking: a late chunk's vector depends on its whole "
                          "document, not on its text", hint="drop --reuse, or --late-chunking")
    if job.ranges is not None:
        raise ConfigError("--ranges and --reuse: the int8/uint8 ranges come from the reused output",
                          hint="drop --ranges")
    if job.quantize is not None and job.chunking is not None and job.chunking.doc_vectors:
        raise ConfigError("--doc-vectors of a quantized output cannot reuse rows: a document's vector is the "
                          "mean of float32 rows, which the reused output does not hold", hint="drop --reuse")
    if not Path(job.reuse).exists():
        raise ConfigError(f"--reuse {job.reuse}: no such output")


def _validate(job: JobOptions) -> OutputPaths:
    check_job(job)
    if job.output is not None and str(job.output) == "-":
        raise ConfigError("-o - (standard output) is not supported: an output is an array plus its sidecar",
                          hint="give a file name, e.g. -o out.npy")
    if (job.input.path == "-" or job.input.more or job.texts) and job.output is None:
        what = "--text" if job.texts else "standard input" if job.input.path == "-" else "several inputs"
        raise ConfigError(f"{what} needs an output path", hint="pass -o OUT.npy")
    job.input.check()  # an unknown format, or an option that does not apply to it, fails here
    fmt = check_options(job.output, job.out_format, job.quantize, job.ranges, job.keep_text, job.out_dtype, job.sparse)
    out = Path(job.output) if job.output is not None else default_path(default_output(job.input.path), fmt)
    return OutputPaths(out)


def _line_of(spec: InputSpec, row: int) -> str:
    """Where record `row` starts: `line N` (`FILE line N` with several inputs); found again only
    when a refusal needs it."""
    i = 0
    for path in spec.paths:
        for record in records(replace(spec, path=path, more=())):
            if i == row:
                return f"{path} line {record.line}" if spec.more else f"line {record.line}"
            i += 1
    return f"record {row + 1}"


def _saved_rows(paths: OutputPaths, fallback: int) -> int:
    """The rows the resume state on disk says are saved (what --resume will start from): the
    signal may have landed while it was being written."""
    try:
        return saved_rows(read_state(paths))  # read_state validates the shape saved_rows reads
    except HfencError:  # no readable state: what the writer counted
        return fallback


def embed_file(
    job: JobOptions,
    embedder: Embedder | Callable[[], Embedder],
    progress: Callable[[Progress], None] | None = None,
) -> JobResult:
    """Run one job. `embedder` may be a factory, so that it is only loaded once the input is valid."""
    t0 = time.perf_counter()
    paths = _validate(job)
    array = out_format(paths.npy, job.out_format) != "parquet"  # .npy/.npz: side files; Parquet: columns
    ids_side = job.input.id_field and array
    chunked = job.chunking is not None
    writes = tuple(p for made, p in ((ids_side, paths.ids), (job.input.skip_blank, paths.lines),
                                     (chunked and array, paths.chunks),
                                     (chunked and job.chunking.doc_vectors, paths.docs),
                                     (array, paths.hashes)) if made)
    # The output is this job's alone from before anything of it is read until the job returns.
    with Claim(paths.npy):
        check_writable(paths, job.force, job.resume, writes, replaces=reuses_output(job, paths.npy))
        with sigterm_as_interrupt():  # from here on SIGTERM unwinds like Ctrl-C: temp files go
            return _embed_file(job, paths, embedder, progress, t0)


def reuses_output(job: JobOptions, output: Path) -> bool:
    """--reuse names the output itself (re-embedding in place): it may be replaced without --force."""
    return job.reuse is not None and Path(job.reuse).resolve() == output.resolve()


def _embed_file(job, paths, embedder, progress, t0) -> JobResult:
    spooled = None
    if job.texts:
        spooled = spool_texts(paths.npy.parent, job.texts)
    elif job.input.path == "-":
        spooled = spool_stdin(paths.npy.parent)
    spec = replace(job.input, path=str(spooled), format="jsonl" if job.texts else job.input.resolved_format()) \
        if spooled else job.input
    # The scan's side files; they are staged for publication only once the rows are done.
    ids_tmp = paths.hidden(paths.ids, "scan")
    lines_tmp = paths.hidden(paths.lines, "scan")
    hashes_tmp = paths.hidden(paths.hashes, "scan")  # a chunked job hashes its chunks instead
    try:
        with open(ids_tmp, "w", encoding="utf-8") if spec.id_field else nullcontext() as ids_out, \
             open(lines_tmp, "wb") if spec.skip_blank else nullcontext() as lines_out, \
             open(hashes_tmp, "wb") if job.chunking is None else nullcontext() as hashes_out:
            info = scan(spec, ids_out, lines_out, hashes_out)
        faults.point("scanned")
        model = embedder() if callable(embedder) and not isinstance(embedder, Embedder) else embedder
        faults.point("loaded")
        return _run(job, spec, paths, info, model, ids_tmp, lines_tmp, progress, t0)
    finally:
        plan_tmp = paths.hidden(paths.chunks, "scan")
        for tmp in (ids_tmp, lines_tmp, spooled, plan_tmp, plan_tmp.with_name(plan_tmp.name + ".ids"), hashes_tmp,
                    paths.hidden(paths.hashes, "plan")):
            if tmp is not None and tmp.exists():
                tmp.unlink()


def _run(job: JobOptions, spec: InputSpec, paths: OutputPaths, info: Scan, model: Embedder, ids_tmp: Path,
         lines_tmp: Path, progress: Callable[[Progress], None] | None, t0: float) -> JobResult:
    check_sparse(out_format(paths.npy, job.out_format), model.sparse, job.quantize, job.out_dtype)
    if model.sparse:
        check_sparse_job(job)
    if not job.resume:  # a fresh run (check_writable let it replace what an earlier one left)
        published(paths)
    chunked = None if job.chunking is None else \
        ChunkedJob(job.chunking, model, spec, info, paths, ids_tmp if spec.id_field else None, progress)
    plan = chunked.plan if chunked is not None else None
    rows, row_ids = (plan.rows, plan.ids or ids_tmp) if plan is not None else (info.rows, ids_tmp)
    hashes = chunked.hashes if chunked is not None else paths.hidden(paths.hashes, "scan")
    reused = _reused(job, paths, model, hashes, rows)
    output = _open(job, spec, paths, info, model, chunked, reused, rows, row_ids, hashes)
    writer = output.writer
    if writer.publishing is not None:  # the earlier run had finished its rows: publish them
        return _finish_earlier(paths, writer, rows, model.dim, info.blank, plan, t0)
    if reused is not None and output.quantization is not None:
        reused.reuse.check_ranges(job.quantize, output.quantization.ranges)
    resumed_from, saved = writer.rows_done, writer.stats
    stats = RunStats(rows=0, tokens=saved.get("tokens", 0), truncated=saved.get("truncated", 0),
                     first_truncated=saved.get("first_truncated"))
    rows_of = writer.rows if chunked is None else chunked.start(writer.rows, model.dim, model.normalize,
                                                                 resumed_from > 0)
    if reused is not None:
        rows_of = reused.rows(rows_of, output.put)

    def on_chunk(start: int, n: int, s: RunStats, tok: Tokenized) -> None:
        output.counts(start, tok)
        if chunked is not None:
            chunked.saved(start, n)
        if job.on_overflow == "error" and s.first_truncated is not None:
            raise OverflowRefused(
                f"{_line_of(spec, s.first_truncated)} is longer than the maximum of {model.max_length} tokens",
                hint="raise --max-length, or drop --on-overflow error to truncate",
            )
        writer.save_state(start + n, {"tokens": s.tokens, "truncated": s.truncated,
                                      "first_truncated": s.first_truncated})
        checkpoints.clear()  # the state no longer claims the chunk's in-flight rows
        faults.point("chunk-saved")

    def report(p: Progress) -> None:
        if progress is not None:
            done = resumed_from + p.rows_done
            progress(Progress(done, rows, p.tokens_done, p.elapsed, resumed_from, p.tokens_left,
                              *((plan.docs_done(done), plan.docs) if plan is not None else ())))

    late = chunked is not None and chunked.options.late  # a late chunk of work is computed again whole
    checkpoints = Checkpoints(paths, writer)
    work_items, tokenize = _work(job, spec, info, model, chunked, reused, resumed_from)
    t_embed = time.perf_counter()
    try:
        model.engine.run(
            output.tap(work_items), rows_of, on_chunk=on_chunk, progress=report, rows_total=rows - resumed_from,
            stats=stats, done=None if late else checkpoints.resume(resumed_from),
            checkpoint=None if late else checkpoints.save, tokenize=tokenize)
    except KeyboardInterrupt as exc:
        saved = _saved_rows(paths, writer.rows_done)
        raise Interrupted(
            f"{saved:,} of {rows:,} rows are saved in {paths.partial.name}",
            rows_done=saved, signum=getattr(exc, "signum", signal.SIGINT),
        ) from None
    except (OverflowRefused, InputChanged):  # a refusal, or rows of other bytes: nothing half-written stays
        writer.abandon()
        checkpoints.clear()
        if chunked is not None:
            chunked.abandon()
        raise
    except HfencError:
        raise
    except OSError as exc:  # disk full, permissions changed, a device error: saved rows stay
        raise OutputError(
            f"cannot go on writing {paths.npy}: {exc.strerror or exc}; {writer.rows_done:,} rows are saved",
            hint="fix the cause, then rerun with --resume",
        ) from None

    embed_seconds = time.perf_counter() - t_embed
    return _publish(job, spec, paths, info, model, output, stats, chunked, reused,
                    (row_ids, lines_tmp, hashes), RunTotals(stats.truncated, info.blank, stats.tokens, resumed_from,
                                                    time.perf_counter() - t0, embed_seconds))


def _open(job: JobOptions, spec: InputSpec, paths: OutputPaths, info: Scan, model: Embedder,
          chunked: ChunkedJob | None, reused: ReusedRows | None, rows: int, row_ids: Path, hashes: Path) -> Any:
    """The output's writer, opened (or reopened with --resume) under the job's fingerprint."""
    plan = chunked.plan if chunked is not None else None
    fingerprint = job_fingerprint(job, spec, spec.resolved_format(), info.sha256, rows, asdict(model.settings),
                                  model.weights_hash, model.config_hash, chunk_size=job.chunk_size,
                                  **(chunked.fingerprint() if chunked is not None else {}))
    fmt = out_format(paths.npy, job.out_format)
    return open_output(paths, fmt, rows, model.dim, job.out_dtype, fingerprint, job.resume,
                       quantize=job.quantize, ranges=job.ranges, keep_text=job.keep_text,
                       ids=row_ids if spec.id_field and fmt == "parquet" else None, model=model, spec=spec,
                       provenance=plan.table() if plan is not None and fmt == "parquet" else None,
                       texts_of=chunked.texts_of if chunked is not None else None, hashes=hashes,
                       given_ranges=reused.reuse.ranges(job.quantize) if reused is not None else None,
                       sparse=model.sparse)


def _work(job: JobOptions, spec: InputSpec, info: Scan, model: Embedder, chunked: ChunkedJob | None,
          reused: ReusedRows | None, start: int) -> tuple[Any, Any]:
    """The engine's chunks of work from row `start` on, and how it tokenizes them."""
    work_items = chunked.work(job.chunk_size, start) if chunked is not None else \
        chunks(spec, job.chunk_size, start, expected=info)
    tokenize = chunked.tokenize() if chunked is not None else None
    if reused is not None:
        work_items, tokenize = reused.work(work_items), reused.tokenize(model.engine)
    return work_items, tokenize


def _reused(job: JobOptions, paths: OutputPaths, model: Embedder, hashes: Path, rows: int) -> ReusedRows | None:
    """--reuse OLD, opened and matched (None without it, or when only a publication is left)."""
    reuse = open_reuse(job.reuse, paths, job.resume, model.describe(), job.out_dtype, job.quantize)
    return ReusedRows(reuse, hashes, rows) if reuse is not None else None


def _finish_earlier(paths: OutputPaths, writer: Any, rows: int, dim: int, blank: int, plan: Any,
                    t0: float) -> JobResult:
    """--resume after a crash during publication: carry out the rest of it."""
    metadata = writer.finish_publication()
    published(paths)
    return JobResult(paths.npy, paths.sidecar, rows, dim, time.perf_counter() - t0, metadata.get("truncated_rows", 0),
                     blank, metadata.get("tokens", 0), writer.rows_done, metadata,
                     warnings=["the interrupted run had finished; its output is now published"],
                     documents=plan.docs if plan is not None else None)


def _publish(job: JobOptions, spec: InputSpec, paths: OutputPaths, info: Scan, model: Embedder, output: Any,
             stats: RunStats, chunked: ChunkedJob | None, reused: ReusedRows | None, scanned: tuple[Path, Path, Path],
             totals: RunTotals) -> JobResult:
    """The rows are all there: the side files, the sidecar, and the output published as one step."""
    warnings = [*model.notes, *output.warnings]
    if info.blank and not spec.skip_blank:
        warnings.append(f"{info.blank:,} blank record(s) were embedded as empty texts; --skip-blank drops them")
    if stats.truncated:
        warnings.append(f"{stats.truncated:,} text(s) were longer than {model.max_length} tokens and truncated")
    fmt = output.format
    side, side_files, stale = _side_files(spec, paths, output.ids_in_file, fmt != "parquet", *scanned, warnings,
                                          chunked.side_files(fmt) if chunked is not None else ({}, []))
    input_meta = input_metadata(job, spec, spec.resolved_format(), info.sha256, info.bytes,
                                info.files if spec.more else None)
    rows = chunked.plan.rows if chunked is not None else info.rows
    reuse = {"reuse": reused.record()} if reused is not None else {}
    metadata = job_sidecar(paths.npy, rows, model.dim, output.out_dtype, input_meta, model.describe(), job.chunk_size,
                           {**output.metadata(), **(chunked.fingerprint() if chunked else {}), **side, **reuse}, totals)
    metadata = output.writer.finish(metadata, side_files, stale)
    published(paths)
    return JobResult(paths.npy, paths.sidecar, rows, model.dim, totals.elapsed, stats.truncated, info.blank,
                     stats.tokens, totals.resumed_from, metadata, embed_seconds=totals.embed_seconds,
                     warnings=warnings, documents=chunked.plan.docs if chunked is not None else None,
                     reuse=reuse.get("reuse"))

def _side_files(spec: InputSpec, paths: OutputPaths, ids_in_file: bool, npy: bool, ids_tmp: Path, lines_tmp: Path,
                hashes: Path, warnings: list[str], chunk_files: tuple[dict[str, str], list[tuple[Path, Path]]]
                ) -> tuple[dict[str, str], list[tuple[Path, Path]], list[Path]]:
    """The ids, kept-line and (.npy: Parquet has a column) text-hash files beside the output, and
    a chunked job's `chunk_files`: staged for publication (with the sidecar keys naming them),
    and an earlier run's that this run replaces with nothing (stale), if hfenc wrote them."""
    extra: dict[str, str] = dict(chunk_files[0])
    side_files: list[tuple[Path, Path]] = list(chunk_files[1])
    stale: list[Path] = []
    if spec.id_field and not ids_in_file:
        os.replace(ids_tmp, paths.staged(paths.ids))
        side_files.append((paths.staged(paths.ids), paths.ids))
        extra["ids_file"] = paths.ids.name
    if spec.skip_blank:
        with open(paths.staged(paths.lines), "wb") as fh:
            np.save(fh, np.fromfile(lines_tmp, dtype="<i8"))
        side_files.append((paths.staged(paths.lines), paths.lines))
        extra["lines_file"] = paths.lines.name
    if npy:
        raw_to_npy(hashes, paths.staged(paths.hashes), hashes.stat().st_size // WIDTH)
        side_files.append((paths.staged(paths.hashes), paths.hashes))
        extra["hashes_file"] = paths.hashes.name
    made_chunk_files = {final for _, final in chunk_files[1]}
    for made, final in ((spec.id_field and not ids_in_file, paths.ids), (spec.skip_blank, paths.lines),
                        (paths.chunks in made_chunk_files, paths.chunks), (paths.docs in made_chunk_files, paths.docs),
                        (npy, paths.hashes)):
        if not made and final.exists():  # an earlier run's, beside the output this run replaces
            if owns(paths, final):
                stale.append(final)
            else:
                warnings.append(left_alone(final.name))
    return extra, side_files, stale


# ---- what a job records: both engines (this module and hfenc.jobs.ray_runner) build these ---------

def job_fingerprint(job: JobOptions, spec: InputSpec, fmt: str, sha256: str, rows: int, settings: dict[str, Any],
                    weights_sha256: str | None, config_sha256: str | None, **extra: Any) -> dict[str, Any]:
    """What a resumed run must match (hfenc.io.outputs.resume_state names what differs): the input's
    bytes and how they are read, the model's files, every setting that changes a row."""
    return {
        "input_sha256": sha256, "rows": rows, "format": fmt,
        "field": spec.field, "column": spec.column, "id_field": spec.id_field, "skip_blank": spec.skip_blank,
        "tsv_quoting": spec.tsv_quoting, "encoding_errors": spec.encoding_errors,
        "weights_sha256": weights_sha256, "config_sha256": config_sha256,
        "out_dtype": job.out_dtype, "on_overflow": job.on_overflow,
        # everything that changes a row's bits: the batch shape too (the engine's numbers move by an
        # ulp with batch composition), the device, and the libraries that compute them
        **{k: v for k, v in settings.items() if k != "model"},
        **{f"{name}_version": v for name, v in library_versions(settings.get("backend", "torch")).items()},
        **({"reuse": str(Path(job.reuse).resolve())} if job.reuse is not None else {}),  # the same OLD
        **extra,
    }


def input_metadata(job: JobOptions, spec: InputSpec, fmt: str, sha256: str, nbytes: int,
                   files: Any = None) -> dict[str, Any]:
    """The sidecar's "input": `files`, (path, records) per file, when there are several."""
    return {"path": "(--text)" if job.texts else job.input.path, "format": fmt, "sha256": sha256, "bytes": nbytes,
            "field": spec.field if fmt in ("jsonl", "json") else None, "column": spec.column,
            "skip_blank": spec.skip_blank, "tsv_quoting": spec.tsv_quoting if fmt == "tsv" else None,
            "encoding_errors": spec.encoding_errors,
            **({"files": [{"path": p, "rows": n} for p, n in files]} if files else {})}


@dataclass(frozen=True)
class RunTotals:
    """What only the finished job knows."""

    truncated: int
    blank: int
    tokens: int
    resumed_from: int
    elapsed: float
    embed_seconds: float


def job_sidecar(output: Path, rows: int, dim: int, out_dtype: str, input_meta: dict[str, Any],
                describe: dict[str, Any], chunk_size: int, extra: dict[str, Any],
                totals: RunTotals | None = None) -> dict[str, Any]:
    """The sidecar of a job, one shape for both engines; without `totals`, what a Ray shard
    carries while the job runs (no totals, not `complete`)."""
    meta: dict[str, Any] = {"format": SIDECAR_FORMAT}
    if totals is not None:
        meta["complete"] = True
    meta.update({"output": output.name, "rows": rows, "dim": dim, "out_dtype": out_dtype})
    if totals is not None:
        meta.update({"truncated_rows": totals.truncated, "blank_rows": totals.blank, "tokens": totals.tokens})
    meta.update({"input": input_meta, **describe, "chunk_size": chunk_size})
    if totals is not None:
        meta.update({"resumed_from_row": totals.resumed_from or None,  # with --ray: a count of rows, not a prefix
                     "elapsed_seconds": round(totals.elapsed, 3), "embed_seconds": round(totals.embed_seconds, 3),
                     "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    meta.update(extra)
    return meta
