"""Output that is either whole or absent: a memory-mapped .npy, its sidecar, and resume state.

Rows go into a hidden `.NAME.partial` file beside the output (numpy's open_memmap, space reserved
up front so a full disk fails at the start instead of as a SIGBUS mid-run). After each chunk the
map is flushed and a small state file records how many rows are final, so SIGKILL loses at most
the chunk in flight.

Publication is one step, journaled (issue 10): every new file (side files, the array, the
sidecar) is staged under a hidden name first; the state file then records the list of renames;
the old sidecar goes first (so no crash pairs new rows with old metadata), then the side files,
the array and the new sidecar last; the state file is removed at the very end. A crash anywhere
in between leaves a state that `--resume` completes (each rename is done once: a staged file
that is gone was already published).

Ownership: hfenc removes or overwrites only what it can prove it wrote. The sidecar lists the
files of its output with their size and sha256; a side file at an output path that the sidecar
there does not list with the same hash is someone else's and is refused without --force. A Ray
output directory is hfenc's file by file in the same way (Listing): its manifest lists its shards,
and --force replaces only those, never a file of the user's inside it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from hfenc import faults
from hfenc.errors import OutputError, ResumeError
from hfenc.io.claim import missing_directory

SIDECAR_FORMAT = "hfenc-embeddings/1"
MANIFEST = "_hfenc_manifest.json"  # a --ray directory's sidecar, beside its shards


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

    @property
    def chunks(self) -> Path:
        """A chunked .npy output's provenance: which document and span each row is (issue 23)."""
        return self.npy.with_name(self.npy.stem + ".chunks.tsv")

    @property
    def docs(self) -> Path:
        """--doc-vectors: a vector per document, in the output's format."""
        return self.npy.with_name(self.npy.stem + ".docs" + (self.npy.suffix or ".npy"))

    @property
    def hashes(self) -> Path:
        """A .npy output's per-row text hashes (hfenc.io.hashes; Parquet holds them in a column)."""
        return self.npy.with_name(self.npy.stem + ".sha256.npy")

    def hidden(self, final: Path, tag: str) -> Path:
        return final.with_name(f".{final.name}.{tag}")

    @property
    def partial(self) -> Path:
        return self.hidden(self.npy, "partial")

    @property
    def state(self) -> Path:
        return self.hidden(self.npy, "resume.json")

    @property
    def inflight(self) -> Path:
        """Rows finished inside the chunk in flight (hfenc.jobs.checkpoint)."""
        return self.hidden(self.npy, "inflight")

    def staged(self, final: Path) -> Path:
        """Where the next version of a final file waits to be published."""
        return self.hidden(final, "staged")

    def finals(self) -> list[Path]:
        return [self.npy, self.sidecar, *self.side_files()]

    def side_files(self) -> list[Path]:
        return [self.ids, self.lines, self.chunks, self.docs, self.hashes]


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def read_sidecar(path: Path) -> dict | None:
    """An hfenc sidecar at `path`, or None when there is none or the file is someone else's."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and str(data.get("format", "")).startswith("hfenc-embeddings/")
    return data if ok else None


# ---- ownership: the one rule of what hfenc may replace or remove ----------------------------------

@dataclass(frozen=True)
class Listing:
    """An hfenc sidecar or Ray dataset manifest, read once, and the files beside it that it names:
    a .npy sidecar's "files" map, a manifest's "shards" list (name -> {"bytes", "sha256"})."""

    path: Path
    files: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> Listing | None:
        """The listing at `path`, or None when there is none or the file is not hfenc's."""
        data = read_sidecar(path)
        if data is None:
            return None
        files = dict(data.get("files") or {}) if isinstance(data.get("files"), dict) else {}
        shards = data.get("shards")
        for shard in shards if isinstance(shards, list) else []:
            if isinstance(shard, dict) and isinstance(shard.get("file"), str):
                files[shard["file"]] = shard
        return cls(path, files)

    def owns(self, path: Path) -> bool:
        """The rule: the listing itself, or a file beside it that it names, unchanged (the same
        size, and the same sha256 where one is recorded: a file edited since is someone else's).
        Hashing reads each listed file once; that is the price of never taking a user's file."""
        if path == self.path:
            return True
        entry = self.files.get(path.name)
        if path.parent != self.path.parent or not isinstance(entry, dict) or not path.is_file():
            return False
        if path.stat().st_size != entry.get("bytes"):
            return False
        return "sha256" not in entry or file_sha256(path) == entry["sha256"]


