"""`hfenc clean`: the saved work of interrupted runs, found, listed and settled under the same rules
as a job.

Only what a readable hfenc resume state claims is considered (the hidden files of
hfenc.io.outputs.claimed), and each output is settled holding its claim (hfenc.io.claim), so a job
that is running on it is never touched: it is listed as in use. A resume state that cannot be read
is someone else's or damaged: it is listed, and nothing of it is removed.

A run interrupted while it was publishing has a journal in its state. Removing its files then
could leave the new array beside the old sidecar, or a new array with no sidecar at all; so clean
carries the journal out instead (the same steps `--resume` takes), and the output is the new set,
whole. A journal only the Ray runner can carry out (a dataset directory) is refused with the way
to finish it. Nothing is ever split: the output is the old set or the new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hfenc.errors import HfencError, ResumeError
from hfenc.io.claim import Claim, holder_of
from hfenc.io.outputs import OutputPaths, claimed, complete_publication, read_state, remove_path, saved_rows

Status = Literal["interrupted", "publishing", "in use", "unreadable"]


@dataclass(frozen=True)
class Abandoned:
    """An interrupted run's saved work: its resume state and the hidden files it claims."""

    output: Path
    status: Status
    rows_done: int | None
    rows: int | None
    files: tuple[Path, ...]
    note: str = ""  # why it is in use or unreadable

    @property
    def bytes(self) -> int:  # a Parquet partial is a directory of chunk files
        total = 0
        for f in self.files:
            for p in ([f] if not f.is_dir() else f.rglob("*")):
                try:
                    total += p.stat().st_size if p.is_file() else 0
                except OSError:
                    pass
        return total


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _examine(output: Path, ours: bool = False) -> Abandoned:
    """What `output`'s resume state says; `ours`: this process holds the claim (nobody else can)."""
    paths = OutputPaths(output)
    holder = None if ours else holder_of(output)
    if holder is not None:
        return Abandoned(output, "in use", None, None, (), f"in use by {holder.describe()}")
    try:
        state = read_state(paths)  # validated: a fingerprint object, a count, a journal object or none
    except ResumeError as exc:
        return Abandoned(output, "unreadable", None, None, (), f"{exc}; left alone")
    publishing = state.get("publishing")
    files = tuple(f for f in claimed(paths) if f.exists() or f.is_symlink())
    status: Status = "publishing" if publishing is not None else "interrupted"
    return Abandoned(output, status, saved_rows(state), _count(state["fingerprint"].get("rows")), files)


def find_abandoned(directory: Path) -> list[Abandoned]:
    """Interrupted runs in `directory`: one entry per hidden resume state found there."""
    return [_examine(state.with_name(state.name[1:].removesuffix(".resume.json")))
            for state in sorted(directory.glob(".*.resume.json"))]


def settle(item: Abandoned) -> str:
    """Remove an interrupted run's saved rows, or finish its publication; returns what was done.
    Refuses (HfencError) what it cannot prove is safe: an output in use, an unreadable state."""
    if item.status == "in use":
        raise HfencError(f"{item.output}: {item.note}; left alone")
    if item.status == "unreadable":
        raise HfencError(f"{item.output}: {item.note}")
    with Claim(item.output):  # no job may start on it while it is settled
        again = _examine(item.output, ours=True)  # what is there now that the output is ours
        if again.status != item.status:
            raise HfencError(f"{item.output} changed while clean looked at it; run clean again")
        paths = OutputPaths(item.output)
        if again.status == "publishing":
            plan = read_state(paths)["publishing"]
            if "dataset" in plan:  # a Ray dataset directory's journal: the Ray runner carries it out
                raise HfencError(f"{item.output}: its publication was interrupted and only the job can finish it",
                                 hint="run the same `hfenc embed ... --ray` command with --resume")
            complete_publication(paths, plan)  # the new set, whole (a journal not ours is refused); then leftovers go
            for file in claimed(paths):
                if file.exists() or file.is_symlink():
                    remove_path(file)
            return "published"
        for file in again.files:
            remove_path(file)
        return "removed"
