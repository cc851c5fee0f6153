"""ChunkFiles: a writer whose format cannot be appended to after a crash (Parquet, the sparse .npz)
keeps each finished chunk as one file in the hidden directory `.OUT.partial/`, then merges them.

Each chunk file is written under a `.tmp` name, fsynced, renamed to `{start:012d}+{n}{suffix}`,
and only then claimed by the resume state (hfenc.io.outputs.write_state), so SIGKILL loses at
most the chunk in flight; `--resume` keeps the chunks the state claims and drops later ones. At
the end `_merge` streams the chunks, in row order, into the staged output, which the journaled
publication of hfenc.io.outputs renames into place with the sidecar. Trade-off: every row is
written twice, in exchange for --resume after SIGKILL. A format subclasses this and supplies
`rows`, `_write_chunk` and `_merge`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from hfenc import faults
from hfenc.errors import OutputError, ResumeError
from hfenc.io.outputs import (OutputPaths, _output_error, finish_publication, fsync_dir, publish, remove_path,
                              resume_state, write_state)


class ChunkFiles:
    """RowWriter's interface (rows_done, stats, publishing, save_state, finish, finish_publication,
    abandon) over chunk files; `suffix` names a chunk file's type."""

    suffix = ""

    def __init__(self, paths: OutputPaths, fingerprint: dict, resume: bool) -> None:
        self.paths, self.fingerprint = paths, fingerprint
        self.rows_done = 0
        self.stats: dict = {}
        self.publishing: dict | None = None  # a publication an earlier run began: only to finish
        self._pending: tuple[int, Any] | None = None  # the chunk the engine is filling
        self._name = re.compile(r"^(\d{12})\+(\d+)" + re.escape(self.suffix) + "$")
        if resume:
            state = resume_state(paths, fingerprint)
            self.publishing = state.get("publishing")
            self.rows_done = int(state["rows_done"])
            if self.publishing is not None:
                return
            self.stats = dict(state.get("stats") or {})
            if self.rows_done == 0:
                self._create()
                return
            if not paths.partial.is_dir():
                raise ResumeError(f"cannot resume: the partial output {paths.partial} is missing")
            self._keep_chunks_up_to(self.rows_done)
        else:
            self._remove_partial()
            self.save_state(0)  # the claim first: from here on a crash leaves a resumable state
            self._create()

    # -- the hidden partial directory

    def _create(self) -> None:
        try:
            self._remove_partial()
            self.paths.partial.mkdir()
        except OSError as exc:
            self.abandon()
            raise OutputError(f"cannot write {self.paths.partial}: {exc.strerror or exc}") from None

    def _remove_partial(self) -> None:
        remove_path(self.paths.partial)

    def _chunks(self) -> list[tuple[int, int, Path]]:
        found = []
        for entry in self.paths.partial.iterdir():
            match = self._name.match(entry.name)
            if match:
                found.append((int(match[1]), int(match[2]), entry))
            elif entry.name.endswith(".tmp"):
                entry.unlink()  # a chunk a crash cut short
        return sorted(found)

    def _in_order(self) -> list[tuple[int, int, Path]]:
        """The chunk files, checked to cover the rows from 0 without a gap."""
        expect, chunks = 0, self._chunks()
        for start, n, _ in chunks:
            if start != expect:
                raise OutputError(f"the partial output {self.paths.partial} lacks rows from {expect:,}",
                                  hint="use --force to start over")
            expect = start + n
        return chunks

    def _keep_chunks_up_to(self, rows_done: int) -> None:
        """Resume: the chunks the state claims must all be there; later ones (written after the
        last claim) go."""
        expect = 0
        for start, n, path in self._chunks():
            if start >= rows_done:
                path.unlink()
                continue
            if start != expect:
                raise ResumeError(f"cannot resume: the partial output {self.paths.partial} lacks rows "
                                  f"{expect:,} to {start - 1:,}", hint="use --force to start over")
            expect = start + n
        if expect != rows_done:
            raise ResumeError(f"cannot resume: the partial output {self.paths.partial} holds {expect:,} rows, "
                              f"its resume state says {rows_done:,}", hint="use --force to start over")

    def _commit(self, start: int, n: int, write: Callable[[IO[bytes]], None]) -> None:
        """One chunk's file: written by `write` under a temporary name, fsynced, renamed."""
        final = self.paths.partial / f"{start:012d}+{n}{self.suffix}"
        tmp = final.with_name(final.name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            fsync_dir(self.paths.partial)
        except OSError as exc:
            raise _output_error(final, exc) from None

    # -- RowWriter's interface

    def _write_chunk(self, start: int, block: Any) -> None:
        raise NotImplementedError

    def _merge(self, sidecar: dict, fh: IO[bytes]) -> None:
        raise NotImplementedError

    def save_state(self, rows_done: int, stats: dict | None = None, publishing: dict | None = None) -> None:
        if self._pending is not None:
            start, block = self._pending
            if start + len(block) == rows_done:  # the rows first, then the claim that they are done
                self._write_chunk(start, block)
                self._pending = None
        # The state on disk first: a signal landing in between must not leave rows_done ahead of it
        write_state(self.paths, self.fingerprint, rows_done, stats or {}, publishing)
        self.rows_done = rows_done
        self.stats = stats or {}

    def finish(self, sidecar: dict, side_files: list[tuple[Path, Path]], stale: list[Path]) -> dict:
        """Merge the chunks into the staged file, then publish it, the side files and the sidecar
        in one journaled step (hfenc.io.outputs.publish). Returns the sidecar."""
        staged = self.paths.staged(self.paths.npy)
        try:
            with open(staged, "wb") as fh:
                self._merge(sidecar, fh)
                fh.flush()
                os.fsync(fh.fileno())
            faults.point("finish-flushed")
        except OSError as exc:
            raise _output_error(staged, exc) from None

        def journal(plan: dict) -> None:
            self.save_state(self.rows_done, self.stats, publishing=plan)
            self._remove_partial()  # the staged file holds every row now

        return publish(self.paths, staged, sidecar, side_files, stale, journal)

    def finish_publication(self) -> dict:
        assert self.publishing is not None
        try:
            self._remove_partial()
        except OSError as exc:
            raise _output_error(self.paths.partial, exc) from None
        return finish_publication(self.paths, self.publishing)

    def abandon(self) -> None:
        self._pending = None
        for path in (self.paths.state, self.paths.hidden(self.paths.state, "tmp"), self.paths.staged(self.paths.npy)):
            path.unlink(missing_ok=True)
        try:
            self._remove_partial()
        except OSError:
            pass