def owns(paths: OutputPaths, final: Path) -> bool:
    """True when the hfenc sidecar beside the output lists `final` as its own, unchanged."""
    listing = Listing.read(paths.sidecar)
    return listing is not None and listing.owns(final)


def left_alone(name: str) -> str:
    """The warning for a file hfenc found in its way and did not touch (both engines say it so)."""
    return f"left {name} alone: hfenc did not write it"


def stale_files(paths: OutputPaths, unused: list[Path]) -> tuple[list[Path], list[Path]]:
    """Of an earlier run's side files that this run does not write again: (hfenc's, removed when
    the new output is published; someone else's, left alone)."""
    ours: list[Path] = []
    theirs: list[Path] = []
    for final in unused:
        if final.exists():
            (ours if owns(paths, final) else theirs).append(final)
    return ours, theirs


def directory_entries(directory: Path, listing_name: str) -> tuple[list[Path], list[Path]]:
    """A Ray output directory's entries: (hfenc's: what its listing `listing_name` names unchanged,
    and the listing itself; everything else, left alone). No listing: nothing in it is hfenc's."""
    listing = Listing.read(directory / listing_name)
    entries = sorted(directory.iterdir()) if directory.is_dir() else []
    ours = [p for p in entries if listing is not None and listing.owns(p)]
    return ours, [p for p in entries if p not in ours]


def default_output(input_path: str) -> Path:
    """INPUT's stem + .npy next to it (data.jsonl.gz -> data.npy)."""
    p = Path(input_path)
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    return p.with_name(Path(name).stem + ".npy")


SEAL = "sidecar_sha256"


def seal_of(sidecar: dict) -> str:
    """The SHA-256 of a sidecar's content without its seal (canonical JSON): `verify` recomputes it,
    so a hand edit shows, whatever key it touched."""
    body = {k: v for k, v in sidecar.items() if k != SEAL}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def sealed(sidecar: dict) -> dict:
    return {**{k: v for k, v in sidecar.items() if k != SEAL}, SEAL: seal_of(sidecar)}


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    faults.point("json-written")
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


def _present(path: Path) -> bool:
    """Something is at `path`: a file, a directory or a link, dangling ones too (exists() says no)."""
    return os.path.lexists(path)


def check_writable(paths: OutputPaths, force: bool, resume: bool, writes: tuple[Path, ...] = (),
                   replaces: bool = False) -> None:
    """Fail before any work when the output cannot be written, or a file this run would replace
    exists and --force is absent (`writes`: the side files this run makes; `replaces`: the user
    named the output as the one this run replaces, `embed --reuse OUT -o OUT`)."""
    directory = paths.npy.parent
    check_directory(directory)
    if resume and not paths.state.exists():
        raise nothing_to_resume(paths.npy, _present(paths.npy))
    for final in paths.finals():
        if final.is_dir():
            raise OutputError(f"output {final} is a directory")
    if _present(paths.npy) and not force and not resume and not (replaces and owns(paths, paths.sidecar)):
        raise OutputError(f"output {paths.npy} already exists", hint="pass --force to overwrite it")
    if not force and not resume:
        for final in (paths.sidecar, *writes):
            if _present(final) and not owns(paths, final):
                raise OutputError(
                    f"{final} exists and hfenc did not write it (no hfenc sidecar lists it)",
                    hint="move it away, choose another output with -o, or pass --force to overwrite it",
                )
        for partial in (paths.partial, paths.hidden(paths.docs, "partial")):
            if _present(partial) and not paths.state.exists():
                raise OutputError(f"{partial} exists but no interrupted hfenc run claims it",
                                  hint="move it away, or pass --force to overwrite it")
    if paths.state.exists() and not resume and not force:
        raise OutputError(
            f"an interrupted run of {paths.npy} can be resumed",
            hint="pass --resume to continue it, or --force to start over",
        )


def check_directory(directory: Path) -> None:
    """The output's folder exists and can be written in."""
    if not directory.is_dir():
        raise missing_directory(directory)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {directory} is not writable")


