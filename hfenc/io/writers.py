"""Which writer an embedding job gets: the output format (.npy or .parquet), and quantization.

The format comes from the output's suffix (.npy; .parquet or .pq), or --out-format, which
decides for a path with another suffix (and for the default output name) but may not contradict
a known suffix: `-o x.npy --out-format parquet` is refused rather than writing Parquet bytes under
a .npy name. Each format is one class with RowWriter's interface (hfenc.io.outputs.RowWriter,
hfenc.io.parquet.ParquetWriter); --quantize wraps either in QuantizingWriter, which hands the engine
float32 rows and stores their codes (hfenc.io.quantize).

Only options that differ from the plain .npy job enter the resume fingerprint, so a run
interrupted before these options existed still resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hfenc.errors import ConfigError, UnknownChoiceError
from hfenc.io.inputs import InputSpec, records
from hfenc.io.outputs import OutputPaths, RowWriter, file_sha256
from hfenc.io.quantize import (CALIBRATION_ROWS, CALIBRATION_SEED, PRECISIONS, SCALAR, Quantization, check_precision,
                       load_ranges, ranges_from, sample_rows)

OUT_FORMATS = ("npy", "npz", "parquet")  # npz: a sparse model's rows (SciPy CSR, hfenc.io.npz)
_SUFFIXES = {".npy": "npy", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet"}
_DEFAULT_SUFFIX = {"npy": ".npy", "npz": ".npz", "parquet": ".parquet"}


def out_format(path: Path | None, override: str | None, sparse: bool | None = None) -> str:
    """The output format of `path` (None: the default output), given --out-format `override`: the one
    place it is decided. The suffix decides; --out-format decides for a path with another suffix but
    may not contradict a known one; with neither, an unknown suffix is refused (never guessed)."""
    if override is not None and override not in OUT_FORMATS:
        raise UnknownChoiceError("output format", override, OUT_FORMATS)
    by_suffix = _SUFFIXES.get(path.suffix.lower()) if path is not None else None
    if override is not None and by_suffix is not None and override != by_suffix:
        raise ConfigError(f"output {path} has the {path.suffix} suffix but --out-format {override} was asked for",
                          hint=f"name the output *{_DEFAULT_SUFFIX[override]}, or drop --out-format")
    if path is not None and override is None and by_suffix is None:
        raise ConfigError(f"output {path}: unknown output type {path.suffix.lower() or '(no suffix)'!r}; "
                          f"hfenc writes {', '.join(sorted(_SUFFIXES))}")
    return override or by_suffix or ("npz" if sparse else "npy")


def default_path(default: Path, fmt: str) -> Path:
    """The default output (INPUT's stem beside it) with the format's suffix."""
    return default.with_suffix(_DEFAULT_SUFFIX[fmt])


def check_quantize(quantize: str | None, ranges: Any, out_dtype: str) -> None:
    if quantize is not None:
        check_precision(quantize)
        if out_dtype != "float32":
            raise ConfigError(f"--quantize {quantize} stores codes, so --out-dtype {out_dtype} has no meaning with it",
                              hint="drop --out-dtype")
    if ranges is not None:
        if quantize not in SCALAR:
            raise ConfigError("--ranges is for --quantize int8 or uint8")
        if not Path(ranges).is_file():
            raise ConfigError(f"ranges file {ranges} does not exist")


def check_sparse(fmt: str, sparse: bool | None, quantize: str | None, out_dtype: str) -> None:
    """A sparse model's rows go to .npz or Parquet, as float32 entries; a dense model's never to
    .npz. `sparse` None: not known yet (checked again once the model is loaded)."""
    if sparse is None:
        return
    if sparse and fmt == "npy":
        raise ConfigError("a sparse (SPLADE) model's rows go to .npz (SciPy CSR) or .parquet, not .npy",
                          hint="write -o OUT.npz or -o OUT.parquet")
    if not sparse and fmt == "npz":
        raise ConfigError("a .npz output holds sparse rows; this model makes dense embeddings",
                          hint="write -o OUT.npy or -o OUT.parquet")
    if sparse and quantize is not None:
        raise ConfigError(f"--quantize {quantize} is for dense embeddings; a sparse row is already its few "
                          "active entries", hint="--max-active-dims K keeps each row's K largest")
    if sparse and out_dtype != "float32":
        raise ConfigError(f"--out-dtype {out_dtype}: a sparse output stores float32 values", hint="drop --out-dtype")


def check_options(output: Path | None, override: str | None, quantize: str | None, ranges: Any,
                  keep_text: bool, out_dtype: str, sparse: bool | None = None) -> str:
    """Refuse option combinations that cannot work, before anything is read; returns the format."""
    fmt = out_format(output, override, sparse)
    check_sparse(fmt, sparse, quantize, out_dtype)
    check_quantize(quantize, ranges, out_dtype)
    if keep_text and fmt != "parquet":
        raise ConfigError("--keep-text needs a Parquet output (the .npy format holds numbers only)",
                          hint="write -o OUT.parquet")
    if fmt == "parquet":
        from hfenc.io.parquet import arrow

        arrow()  # a missing pyarrow fails here, naming the extra
    return fmt


def fingerprint_of(fmt: str, quantize: str | None, ranges: Any, keep_text: bool) -> dict[str, Any]:
    """What these options add to the resume fingerprint (nothing for a plain .npy job)."""
    extra: dict[str, Any] = {}
    if fmt != "npy":
        extra["out_format"] = fmt
        extra["keep_text"] = keep_text
    if quantize is not None:
        extra["quantize"] = quantize
        if quantize in SCALAR:
            extra["calibration"] = ({"ranges_file_sha256": file_sha256(Path(ranges))} if ranges is not None else
                                    {"sample_rows": CALIBRATION_ROWS, "seed": CALIBRATION_SEED})
    return extra


def calibrate(model: Any, spec: InputSpec, rows: int,
              texts_of: Callable[[np.ndarray], list[str]] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """int8/uint8 ranges from the rows `sample_rows(rows)` picks, embedded with `model` (the
    embedding pipeline truncates and normalizes, so the ranges are of what gets quantized).
    `texts_of(rows)`: the rows' texts, where a row is not a record (a chunked job's chunks)."""
    picks = sample_rows(rows)
    texts: list[str] = []
    if texts_of is not None:
        texts = texts_of(picks)
    for i, record in enumerate(records(spec) if texts_of is None else ()):
        if len(texts) == len(picks):
            break
        if i == picks[len(texts)]:
            texts.append(record.text)
    sample = model.encode(texts)
    return ranges_from(sample), {"method": "sample", "rows": len(picks), "of_rows": rows,
                                 "max_rows": CALIBRATION_ROWS, "seed": CALIBRATION_SEED}


def scalar_ranges(dim: int, ranges: Any, sample: Callable[[], tuple[np.ndarray, dict[str, Any]]]
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    """int8/uint8 ranges and how they were obtained: from --ranges FILE, else `sample()` (calibrate)."""
    if ranges is not None:
        return load_ranges(ranges, dim), {"method": "file", "path": str(ranges), "sha256": file_sha256(Path(ranges))}
    return sample()


def calibration_warnings(quantization: Quantization) -> list[str]:
    how, rows = quantization.calibration or {}, (quantization.calibration or {}).get("rows")
    if how.get("method") == "sample" and isinstance(rows, int) and rows < 100:
        return [f"{quantization.precision} ranges were calibrated on only {rows} rows; "
                "--ranges FILE from a bigger corpus gives steadier codes"]
    return []


class QuantizingWriter:
    """Hands the engine float32 rows and writes their codes through `inner` (any writer with
    RowWriter's interface); keeps the ranges in the resume state."""

    def __init__(self, inner: Any, quantization: Quantization) -> None:
        self.inner, self.quantization = inner, quantization
        self._pending: tuple[int, np.ndarray] | None = None
        self._given: tuple[np.ndarray, np.ndarray] | None = None

    def __getattr__(self, name: str) -> Any:  # rows_done, stats, publishing, finish, abandon, ...
        return getattr(self.inner, name)

    def rows(self, start: int, n: int) -> np.ndarray:
        block = np.zeros((n, self.quantization.dim), dtype=np.float32)
        self._pending, self._given = (start, block), None
        return block

    def give(self, positions: np.ndarray, codes: np.ndarray) -> None:
        """Codes of rows of the pending block that were not computed (reused, stored as they were)."""
        self._given = (positions, codes)

    def save_state(self, rows_done: int, stats: dict | None = None, publishing: dict | None = None) -> None:
        if self._pending is not None:
            start, block = self._pending
            if start + len(block) == rows_done:
                codes = self.quantization(block)
                if self._given is not None:
                    codes[self._given[0]] = self._given[1]
                self.inner.rows(start, len(block))[...] = codes
                self._pending, self._given = None, None
        stats = dict(stats or {})
        if self.quantization.ranges is not None:
            stats["quantization_ranges"] = self.quantization.ranges.tolist()
            stats["quantization_calibration"] = self.quantization.calibration
        self.inner.save_state(rows_done, stats, publishing)


@dataclass
class Output:
    """The writer of one job and what the sidecar says about it."""

    writer: Any
    format: str
    quantization: Quantization | None
    keep_text: bool
    ids_in_file: bool  # Parquet holds the id column: no OUT.ids.txt
    float_dtype: str = "float32"  # --out-dtype, when not quantized
    chunked: bool = False  # a row per chunk, with provenance columns (Parquet)
    warnings: list[str] = field(default_factory=list)

    @property
    def out_dtype(self) -> str:
        """The stored element type (the sidecar's "out_dtype")."""
        return str(self.quantization.dtype) if self.quantization is not None else self.float_dtype

    def tap(self, chunks: Iterator[tuple[int, list[str]]]) -> Iterator[tuple[int, list[str]]]:
        tap = getattr(self.writer, "tap", None)
        return tap(chunks) if tap is not None else chunks

    def counts(self, start: int, tok: Any) -> None:
        """A computed chunk's token counts and truncation, for a writer that stores them (Parquet)."""
        counts = getattr(self.writer, "counts", None)
        if counts is not None:
            counts(start, tok.row_tokens(), tok.row_truncated())

    def put(self, block: np.ndarray, positions: np.ndarray, stored: np.ndarray) -> None:
        """Rows of the block the engine fills that come stored already (reuse): in place, or as
        codes the quantizing writer keeps over its own."""
        if self.quantization is not None:
            self.writer.give(positions, stored)
        else:
            block[positions] = stored

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"out_format": self.format,
                                "quantization": None if self.quantization is None else self.quantization.record()}
        if self.format == "parquet":
            from hfenc.io.parquet import PROVENANCE

            meta["columns"] = ["row", *([("doc_id" if self.chunked else "id")] if self.ids_in_file else []),
                               *(PROVENANCE if self.chunked else ()), *(["text"] if self.keep_text else []),
                               "tokens", "truncated", "text_sha256", "embedding"]
        return meta


