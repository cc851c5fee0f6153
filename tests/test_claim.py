"""hfenc.io.claim: one job per output, a claim the OS releases when its holder dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import sys
from pathlib import Path

import pytest

from hfenc.errors import OutputError
from hfenc.io.claim import Claim, claim_path, holder_of

HOLD = """
import sys, time
from pathlib import Path
from hfenc.io.claim import Claim
claim = Claim(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(60)
"""


def _holder_process(output: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(output)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_claim_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out.npy"
    with Claim(out):
        with pytest.raises(OutputError) as info:
            Claim(out).acquire()
        assert f"is in use by hfenc pid {os.getpid()} on {socket.gethostname()}, started 20" in str(info.value)
        holder = holder_of(out)
        assert holder is not None and holder.pid == os.getpid()
    assert not claim_path(out).exists()  # the holder removes its lock file
    assert holder_of(out) is None
    with Claim(out):  # free again
        pass


def test_a_claim_held_by_another_process_is_refused_and_taken_over_after_sigkill(tmp_path):
    out = tmp_path / "out.npy"
    proc = _holder_process(out)
    try:
        with pytest.raises(OutputError, match=f"in use by hfenc pid {proc.pid} "):
            Claim(out).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert claim_path(out).exists()  # SIGKILL leaves the file, but not the lock
    assert holder_of(out) is None
    with Claim(out) as claim:
        assert claim.held
        assert holder_of(out).pid == os.getpid()  # the stale holder text was replaced


def test_a_lock_file_removed_under_a_waiter_is_not_a_second_claim(tmp_path):
    out = tmp_path / "out.npy"
    first = Claim(out).acquire()
    stale_fd = os.open(claim_path(out), os.O_RDWR)  # a job that opened the file and is about to lock it
    first.release()  # removes the file while locked
    second = Claim(out).acquire()  # creates a new file
    try:
        # the late job's descriptor names the removed file: locking it proves nothing
        import fcntl

        fcntl.flock(stale_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds: another inode
        assert os.fstat(stale_fd).st_ino != os.stat(claim_path(out)).st_ino
        with pytest.raises(OutputError, match="in use"):
            Claim(out).acquire()  # the path's file is what counts
    finally:
        os.close(stale_fd)
        second.release()


def test_a_missing_directory_or_a_planted_link_is_one_line(tmp_path):
    with pytest.raises(OutputError, match="output directory .*missing does not exist"):
        Claim(tmp_path / "missing" / "out.npy").acquire()
    out = tmp_path / "out.npy"
    claim_path(out).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputError, match=r"cannot claim .*out.npy: \.out\.npy\.lock"):
        Claim(out).acquire()
    assert not (tmp_path / "elsewhere").exists()  # a link is never followed


def test_a_garbled_lock_file_still_excludes(tmp_path):
    out = tmp_path / "out.npy"
    with Claim(out) as claim:
        os.pwrite(claim._fd, b"\xff not json", 0)
        with pytest.raises(OutputError, match="in use by another hfenc job"):
            Claim(out).acquire()


def test_claims_release_on_interrupt(tmp_path):
    out = tmp_path / "out.npy"
    with pytest.raises(KeyboardInterrupt):
        with Claim(out):
            raise KeyboardInterrupt
    assert holder_of(out) is None and not claim_path(out).exists()


# ---- two jobs on one output, for real -----------------------------------------------------------

def _lines(path: Path, seed: int, n: int = 3000) -> Path:
    import random

    rng = random.Random(seed)
    words = "the a cat dog red blue car tree runs fast slow house river stone light dark".split()
    path.write_text("".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) + "\n" for _ in range(n)))
    return path


@pytest.mark.parametrize("offset", [0.3, 1.5, 4.0])
def test_two_runs_on_one_output_one_publishes_the_other_is_refused(tmp_path, bert, offset):
    """The second run starts `offset` s after the first: while the first imports, embeds or
    publishes (or after it ended). Exactly one publishes, and its rows are those of a lone run of
    the input its sidecar names; the other exits 1 with one line; nothing hidden is left."""
    import json

    import numpy as np

    work = tmp_path / "work"
    work.mkdir()
    inputs = [_lines(work / "a.txt", 1), _lines(work / "b.txt", 2)]
    out = work / "out.npy"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def start(src: Path, to: Path = out) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "hfenc", "embed", str(src), "-o", str(to), "-m", str(bert),
               "--device", "cpu", "--dtype", "float32", "--quiet"]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    first = start(inputs[0])
    time.sleep(offset)
    second = start(inputs[1])
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in (first, second)]
    assert sorted(code for code, _ in results) == [0, 1], results
    code, stderr = next(r for r in results if r[0] == 1)
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    sidecar = json.loads((work / "out.npy.json").read_text())
    published = Path(sidecar["input"]["path"])
    assert published in inputs
    assert start(published, tmp_path / "lone.npy").wait(timeout=300) == 0  # the same command, alone
    assert np.array_equal(np.load(out), np.load(tmp_path / "lone.npy"))
    assert sorted(p.name for p in work.iterdir()) == ["a.txt", "b.txt", "out.npy", "out.npy.json", "out.sha256.npy"]