def nothing_to_resume(output: Path, exists: bool) -> ResumeError:
    """--resume with no interrupted run: the output is finished, or was never started."""
    if exists:
        return ResumeError(f"nothing to resume: {output} is complete",
                           hint="pass --force instead of --resume to embed it again")
    return ResumeError(f"nothing to resume: no interrupted run of {output} was found",
                       hint="drop --resume to start it")


def _output_error(path: Path, exc: OSError) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing {path}")
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


_STATE_KEYS = {"fingerprint", "rows_done", "stats", "publishing"}
# What a resume state's stats may hold, and of which type (None: absent).
_STATS: dict[str, tuple[type, ...]] = {"tokens": (int,), "truncated": (int,), "first_truncated": (int,),
                                       "inflight": (dict,), "quantization_ranges": (list,),
                                       "quantization_calibration": (dict,), "engine": (str,)}


def read_state(paths: OutputPaths) -> dict:
    try:
        state = json.loads(paths.state.read_text(encoding="utf-8"))
        # a file on disk, so untrusted: the shape hfenc writes, or one line
        if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), dict):
            raise ValueError("no fingerprint object")
        rows_done = state.get("rows_done")
        rows = state["fingerprint"].get("rows")
        if not isinstance(rows_done, int) or isinstance(rows_done, bool) or rows_done < 0 or \
                (isinstance(rows, int) and rows_done > rows):
            raise ValueError("rows_done is not a count of the output's rows")
        if not isinstance(state.get("stats", {}), dict) or not isinstance(state.get("publishing") or {}, dict):
            raise ValueError("stats or publishing is not an object")
        unknown = sorted(set(state) - _STATE_KEYS) + sorted(f"stats.{k}" for k in set(state.get("stats") or {}) - set(_STATS))
        if unknown:  # written by something else, or a newer hfenc: not understood, so not used
            raise ValueError(f"unknown key {unknown[0]}")
        for key, kinds in _STATS.items():
            value = (state.get("stats") or {}).get(key)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise ValueError(f"stats.{key} has the wrong type")
    except (OSError, ValueError) as exc:
        raise ResumeError(f"{paths.state} is not a resume state hfenc can read ({exc})",
                          hint="use --force to start over") from None
    return state


def saved_rows(state: dict) -> int:
    """Rows a resume state keeps: whole chunks plus the in-flight part it claims."""
    stats = state.get("stats")
    inflight = stats.get("inflight") if isinstance(stats, dict) else None
    extra = inflight.get("rows", 0) if isinstance(inflight, dict) else 0
    return int(state["rows_done"]) + (extra if isinstance(extra, int) else 0)


def journal_renames(paths: OutputPaths, plan: object) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """A publication journal read back (it is a file on disk, so untrusted): (renames, removals).
    Each rename takes a hidden file beside the output to one of the output's own names, the
    sidecar last; a removal is one of the output's side files. Anything else is refused."""
    problem = ResumeError(f"cannot finish the publication of {paths.npy}: the journal in {paths.state.name} "
                          "is not one hfenc wrote", hint="remove the output's hidden files by hand, or use --force")
    if not isinstance(plan, dict) or not isinstance(plan.get("renames"), list) or not plan["renames"]:
        raise problem
    finals, renames = set(paths.finals()), []
    for pair in plan["renames"]:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise problem
        staged, final = Path(pair[0]), Path(pair[1])
        if final not in finals or staged.parent != paths.npy.parent or not staged.name.startswith("."):
            raise problem
        renames.append((staged, final))
    removals = plan.get("remove", [])
    if renames[-1][1] != paths.sidecar or not isinstance(removals, list) or \
            any(not isinstance(p, str) or Path(p) not in paths.side_files() for p in removals):
        raise problem
    return renames, [Path(p) for p in removals]


def complete_publication(paths: OutputPaths, plan: dict) -> None:
    """Carry out a journaled publication; safe to repeat after a crash at any point in it."""
    renames, removals = journal_renames(paths, plan)
    try:
        staged_sidecar = renames[-1][0]
        if staged_sidecar.exists() and paths.sidecar.exists():
            paths.sidecar.unlink()  # the old output's metadata goes before any new file arrives
            faults.point("old-sidecar-removed")
        for stale in removals:
            stale.unlink(missing_ok=True)
        for staged, final in renames:
            if staged.exists():  # gone: published before a crash
                os.replace(staged, final)
                role = "array" if final == paths.npy else "sidecar" if final == paths.sidecar else "side-file"
                faults.point(f"published-{role}")
        fsync_dir(paths.npy.parent)
        faults.point("published")
        for path in (paths.state, paths.hidden(paths.state, "tmp")):
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise _output_error(paths.npy, exc) from None


