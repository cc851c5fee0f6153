"""Quantized embeddings as sentence-transformers defines them (`quantize_embeddings`), in numpy.

Precisions and what a row becomes (d: the embedding width, after any Matryoshka truncation and
normalization, which happen in the pipeline before quantization):

  int8     d int8 codes:  floor((x - min) / step) clipped to 0..255, minus 128
  uint8    d uint8 codes: floor((x - min) / step) clipped to 0..255
  binary   ceil(d/8) int8:  numpy.packbits(x > 0) - 128
  ubinary  ceil(d/8) uint8: numpy.packbits(x > 0)

with per-dimension ranges = [[min...], [max...]] (float32, shape (2, d)) and
step = (max - min) / 255 (1 where max == min). The arithmetic is sentence-transformers' own,
step for step in float32, so hfenc's codes equal `quantize_embeddings(x, precision, ranges=...)`
bit for bit (tests/test_quantize.py checks it). sentence-transformers is not imported here: it
is a test dependency only.

Calibration (int8/uint8): the ranges come from a sample of this corpus, never from one batch:
the rows `sample_rows(N)` picks (all N rows when N <= 10,000, else 10,000 rows drawn without
replacement by numpy's default_rng(0), in row order) are embedded once before the main pass,
and min/max over them per dimension are the ranges. Trade-off: a corpus of N <= 10,000 rows is
embedded twice (the sample is all of it); a bigger one pays 10,000 extra rows. Rows outside the
sample's range are clipped to 0 / 255, as sentence-transformers does. `--ranges FILE` gives
ranges instead (a (2, d) .npy, a JSON [[min...], [max...]], or the sidecar of another index).
The exact ranges are recorded in the sidecar (and in the resume state, so a resumed run
quantizes with the very same arrays without embedding the sample again), and `search` uses them
to quantize queries the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hfenc.errors import ConfigError, UnknownChoiceError

Precision = Literal["int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = ("int8", "uint8", "binary", "ubinary")
SCALAR = ("int8", "uint8")
CALIBRATION_ROWS = 10_000
CALIBRATION_SEED = 0


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UnknownChoiceError("quantization", precision, PRECISIONS)
    return precision


def stored_dtype(precision: str) -> np.dtype:
    return np.dtype(np.int8 if precision in ("int8", "binary") else np.uint8)


def stored_width(precision: str, dim: int) -> int:
    """Values per stored row: d codes, or d bits packed into ceil(d/8) bytes."""
    return dim if precision in SCALAR else (dim + 7) // 8


def _steps(ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ranges = np.asarray(ranges).astype(np.float32, copy=False)
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    return starts, np.where(steps == 0, 1, steps)


def quantize(embeddings: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """Codes of float rows (n, d), as sentence-transformers' quantize_embeddings computes them."""
    check_precision(precision)
    x = np.asarray(embeddings)
    if x.dtype.kind != "f":
        raise ConfigError(f"embeddings to quantize must be float, not {x.dtype}")
    if precision in SCALAR:
        if ranges is None:
            raise ConfigError(f"{precision} quantization needs calibration ranges")
        starts, steps = _steps(ranges)
        codes = np.clip(np.floor((x - starts) / steps), 0, 255)
        return codes.astype(np.uint8) if precision == "uint8" else (codes - 128).astype(np.int8)
    packed = np.packbits(x > 0, axis=-1)
    return (packed - 128).astype(np.int8) if precision == "binary" else packed


def dequantize(codes: np.ndarray, precision: str, ranges: np.ndarray) -> np.ndarray:
    """int8/uint8 codes back to float32 coordinates (the bottom of each bucket), as
    sentence-transformers restores candidates before rescoring."""
    starts, steps = _steps(ranges)
    values = codes.astype(np.float32)
    if precision == "int8":
        values += 128
    return values * steps + starts


def unpack_bits(codes: np.ndarray, precision: str, dim: int) -> np.ndarray:
    """binary/ubinary rows back to their d bits (0/1, uint8)."""
    raw = codes.view(np.uint8) ^ np.uint8(0x80) if precision == "binary" else codes.view(np.uint8)
    return np.unpackbits(raw, axis=-1)[..., :dim]


