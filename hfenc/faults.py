"""Named kill points for the fault-injection tests (issue 10); free when not asked for.

`HFENC_FAULT_AT=NAME` (or `NAME:K`, the K-th time the point is reached) makes the process
SIGKILL itself there, so a test can check what a crash at exactly that step leaves on disk.
"""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def point(name: str) -> None:
    target = os.environ.get("HFENC_FAULT_AT")  # read each time: a forked test child sets it
    if not target:
        return
    want, _, nth = target.partition(":")
    if want != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