# Keys a fingerprint gained after release, with the value every earlier run had: a run
# interrupted before they were recorded still resumes.
FINGERPRINT_DEFAULTS = {"id_field": None, "encoding_errors": "strict", "backend": "torch", "int8_group_size": None}


def resume_state(paths: OutputPaths, fingerprint: dict) -> dict:
    """The interrupted run's state, refused unless it was made with the same `fingerprint`."""
    state = read_state(paths)
    old, new = {**FINGERPRINT_DEFAULTS, **state["fingerprint"]}, {**FINGERPRINT_DEFAULTS, **fingerprint}
    changed = [k for k in sorted(set(new) | set(old)) if new.get(k) != old.get(k)]
    if changed:
        detail = ", ".join(f"{k}: {state['fingerprint'].get(k)!r} -> {fingerprint.get(k)!r}" for k in changed[:3])
        hint = "rerun with the same input and options, or use --force to start over"
        was = state["fingerprint"]
        if "dtype" in changed:  # e.g. `--dtype auto` decided otherwise on this machine
            hint = f"rerun with --dtype {was.get('dtype')}, as the interrupted run computed, or --force"
        elif "batch_tokens" in changed and was.get("batch_tokens") is not None:  # batches decide the bits
            hint = f"rerun with --batch-tokens {was.get('batch_tokens')}, as the interrupted run used, or --force"
        elif "device" in changed and was.get("device") is not None:
            hint = f"rerun with --device {was.get('device')}, as the interrupted run used, or --force"
        elif any(key.endswith("_version") for key in changed):
            hint = "resume with the library versions the interrupted run used, or --force to start over"
        raise ResumeError(f"cannot resume: {', '.join(changed)} changed since the interrupted run ({detail})", hint=hint)
    return state