def as_ubinary(codes: np.ndarray, precision: str) -> np.ndarray:
    """Packed bits as uint8 (binary's -128 offset undone), the form Hamming distances need."""
    return codes.view(np.uint8) ^ np.uint8(0x80) if precision == "binary" else codes.view(np.uint8)


def ranges_from(sample: np.ndarray) -> np.ndarray:
    """Per-dimension [min, max] of a calibration sample (float32, shape (2, d))."""
    if sample.ndim != 2 or sample.shape[0] < 2:
        raise ConfigError(f"calibration ranges need at least 2 rows; the sample has {sample.shape[0]}",
                          hint="embed more rows, or give ranges with --ranges FILE")
    return np.vstack((sample.min(axis=0), sample.max(axis=0))).astype(np.float32)


def sample_rows(n: int, size: int = CALIBRATION_ROWS, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """The calibration rows of an N-row input, in row order (see the module docstring)."""
    if n <= size:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)).astype(np.int64)


def load_ranges(path: str | Path, dim: int | None = None) -> np.ndarray:
    """Ranges from a file: a (2, d) .npy, a JSON [[min...], [max...]], or an hfenc sidecar whose
    `quantization.ranges` holds them. Checked: shape (2, d), finite, min <= max."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ranges file {p} does not exist")
    try:
        if p.suffix == ".npy":
            data: Any = np.load(p, allow_pickle=False)
        else:
            data = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                recorded = data.get("quantization")
                data = recorded.get("ranges") if isinstance(recorded, dict) else None
                if data is None:
                    raise ValueError("it has no quantization.ranges")
        ranges = np.asarray(data, dtype=np.float32)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read ranges from {p}: {' '.join(str(exc).split())}") from None
    if ranges.ndim != 2 or ranges.shape[0] != 2:
        raise ConfigError(f"ranges in {p} have shape {ranges.shape}; expected (2, d): a row of minima, a row of maxima")
    if dim is not None and ranges.shape[1] != dim:
        raise ConfigError(f"ranges in {p} are {ranges.shape[1]} wide; the embeddings are {dim} wide")
    if not np.isfinite(ranges).all() or (ranges[0] > ranges[1]).any():
        raise ConfigError(f"ranges in {p} must be finite with every minimum <= its maximum")
    return ranges


@dataclass(frozen=True)
class Quantization:
    """How rows are quantized; `record()` is the sidecar's "quantization" value."""

    precision: str
    dim: int  # the float width before quantization
    ranges: np.ndarray | None = None  # (2, dim) float32 for int8/uint8
    calibration: dict | None = None  # how the ranges were obtained

    @property
    def dtype(self) -> np.dtype:
        return stored_dtype(self.precision)

    @property
    def width(self) -> int:
        return stored_width(self.precision, self.dim)

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        return quantize(embeddings, self.precision, self.ranges)

    def record(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "dim": self.dim,
            "stored_width": self.width,
            "ranges": None if self.ranges is None else self.ranges.tolist(),  # float32 -> exact in JSON
            "calibration": self.calibration,
        }

    @classmethod
    def from_record(cls, record: object, where: str = "the sidecar") -> Quantization:
        """A recorded quantization read back (a file on disk: untrusted); one ConfigError if unsound."""
        def bad(why: str) -> ConfigError:
            return ConfigError(f"{where} records an unusable quantization ({why})",
                               hint="embed the input again, or restore the file hfenc wrote")

        if not isinstance(record, dict) or not isinstance(record.get("precision"), str):
            raise bad("no precision")
        precision = check_precision(record["precision"])
        dim = record.get("dim")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise bad("dim is not a positive integer")
        ranges = record.get("ranges")
        if precision in SCALAR:
            try:
                ranges = np.asarray(ranges, dtype=np.float32)
            except (TypeError, ValueError):
                raise bad(f"ranges are not 2 x {dim} numbers") from None
            if ranges.shape != (2, dim) or not np.isfinite(ranges).all():
                raise bad(f"ranges are not 2 x {dim} finite numbers")
        elif ranges is not None:
            raise bad(f"{precision} has no ranges")
        calibration = record.get("calibration")
        return cls(precision, dim, ranges, calibration if isinstance(calibration, dict) else None)
