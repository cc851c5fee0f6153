"""Checkpoints inside a chunk: finished batches survive Ctrl-C and kills, and resume bit for bit.

A job saves its rows chunk by chunk (16,384 rows by default), which can be minutes of work. Between
chunk saves the engine hands over the chunk's finished part (hfenc.compute.engine.Partial) every
few seconds and on Ctrl-C: its rows go to a hidden `.OUT.npy.inflight` file beside the output
(written aside, synced, then renamed over the old one), and only then does the resume state say
so (`stats.inflight`). The state's `rows_done` still counts whole chunks, so every writer (.npy,
Parquet, quantized) keeps its own rules; the in-flight rows are one more thing the state claims.

On --resume the chunk is cut and batched exactly as before (same texts, tokenizer and token
budget), its first batches come from the file and the rest are computed in the very batches an
uninterrupted run uses: the output is the same bits. A file that does not match what the state
says is ignored: that chunk is computed again, which is only slower.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hfenc.compute.engine import Partial
from hfenc.io.outputs import OutputPaths, fsync_dir


class Checkpoints:
    """The in-flight rows of one job's output; `writer` is its row writer (save_state, stats)."""

    def __init__(self, paths: OutputPaths, writer: Any) -> None:
        self.path = paths.inflight
        self.tmp = paths.hidden(paths.inflight, "tmp")  # the name `hfenc clean` knows
        self.writer = writer

    def resume(self, start: int) -> Partial | None:
        """The finished part of the chunk at `start` that the state claims, if the file holds it."""
        claim = (self.writer.stats or {}).get("inflight")
        if not isinstance(claim, dict) or claim.get("start") != start:
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                part = Partial(int(data["start"]), int(data["batches"]), data["positions"], data["rows"])
        except (OSError, ValueError, KeyError):
            return None
        if (part.start, part.batches, len(part.positions)) != (start, claim.get("batches"), claim.get("rows")):
            return None
        return part

    def save(self, part: Partial) -> None:
        """The rows first, then the state that claims them (a kill in between claims nothing new)."""
        with open(self.tmp, "wb") as fh:
            np.savez(fh, start=part.start, batches=part.batches, positions=part.positions, rows=part.rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        stats = {k: v for k, v in (self.writer.stats or {}).items() if k != "inflight"}
        stats["inflight"] = {"start": part.start, "batches": part.batches, "rows": len(part.positions)}
        self.writer.save_state(part.start, stats)

    def clear(self) -> None:
        """After a chunk save (whose state no longer claims the file) or when the job ends."""
        for path in (self.path, self.tmp):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