def remove_path(path: Path) -> None:
    """Remove a partial output of ours, a file or a directory (a link itself, never its target)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def finish_publication(paths: OutputPaths, plan: dict) -> dict:
    """Complete the publication `plan` an interrupted run began; returns the published sidecar."""
    complete_publication(paths, plan)
    sidecar = read_sidecar(paths.sidecar)
    if sidecar is None:
        raise ResumeError(f"cannot resume: the sidecar {paths.sidecar} is missing after publication")
    return sidecar


def write_state(paths: OutputPaths, fingerprint: dict, rows_done: int, stats: dict,
                publishing: dict | None = None) -> None:
    """Record that `rows_done` rows are final (the caller made them durable first)."""
    state = {"fingerprint": fingerprint, "rows_done": rows_done, "stats": stats}
    if publishing is not None:
        state["publishing"] = publishing
    try:
        write_json_atomic(paths.state, state)
    except OSError as exc:
        raise _output_error(paths.state, exc) from None


def publish(paths: OutputPaths, staged_output: Path, sidecar: dict, side_files: list[tuple[Path, Path]],
            stale: list[Path], journal: Any) -> dict:
    """Stage the sidecar (with the "files" map of what it owns, and its seal), journal the renames with
    `journal(plan)` (a resume state that records them), then carry them out. `staged_output` is
    the finished, fsynced output under its hidden name. Returns the sidecar."""
    try:
        # every file with its hash, the array too (read once more: `verify` finds a flipped bit)
        files = {paths.npy.name: {"bytes": staged_output.stat().st_size, "sha256": file_sha256(staged_output)}}
        for staged, final in side_files:
            files[final.name] = {"bytes": staged.stat().st_size, "sha256": file_sha256(staged)}
        sidecar = sealed({**sidecar, "files": files})
        write_json_atomic(paths.staged(paths.sidecar), sidecar)
    except OSError as exc:
        raise _output_error(staged_output, exc) from None
    renames = [*side_files, (staged_output, paths.npy), (paths.staged(paths.sidecar), paths.sidecar)]
    plan = {"renames": [[str(a), str(b)] for a, b in renames], "remove": [str(p) for p in stale]}
    journal(plan)
    faults.point("publishing")
    complete_publication(paths, plan)
    return sidecar


class RowWriter:
    """The partial .npy plus its resume state."""

    def __init__(self, paths: OutputPaths, rows: int, dim: int, dtype: np.dtype, fingerprint: dict, resume: bool):
        self.paths, self.fingerprint = paths, fingerprint
        self.rows_done = 0
        self.stats: dict = {}
        self.publishing: dict | None = None  # a publication an earlier run began: only to finish
        if resume:
            state = resume_state(paths, fingerprint)
            self.publishing = state.get("publishing")
            if self.publishing is not None:
                self.rows_done = int(state["rows_done"])
                return
            self.stats = dict(state.get("stats") or {})
            if int(state["rows_done"]) == 0:  # killed before its first chunk: nothing to keep
                self._create(rows, dim, dtype)
                return
            if not paths.partial.is_file():
                raise ResumeError(f"cannot resume: the partial output {paths.partial} is missing")
            self.array = open_memmap(paths.partial, mode="r+")
            self.rows_done = int(state["rows_done"])
        else:
            self._remove(paths.partial)
            self.save_state(0)  # the claim first: from here on a crash leaves a resumable state
            self._create(rows, dim, dtype)

    def _create(self, rows: int, dim: int, dtype: np.dtype) -> None:
        paths = self.paths
        try:
            self.array = open_memmap(paths.partial, mode="w+", dtype=dtype, shape=(rows, dim))
            self._reserve()
        except OSError as exc:
            self.abandon()
            if exc.errno == errno.ENOSPC:
                need = rows * dim * np.dtype(dtype).itemsize
                raise OutputError(f"disk full: {need / 1e9:.2f} GB are needed in {paths.npy.parent}") from None
            raise OutputError(f"cannot write {paths.partial}: {exc.strerror or exc}") from None

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

    def save_state(self, rows_done: int, stats: dict | None = None, publishing: dict | None = None) -> None:
        if hasattr(self, "array"):
            self.array.flush()  # the rows first, then the claim that they are done
            self._release()
        # The state on disk first: a signal landing in between must not leave rows_done ahead of it
        write_state(self.paths, self.fingerprint, rows_done, stats or {}, publishing)
        self.rows_done = rows_done
        self.stats = stats or {}

    def finish(self, sidecar: dict, side_files: list[tuple[Path, Path]], stale: list[Path]) -> dict:
        """Publish the array, the staged side files (staged, final) and the sidecar as one step;
        `stale`: earlier side files of ours that this output no longer has. Returns the sidecar."""
        paths = self.paths
        try:
            self.array.flush()
            del self.array
            with open(paths.partial, "rb+") as fh:
                os.fsync(fh.fileno())
            faults.point("finish-flushed")
        except OSError as exc:
            raise _output_error(paths.partial, exc) from None
        return publish(paths, paths.partial, sidecar, side_files, stale,
                       lambda plan: self.save_state(self.rows_done, self.stats, publishing=plan))

    def finish_publication(self) -> dict:
        """Complete the publication an interrupted run began; returns the published sidecar."""
        assert self.publishing is not None
        return finish_publication(self.paths, self.publishing)

    def abandon(self) -> None:
        """Drop everything (a refused run: nothing half-written stays behind)."""
        if hasattr(self, "array"):
            del self.array
        for path in (self.paths.partial, self.paths.state, self.paths.hidden(self.paths.state, "tmp")):
            self._remove(path)


def claimed(paths: OutputPaths) -> list[Path]:
    """The in-progress half of the ownership rule: the hidden files (or, for a Ray job, the hidden
    .partial directory) that a readable hfenc resume state claims for `paths`. A final output is
    never among them: only a sidecar or manifest that lists it makes it hfenc's (Listing)."""
    return [paths.state, paths.partial, paths.hidden(paths.state, "tmp"), paths.inflight,
            paths.hidden(paths.inflight, "tmp"), paths.staged(paths.npy), paths.staged(paths.sidecar),
            *(paths.staged(p) for p in paths.side_files()), paths.hidden(paths.ids, "scan"),
            paths.hidden(paths.lines, "scan"), paths.hidden(paths.chunks, "scan"),
            paths.hidden(paths.chunks, "scan.ids"), paths.hidden(paths.docs, "partial"),
            paths.hidden(paths.hashes, "scan"), paths.hidden(paths.hashes, "plan")]
