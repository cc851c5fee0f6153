"""An exclusive claim on an output for a job's whole life: a lock the OS drops when the process dies.

Before a job reads, writes or removes anything of its output's, it opens `.NAME.lock` beside the
output and takes an exclusive, non-blocking flock on it, and it holds that lock until it returns.
A second job on the same output (local or Ray, from this process or another) finds the lock held
and is refused in one line naming the holder, which the file records (pid, host, start time);
`hfenc clean` takes the same claim before it touches an interrupted output.

A process that dies, even by SIGKILL, loses the lock with its last file descriptor, so the next
job simply takes the claim over: the stale holder text is overwritten. The holder removes the file
while it still holds the lock; a job that locked a file which was removed meanwhile finds that the
path now names another file (or none) and tries again, so two jobs never both hold the claim.

Trade-offs: flock is advisory (it excludes hfenc jobs, not other programs) and local to one
machine's kernel: on a network file system shared by several machines it may not exclude a job
on another machine. The descriptor is close-on-exec, so a child program does not inherit the claim.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hfenc.errors import OutputError

_TRIES = 8  # a removed-and-recreated lock file between our open and our lock: try again


@dataclass(frozen=True)
class Holder:
    """Who holds a claim, as its lock file says (untrusted: any field may be missing)."""

    pid: int | None
    host: str | None
    started: str | None

    def describe(self) -> str:
        if self.pid is None:
            return "another hfenc job (it did not say which)"
        where = f" on {self.host}" if self.host else ""
        when = f", started {self.started}" if self.started else ""
        return f"hfenc pid {self.pid}{where}{when}"


def claim_path(output: Path) -> Path:
    """The lock file of an output (a .npy, a .parquet or a Ray output directory)."""
    return output.with_name(f".{output.name}.lock")


def _read_holder(fd: int) -> Holder:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):
        return Holder(None, None, None)
    if not isinstance(data, dict):
        return Holder(None, None, None)
    pid, host, started = data.get("pid"), data.get("host"), data.get("started")
    return Holder(pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                  host if isinstance(host, str) else None, started if isinstance(started, str) else None)


def missing_directory(directory: Path) -> OutputError:
    return OutputError(f"output directory {directory} does not exist",
                       hint=f"create it first (mkdir -p {shlex.quote(str(directory))}), or choose another output path")


class Claim:
    """`with Claim(output):` holds the output for the block; a held claim raises OutputError."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.path = claim_path(self.output)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> Claim:
        if self._fd is not None:
            return self
        for _ in range(_TRIES):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputError(f"{self.output} is in use by {holder.describe()}",
                                  hint="wait for that job to end, or write to another output") from None
            if self._still_ours(fd):
                self._fd = fd
                self._record()
                return self
            os.close(fd)  # the holder we raced removed it: lock the file that is there now
        raise OutputError(f"cannot claim {self.output}: its lock file {self.path.name} keeps changing")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked, so a waiter sees that it locked a removed file
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Claim:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def _open(self) -> int:
        if not self.output.parent.is_dir():
            raise missing_directory(self.output.parent)
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except PermissionError:
            raise OutputError(f"output directory {self.output.parent} is not writable") from None
        except OSError as exc:
            raise OutputError(f"cannot claim {self.output}: {self.path.name}: {exc.strerror or exc}") from None

    def _still_ours(self, fd: int) -> bool:
        try:
            return os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _record(self) -> None:
        assert self._fd is not None
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        data = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError:
            pass  # the lock is what excludes; the text only names the holder


def holder_of(output: Path) -> Holder | None:
    """Who holds `output`'s claim now, or None when nobody does (the claim is then free to take)."""
    path = claim_path(Path(output))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        return None
    finally:
        os.close(fd)  # also drops the shared lock taken to look
