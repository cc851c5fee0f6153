"""`hfenc verify OUT` (issue 24): an output still is what its sidecar says it is.

Three layers, each a list of problems (one line each; none: the output is sound):
  1. the sidecar: hfenc's, readable, and sealed (`sidecar_sha256`, the hash of its own content:
     a hand edit of any key shows);
  2. the files: each one the sidecar (or a --ray directory's manifest) lists has its recorded size
     and SHA-256; the array's shape and dtype, the Parquet file's rows, columns and row numbers,
     and the side files' lengths agree with the sidecar;
  3. the numbers: a sample of rows (`sample`, default 64, seeded; `every` for all) is embedded
     again from the input with the recorded settings (hfenc.io.sidecar.recorded_embedder) and
     compared with the stored rows, within the tolerance of the dtype it is computed in.

Tolerances (per row; `TOLERANCE`): float32 compute, a cosine >= 0.99999 (rows move by an ulp
with the batch they are computed in); float16/bfloat16 >= 0.999; OpenVINO int8 >= 0.99. Quantized
rows are quantized again with the recorded ranges and compared as codes, int8/uint8 dequantized,
binary as +-1 vectors, with the float bound less a little for a code that tips over: 0.9999 /
0.999 / 0.98 (binary: 0.98 / 0.95 / 0.9). A late-chunked row is embedded with its whole document,
as `embed` made it.

Sparse (SPLADE) outputs, a CSR .npz or Parquet list<struct<index, value>> (hfenc.verification.sparse):
the layout of their entries (sorted indices inside the vocabulary, finite values, at most
max_active_dims a row), and rows embedded again on the recorded side compared entry by entry:
the active dimensions alike but for entries near 0 (or a near-tie at the top-k cut), the cosine
as above, and each value within 1e-3 (float32) / 5e-2 (16-bit) of its row's largest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfenc.errors import InputError
from hfenc.io.outputs import MANIFEST, SEAL, OutputPaths, file_sha256, read_sidecar, seal_of
from hfenc.verification.rows import TOLERANCE, check_layout, check_rows

__all__ = ["TOLERANCE", "Report", "verify"]


@dataclass
class Report:
    output: str
    rows: int = 0
    files: int = 0  # files whose hash was checked
    sampled: int = 0  # rows embedded again
    min_cosine: float | None = None
    tolerance: float | None = None
    computed_in: str | None = None
    # sparse rows: the largest difference of a value over its row's largest value, and its bound
    max_difference: float | None = None
    value_tolerance: float | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "ok": self.ok, "rows": self.rows, "files_checked": self.files,
                "rows_embedded_again": self.sampled, "min_cosine": self.min_cosine, "tolerance": self.tolerance,
                "computed_in": self.computed_in,
                **({"max_difference": self.max_difference, "value_tolerance": self.value_tolerance}
                   if self.value_tolerance is not None else {}),
                "problems": self.problems, "notes": self.notes}


def verify(output: str | Path, *, sample: int = 64, every: bool = False, input: str | Path | None = None,
           device: str = "auto", seed: int = 0) -> Report:
    """Check `output` (an .npy, .npz or Parquet output, or a --ray directory); see the module docstring."""
    path = Path(output)
    report = Report(str(path))
    if not path.exists():
        raise InputError(f"{path} does not exist")
    listing = path / MANIFEST if path.is_dir() else OutputPaths(path).sidecar
    sidecar = read_sidecar(listing)
    if sidecar is None:
        raise InputError(f"{path} has no hfenc sidecar ({listing.name})", hint="verify an output of `hfenc embed`")
    report.rows = int(sidecar.get("rows") or 0)
    _check_sidecar(sidecar, listing, report)
    if report.ok:
        _check_files(path, sidecar, report)
    if report.ok and (sample > 0 or every):
        check_rows(path, sidecar, report, sample=None if every else sample, input=input, device=device, seed=seed)
    return report


def _check_sidecar(sidecar: dict[str, Any], listing: Path, report: Report) -> None:
    from hfenc.io.sidecar import check_sidecar

    try:
        check_sidecar(sidecar, str(listing))
    except InputError as exc:
        report.problems.append(str(exc))
        return
    if not sidecar.get("complete"):
        report.problems.append(f"{listing.name} does not describe a finished output")
    if SEAL not in sidecar:
        report.notes.append(f"{listing.name} has no seal (an hfenc before 0.2 wrote it): edits to it cannot be seen")
    elif seal_of(sidecar) != sidecar[SEAL]:
        report.problems.append(f"{listing.name} was edited after hfenc wrote it: its content no longer matches "
                               f"its {SEAL}")


def _check_files(path: Path, sidecar: dict[str, Any], report: Report) -> None:
    folder = path if path.is_dir() else path.parent
    listed = dict(sidecar.get("files") or {})
    for shard in sidecar.get("shards") or []:
        if isinstance(shard, dict) and isinstance(shard.get("file"), str):
            listed[shard["file"]] = shard
    if not path.is_dir() and path.name not in listed:
        report.problems.append(f"{sidecar_name(path)} does not list {path.name}")
    for name, entry in sorted(listed.items()):
        target = folder / name
        if not target.is_file():
            report.problems.append(f"{name} is missing")
        elif target.stat().st_size != entry.get("bytes"):
            report.problems.append(f"{name} has {target.stat().st_size:,} bytes; the sidecar records {entry.get('bytes'):,}")
        elif "sha256" in entry and file_sha256(target) != entry["sha256"]:
            report.problems.append(f"{name} has changed: its SHA-256 is not the one the sidecar records")
        else:
            report.files += 1
    if report.ok:
        check_layout(path, sidecar, report)


def sidecar_name(path: Path) -> str:
    return MANIFEST if path.is_dir() else OutputPaths(path).sidecar.name
