"""The inputs of a --ray job: the files the arguments name, their one format, and, once the scan
tasks have counted them, where each global row is.

Arguments are local files, directories, globs, or any URI pyarrow opens (s3://, gs://, hdfs://):
they are expanded here, on the driver, into an ordered list of files, because row i must be
record i of the single-process run. A directory's files and a glob's matches are sorted by path;
hidden and _-prefixed names are skipped, as Ray and Spark skip them. --text and standard input
are spooled to a hidden local file first, so every input is a file a task can read.
"""

from __future__ import annotations

import glob as _glob
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfenc.errors import InputError
from hfenc.io.inputs import InputSpec, Tally, combine_hashes, records, spool_stdin, spool_texts
from hfenc.jobs.local import JobOptions
from hfenc.jobs.ray_session import ray_modules

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

    from hfenc.jobs.ray_tasks import InputFile

_GLOB = "*?["


@contextmanager
def job_inputs(job: JobOptions) -> Iterator[tuple[InputSpec, list[InputFile]]]:
    """(the input spec, its format settled and one path; the files, in order) of `job`. --text and
    standard input are spooled beside the output for the job's duration."""
    spooled: Path | None = None
    try:
        spec = job.input
        if job.texts or spec.path == "-":
            where = Path(job.output).parent if job.output is not None else Path(".")
            spooled = spool_texts(where, job.texts) if job.texts else spool_stdin(where)
            spec = replace(spec, path=str(spooled), more=(),
                           format="jsonl" if job.texts else job.input.resolved_format())
        files = expand_inputs(spec.paths)
        if spooled is not None:  # named as the single-process path names it
            files = [replace(files[0], name="(--text)" if job.texts else "-")]
            if not job.texts:
                job.input.check()  # an option that does not apply to the format, as for a file
        fmt = input_format(spec, files) if spooled is None else str(spec.format)
        yield replace(spec, format=fmt, more=()), files
    finally:
        if spooled is not None:
            spooled.unlink(missing_ok=True)


def expand_inputs(names: tuple[str, ...]) -> list[InputFile]:
    """Files, in order: each argument in turn; a directory's files and a glob's matches sorted."""
    import pyarrow.fs as pafs

    tasks = ray_modules().tasks
    files: list[InputFile] = []
    for name in names:
        if "://" in name:
            files.extend(_remote(name))
            continue
        local = pafs.LocalFileSystem()
        if os.path.isdir(name):
            found = sorted(os.path.join(root, f) for root, dirs, names_ in os.walk(name)
                           for f in names_ if not _hidden(os.path.relpath(os.path.join(root, f), name)))
            if not found:
                raise InputError(f"input directory {name} holds no files")
            files.extend(tasks.InputFile(p, os.path.abspath(p), local) for p in found)
        elif not os.path.exists(name) and any(c in name for c in _GLOB):
            found = sorted(p for p in _glob.glob(name, recursive=True) if os.path.isfile(p))
            if not found:
                raise InputError(f"no file matches {name!r}")
            files.extend(tasks.InputFile(p, os.path.abspath(p), local) for p in found)
        elif not os.path.exists(name):
            raise InputError(f"input file {name} does not exist")
        else:
            files.append(tasks.InputFile(name, os.path.abspath(name), local))
    return files


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.replace(os.sep, "/").split("/"))


def _remote(uri: str) -> list[InputFile]:
    """A file, directory or glob on a filesystem that pyarrow opens (s3://, gs://, hdfs://, ...)."""
    import pyarrow.fs as pafs

    tasks = ray_modules().tasks
    scheme = uri.split("://", 1)[0]
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        found = _remote_glob(fs, path, uri) if any(c in path for c in _GLOB) else _remote_path(fs, path, uri)
    except InputError:
        raise
    except Exception as exc:  # no credentials, no such bucket, an unknown scheme, ...
        raise InputError(f"cannot open {uri}: {' '.join(str(exc).split())}") from None
    return [tasks.InputFile(f"{scheme}://{p.lstrip('/')}" if scheme != "file" else f"file://{p}", p, fs)
            for p in sorted(found)]


