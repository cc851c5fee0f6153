"""Deterministic interruptions for job tests (a helper module, not a test module)."""

from __future__ import annotations

from collections.abc import Callable


def stop_after(rows: int) -> Callable:
    """A progress callback that acts like Ctrl-C during the chunk after the first `rows` rows
    (progress comes per batch, before its chunk is saved: `rows` rows are saved then)."""
    def progress(p) -> None:
        if p.rows_done > rows:
            raise KeyboardInterrupt
    return progress
