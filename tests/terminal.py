"""Run a command in a pseudo-terminal of a given width, as a user's terminal would show it."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[@-Z\\-_])")


def in_terminal(args: list[str], columns: int = 80, env: dict[str, str] | None = None,
                timeout: float = 300, cwd: str | os.PathLike | None = None) -> tuple[int, str]:
    """(exit code, what the terminal received, escape sequences removed and \\r\\n made \\n)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "TERM")}
    proc = subprocess.Popen([sys.executable, "-m", "hfenc", *args], stdin=slave, stdout=slave, stderr=slave,
                            env={**base, "TERM": "xterm-256color", "HF_HUB_OFFLINE": "1", **(env or {})},
                            close_fds=True, cwd=cwd)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    code = proc.wait(timeout=timeout)
    text = _ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
    return code, text.replace("\r\n", "\n")


def screen_lines(text: str) -> list[str]:
    """Every line as drawn, a live display's redrawn lines (after a carriage return) included."""
    return [part for line in text.split("\n") for part in line.split("\r")]