def open_output(paths: OutputPaths, fmt: str, rows: int, dim: int, out_dtype: str, fingerprint: dict,
                resume: bool, *, quantize: str | None = None, ranges: Any = None, keep_text: bool = False,
                ids: Path | None = None, model: Any = None, spec: InputSpec | None = None,
                provenance: Any = None, texts_of: Callable[[np.ndarray], list[str]] | None = None,
                hashes: Path | None = None, given_ranges: tuple[np.ndarray, dict[str, Any]] | None = None,
                sparse: bool = False) -> Output:
    """Open (or, with `resume`, reopen) the writer; for int8/uint8 without `ranges`, calibrate on
    a sample of the input unless the interrupted run had (its ranges are in the resume state) or
    `given_ranges` says them (reuse: the earlier output's). `hashes`: the rows' text hashes (a raw
    file, hfenc.io.hashes), which a Parquet output holds in a column."""
    fingerprint = {**fingerprint, **fingerprint_of(fmt, quantize, ranges, keep_text)}
    width, dtype = dim, np.dtype(out_dtype)
    if quantize is not None:
        q = Quantization(quantize, dim)
        width, dtype = q.width, q.dtype
    if fmt == "parquet":
        from hfenc.io.parquet import ParquetWriter

        inner: Any = ParquetWriter(paths, rows, width, dtype, fingerprint, resume, ids=ids, keep_text=keep_text,
                                   provenance=provenance, hashes=hashes, sparse=sparse)
    elif fmt == "npz":
        from hfenc.io.npz_writer import NpzWriter

        inner = NpzWriter(paths, rows, dim, fingerprint, resume)
    else:
        inner = RowWriter(paths, rows, width, dtype, fingerprint, resume)
    output = Output(inner, fmt, None, keep_text, fmt == "parquet" and ids is not None, out_dtype,
                    chunked=provenance is not None)
    if quantize is None:
        return output
    quantization = Quantization(quantize, dim)
    if quantize in SCALAR:
        saved = inner.stats.get("quantization_ranges")
        if inner.publishing is not None:
            pass  # only the publication is left: the sidecar already records the ranges
        elif saved is not None:  # validated as a record, as a sidecar's is
            quantization = Quantization.from_record(
                {"precision": quantize, "dim": dim, "ranges": saved,
                 "calibration": inner.stats.get("quantization_calibration")}, f"the resume state {paths.state.name}")
        else:
            try:
                assert ranges is not None or given_ranges is not None or (model is not None and spec is not None)
                values, how = given_ranges or scalar_ranges(dim, ranges, lambda: calibrate(model, spec, rows, texts_of))
            except BaseException:
                if inner.rows_done == 0:
                    inner.abandon()  # nothing was embedded yet: leave nothing behind
                raise
            quantization = Quantization(quantize, dim, values, how)
            inner.save_state(inner.rows_done, {**inner.stats, "quantization_ranges": values.tolist(),
                                               "quantization_calibration": how})
        output.warnings.extend(calibration_warnings(quantization))
    output.writer, output.quantization = QuantizingWriter(inner, quantization), quantization
    return output


__all__ = ["OUT_FORMATS", "PRECISIONS", "Output", "QuantizingWriter", "calibrate", "check_options",
           "default_path", "open_output", "out_format"]
