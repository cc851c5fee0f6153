"""An embedding job: input file -> validated records -> Embedder -> .npy + sidecar, resumable.

Order matters for failing early: output checks and the input scan (cheap, and they catch most
mistakes) run before the model is loaded; the output is reserved only after the model loaded.
A run that fails after rows were saved keeps its partial output and state for --resume; a run
refused on purpose (--on-overflow error) removes everything it wrote.
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

from .embedder import Embedder
from .engine import Progress, RunStats
from . import faults
from .errors import (ConfigError, HfencError, InputChanged, Interrupted, OutputError, OverflowRefused,
                     UnknownChoiceError)
from .inputs import InputSpec, chunks, records, scan, spool_stdin
from .outputs import SIDECAR_FORMAT, OutputPaths, RowWriter, check_writable, default_output, owns

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


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the job like Ctrl-C does: finished chunks are kept for --resume."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _validate(job: JobOptions) -> OutputPaths:
    if job.out_dtype not in OUT_DTYPES:
        raise UnknownChoiceError("output dtype", job.out_dtype, OUT_DTYPES)
    if job.on_overflow not in ("truncate", "error"):
        raise UnknownChoiceError("overflow policy", job.on_overflow, ("truncate", "error"))
    if job.chunk_size < 1:
        raise ConfigError(f"chunk size must be positive, got {job.chunk_size}")
    if job.input.path == "-" and job.output is None:
        raise ConfigError("reading standard input needs an output path", hint="pass -o OUT.npy")
    job.input.resolved_format()  # an unknown --format fails here
    return OutputPaths(Path(job.output) if job.output is not None else default_output(job.input.path))


def _line_of(spec: InputSpec, row: int) -> int:
    """The input line where record `row` starts (found again only when a refusal needs it)."""
    for i, record in enumerate(records(spec)):
        if i == row:
            return record.line
    return row + 1


def embed_file(
    job: JobOptions,
    embedder: Embedder | Callable[[], Embedder],
    progress: Callable[[Progress], None] | None = None,
) -> JobResult:
    """Run one job. `embedder` may be a factory, so that it is only loaded once the input is valid."""
    t0 = time.perf_counter()
    paths = _validate(job)
    writes = tuple(p for made, p in ((job.input.id_field, paths.ids), (job.input.skip_blank, paths.lines)) if made)
    check_writable(paths, job.force, job.resume, writes)
    with _sigterm_as_interrupt():  # from here on SIGTERM unwinds like Ctrl-C: temp files go
        return _embed_file(job, paths, embedder, progress, t0)


def _embed_file(job, paths, embedder, progress, t0) -> JobResult:
    spooled = spool_stdin(paths.npy.parent) if job.input.path == "-" else None
    spec = replace(job.input, path=str(spooled)) if spooled else job.input
    # The scan's side files; they are staged for publication only once the rows are done.
    ids_tmp = paths.hidden(paths.ids, "scan")
    lines_tmp = paths.hidden(paths.lines, "scan")
    try:
        with open(ids_tmp, "w", encoding="utf-8") if spec.id_field else nullcontext() as ids_out, \
             open(lines_tmp, "wb") if spec.skip_blank else nullcontext() as lines_out:
            info = scan(spec, ids_out, lines_out)
        faults.point("scanned")
        model = embedder() if callable(embedder) and not isinstance(embedder, Embedder) else embedder
        faults.point("loaded")
        return _run(job, spec, paths, info, model, ids_tmp, lines_tmp, progress, t0)
    finally:
        for tmp in (ids_tmp, lines_tmp, spooled):
            if tmp is not None and tmp.exists():
                tmp.unlink()


def _run(job, spec, paths, info, model: Embedder, ids_tmp, lines_tmp, progress, t0) -> JobResult:
    settings = asdict(model.settings)
    fingerprint = {
        "input_sha256": info.sha256, "rows": info.rows, "format": spec.resolved_format(),
        "field": spec.field, "column": spec.column, "skip_blank": spec.skip_blank, "tsv_quoting": spec.tsv_quoting,
        "weights_sha256": model.weights_hash, "config_sha256": model.config_hash, "chunk_size": job.chunk_size, "out_dtype": job.out_dtype,
        "on_overflow": job.on_overflow,
        **{k: v for k, v in settings.items() if k not in ("model", "device", "batch_tokens")},
    }
    writer = RowWriter(paths, info.rows, model.dim, np.dtype(job.out_dtype), fingerprint, job.resume)
    if writer.publishing is not None:  # the earlier run had finished its rows: publish them
        metadata = writer.finish_publication()
        return JobResult(paths.npy, paths.sidecar, info.rows, model.dim, time.perf_counter() - t0,
                         metadata.get("truncated_rows", 0), info.blank, metadata.get("tokens", 0),
                         writer.rows_done, metadata, warnings=["the interrupted run had finished; its output is now published"])
    resumed_from = writer.rows_done
    saved = writer.stats
    stats = RunStats(rows=0, tokens=saved.get("tokens", 0), truncated=saved.get("truncated", 0),
                     first_truncated=saved.get("first_truncated"))

    def on_chunk(start: int, n: int, s: RunStats) -> None:
        if job.on_overflow == "error" and s.first_truncated is not None:
            raise OverflowRefused(
                f"line {_line_of(spec, s.first_truncated)} is longer than the maximum of {model.max_length} tokens",
                hint="raise --max-length, or drop --on-overflow error to truncate",
            )
        writer.save_state(start + n, {"tokens": s.tokens, "truncated": s.truncated,
                                      "first_truncated": s.first_truncated})
        faults.point("chunk-saved")

    def report(p: Progress) -> None:
        if progress is not None:
            progress(Progress(resumed_from + p.rows_done, info.rows, p.tokens_done, p.elapsed, resumed_from))

    t_embed = time.perf_counter()
    try:
        model.engine.run(
            chunks(spec, job.chunk_size, resumed_from, expected=info), writer.rows, on_chunk=on_chunk,
            progress=report, rows_total=info.rows, stats=stats,
        )
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted: {writer.rows_done:,} of {info.rows:,} rows are saved", rows_done=writer.rows_done
        ) from None
    except (OverflowRefused, InputChanged):  # a refusal, or rows of other bytes: nothing half-written stays
        writer.abandon()
        raise
    except HfencError:
        raise
    except OSError as exc:  # disk full, permissions changed, a device error: saved rows stay
        raise OutputError(
            f"cannot go on writing {paths.npy}: {exc.strerror or exc}; {writer.rows_done:,} rows are saved",
            hint="fix the cause, then rerun with --resume",
        ) from None

    embed_seconds = time.perf_counter() - t_embed
    warnings = list(model.notes)
    if info.blank and not spec.skip_blank:
        warnings.append(f"{info.blank:,} blank record(s) were embedded as empty texts; --skip-blank drops them")
    if stats.truncated:
        warnings.append(f"{stats.truncated:,} text(s) were longer than {model.max_length} tokens and truncated")
    elapsed = time.perf_counter() - t0
    extra, side_files, stale = {}, [], []
    if spec.id_field:
        os.replace(ids_tmp, paths.staged(paths.ids))
        side_files.append((paths.staged(paths.ids), paths.ids))
        extra["ids_file"] = paths.ids.name
    if spec.skip_blank:
        with open(paths.staged(paths.lines), "wb") as fh:
            np.save(fh, np.fromfile(lines_tmp, dtype="<i8"))
        side_files.append((paths.staged(paths.lines), paths.lines))
        extra["lines_file"] = paths.lines.name
    for made, final in ((spec.id_field, paths.ids), (spec.skip_blank, paths.lines)):
        if not made and final.exists():  # an earlier run's, beside the output this run replaces
            if owns(paths, final):
                stale.append(final)
            else:
                warnings.append(f"left {final.name} alone: hfenc did not write it")
    metadata = {
        "format": SIDECAR_FORMAT,
        "complete": True,
        "output": paths.npy.name,
        "rows": info.rows,
        "dim": model.dim,
        "out_dtype": job.out_dtype,
        "truncated_rows": stats.truncated,
        "blank_rows": info.blank,
        "tokens": stats.tokens,
        "input": {"path": job.input.path, "format": spec.resolved_format(), "sha256": info.sha256,
                  "bytes": info.bytes, "field": spec.field if spec.resolved_format() == "jsonl" else None,
                  "column": spec.column, "skip_blank": spec.skip_blank,
                  "tsv_quoting": spec.tsv_quoting if spec.resolved_format() == "tsv" else None},
        **model.describe(),
        "chunk_size": job.chunk_size,
        "resumed_from_row": resumed_from or None,
        "elapsed_seconds": round(elapsed, 3),
        "embed_seconds": round(embed_seconds, 3),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    metadata = writer.finish(metadata, side_files, stale)
    return JobResult(paths.npy, paths.sidecar, info.rows, model.dim, elapsed, stats.truncated, info.blank,
                     stats.tokens, resumed_from, metadata, embed_seconds=embed_seconds, warnings=warnings)