def _remote_glob(fs: FileSystem, pattern: str, uri: str) -> list[str]:
    """A glob's matches, listed from the folder before its first wildcard."""
    import fnmatch

    import pyarrow.fs as pafs

    base = pattern[: min(pattern.index(c) for c in _GLOB if c in pattern)].rsplit("/", 1)[0]
    entries = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    found = [e.path for e in entries if e.type == pafs.FileType.File and fnmatch.fnmatchcase(e.path, pattern)]
    if not found:
        raise InputError(f"no file matches {uri!r}")
    return found


def _remote_path(fs: FileSystem, path: str, uri: str) -> list[str]:
    """A remote file, or a remote directory's files (hidden names skipped)."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [path]
    if info.type != pafs.FileType.Directory:
        raise InputError(f"input file {uri} does not exist")
    root = path.rstrip("/")
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    found = [e.path for e in entries if e.type == pafs.FileType.File and not _hidden(e.path[len(root):].lstrip("/"))]
    if not found:
        raise InputError(f"input directory {uri} holds no files")
    return found


def input_format(spec: InputSpec, files: list[InputFile]) -> str:
    """The one format of all files (hfenc's rules: --format, else the suffix), with the options
    that do not apply to it refused."""
    names = [f.name for f in files]
    try:
        probe = replace(spec, path=names[0], more=tuple(names[1:]))
        probe.check()
        return probe.resolved_format()
    except InputError:
        remote = [f.name for f in files if not f.local]
        if remote and spec.format is None:
            raise InputError(f"{remote[0]}: cannot tell its format from its name", hint="give --format") from None
        raise


@dataclass(frozen=True)
class ScannedInput:
    """The input once the scan tasks have counted it: per file its scan (rows, blank, sha256,
    bytes, text_bytes, and kept line numbers for --skip-blank into a .npy), and the global row
    its first record has (file k's rows start at the sum of the counts before it)."""

    spec: InputSpec  # format settled, one path (each task reads one file)
    files: tuple[InputFile, ...]
    scans: tuple[dict[str, Any], ...]
    starts: tuple[int, ...]

    @classmethod
    def of(cls, spec: InputSpec, files: list[InputFile], scans: list[dict[str, Any]]) -> ScannedInput:
        starts, at = [], 0
        for s in scans:
            starts.append(at)
            at += s["rows"]
        if at == 0:
            raise InputError(f"input {' '.join(f.name for f in files)} is empty: no records to embed")
        return cls(spec, tuple(files), tuple(scans), tuple(starts))

    @property
    def format(self) -> str:
        return str(self.spec.format)

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.scans)

    @property
    def blank(self) -> int:
        return sum(s["blank"] for s in self.scans)

    @property
    def several(self) -> bool:
        return len(self.files) > 1

    def hashed(self) -> tuple[str, int]:
        """(sha256, bytes) of the input, as the single-process path hashes one file or several."""
        if not self.several:
            return self.scans[0]["sha256"], self.scans[0]["bytes"]
        tally = Tally()
        combine_hashes(tally, [(f.name, Tally(s["sha256"], s["bytes"])) for f, s in zip(self.files, self.scans)])
        return tally.sha256, tally.bytes

    def for_readers(self) -> list[dict[str, Any]]:
        """The scans without the kept line numbers, which read tasks do not need shipped to them."""
        return [{k: v for k, v in s.items() if k != "lines"} for s in self.scans]

    def where(self, row: int) -> str:
        """`line N` (`FILE line N` with several inputs) of global row `row`, as hfenc.jobs.local
        says it (the file read again up to that record: only ever for an error message)."""
        tasks = ray_modules().tasks
        for f, start, s in zip(self.files, self.starts, self.scans):
            if start <= row < start + s["rows"]:
                with tasks.local_copy(f) as path:
                    for i, record in enumerate(records(replace(self.spec, path=path, more=()))):
                        if i == row - start:
                            return f"{f.name} line {record.line}" if self.several else f"line {record.line}"
        return f"record {row + 1}"
