"""Output that is either whole or absent: a memory-mapped .npy, its sidecar, and resume state.

Rows go into a hidden `.NAME.partial` file beside the output (numpy's open_memmap, space reserved
up front so a full disk fails at the start instead of as a SIGBUS mid-run). After each chunk the
map is flushed and a small state file records how many rows are final, so SIGKILL loses at most
the chunk in flight. At the end: flush, fsync, rename into place, then write the sidecar
(atomically) that says the output is complete. An interrupted run never leaves a file at the
final path.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from .errors import OutputError, ResumeError


@dataclass(frozen=True)
class OutputPaths:
    npy: Path

    @property
    def sidecar(self) -> Path:
        return self.npy.with_name(self.npy.name + ".json")

    @property
    def ids(self) -> Path:
        return self.npy.with_name(self.npy.stem + ".ids.txt")

    @property
    def lines(self) -> Path:
        return self.npy.with_name(self.npy.stem + ".lines.npy")

    def hidden(self, final: Path, tag: str) -> Path:
        return final.with_name(f".{final.name}.{tag}")

    @property
    def partial(self) -> Path:
        return self.hidden(self.npy, "partial")

    @property
    def state(self) -> Path:
        return self.hidden(self.npy, "resume.json")

    def finals(self) -> list[Path]:
        return [self.npy, self.sidecar, self.ids, self.lines]


def default_output(input_path: str) -> Path:
    """INPUT's stem + .npy next to it (data.jsonl.gz -> data.npy)."""
    p = Path(input_path)
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    return p.with_name(Path(name).stem + ".npy")


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(paths: OutputPaths, force: bool, resume: bool) -> None:
    """Fail before any work when the output cannot be written, or exists and --force is absent."""
    directory = paths.npy.parent
    if not directory.is_dir():
        raise OutputError(f"output directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {directory} is not writable")
    if paths.npy.is_dir():
        raise OutputError(f"output {paths.npy} is a directory")
    if paths.npy.exists() and not force and not (resume and paths.state.exists()):
        raise OutputError(f"output {paths.npy} already exists", hint="pass --force to overwrite it")
    if paths.state.exists() and not resume and not force:
        raise OutputError(
            f"an interrupted run of {paths.npy} can be resumed",
            hint="pass --resume to continue it, or --force to start over",
        )
    if resume and not paths.state.exists():
        raise ResumeError(f"nothing to resume: no interrupted run of {paths.npy} was found")


class RowWriter:
    """The partial .npy plus its resume state."""

    def __init__(self, paths: OutputPaths, rows: int, dim: int, dtype: np.dtype, fingerprint: dict, resume: bool):
        self.paths, self.fingerprint = paths, fingerprint
        self.rows_done = 0
        self.stats: dict = {}
        if resume:
            state = json.loads(paths.state.read_text(encoding="utf-8"))
            changed = [k for k in sorted(set(fingerprint) | set(state["fingerprint"]))
                       if fingerprint.get(k) != state["fingerprint"].get(k)]
            if changed:
                detail = ", ".join(f"{k}: {state['fingerprint'].get(k)!r} -> {fingerprint.get(k)!r}" for k in changed[:3])
                raise ResumeError(
                    f"cannot resume: {', '.join(changed)} changed since the interrupted run ({detail})",
                    hint="rerun with the same input and options, or use --force to start over",
                )
            if not paths.partial.is_file():
                raise ResumeError(f"cannot resume: the partial output {paths.partial} is missing")
            self.array = open_memmap(paths.partial, mode="r+")
            self.rows_done = int(state["rows_done"])
            self.stats = dict(state.get("stats") or {})
        else:
            self._remove(paths.partial)
            try:
                self.array = open_memmap(paths.partial, mode="w+", dtype=dtype, shape=(rows, dim))
                self._reserve()
            except OSError as exc:
                self._remove(paths.partial)
                if exc.errno == errno.ENOSPC:
                    need = rows * dim * np.dtype(dtype).itemsize
                    raise OutputError(f"disk full: {need / 1e9:.2f} GB are needed in {paths.npy.parent}") from None
                raise OutputError(f"cannot write {paths.partial}: {exc.strerror or exc}") from None
            self.save_state(0)

    def _reserve(self) -> None:
        """Allocate every block now: a sparse file would fail with SIGBUS when the disk fills."""
        fd = os.open(self.paths.partial, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
        finally:
            os.close(fd)

    @staticmethod
    def _remove(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def rows(self, start: int, n: int) -> np.ndarray:
        return self.array[start : start + n]

    def _release(self) -> None:
        """Drop the flushed pages from this process: they are safe in the file, and keeping them
        mapped would make RSS grow with the output (a 100M-row job maps ~150 GB)."""
        mapping = getattr(self.array, "_mmap", None)
        if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mapping.madvise(mmap.MADV_DONTNEED)

    def save_state(self, rows_done: int, stats: dict | None = None) -> None:
        self.array.flush()  # the rows first, then the claim that they are done
        self._release()
        self.rows_done = rows_done
        self.stats = stats or {}
        write_json_atomic(
            self.paths.state, {"fingerprint": self.fingerprint, "rows_done": rows_done, "stats": self.stats}
        )

    def finish(self, sidecar: dict) -> None:
        self.array.flush()
        del self.array
        with open(self.paths.partial, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.paths.partial, self.paths.npy)
        write_json_atomic(self.paths.sidecar, sidecar)
        for path in (self.paths.state, self.paths.hidden(self.paths.state, "tmp")):
            self._remove(path)
        fsync_dir(self.paths.npy.parent)

    def abandon(self) -> None:
        """Drop everything (a refused run: nothing half-written stays behind)."""
        if hasattr(self, "array"):
            del self.array
        for path in (self.paths.partial, self.paths.state, self.paths.hidden(self.paths.state, "tmp")):
            self._remove(path)
