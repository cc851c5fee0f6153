"""Per-row content hashes (issue 24): the SHA-256 of each row's text, as read, before the prompt.

hfenc records them with every output, so a later run can reuse the rows whose text did not change
(`embed --reuse`, hfenc.jobs.reuse), and `verify` / `diff` can tell which rows are the same text.
A .npy output gets OUT.sha256.npy beside it (uint8, rows x 32, listed in the sidecar as
`hashes_file`); Parquet gets a `text_sha256` column of 64 lowercase hex digits, the form `sha256()`
of DuckDB and hashlib's hexdigest() give, so a table joins with the user's own hashes. While a job
runs they wait in a hidden raw file of 32 bytes per row (`.OUT.sha256.npy.scan`).

The text is hashed as UTF-8 ("surrogatepass": a JSON input may hold a lone surrogate, which is
still a row of its own); the prompt, model and settings are not in the hash but in the output's
fingerprint, which reuse compares as a whole.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

WIDTH = 32  # bytes of a SHA-256
_BLOCK = 1 << 16  # rows copied at a time
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_NIBBLE = np.full(256, 255, np.uint8)
_NIBBLE[_HEX] = np.arange(16, dtype=np.uint8)


def digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def text_hashes(texts: Iterable[str]) -> np.ndarray:
    """(n, 32) uint8: each text's SHA-256."""
    raw = b"".join(digest(t) for t in texts)
    return np.frombuffer(raw, np.uint8).reshape(-1, WIDTH)


def to_hex(hashes: np.ndarray) -> np.ndarray:
    """(n, 32) uint8 -> (n, 64) uint8 of ASCII hex digits (a string column's bytes, zero-copy)."""
    out = np.empty((len(hashes), 2 * WIDTH), np.uint8)
    out[:, 0::2] = _HEX[hashes >> 4]
    out[:, 1::2] = _HEX[hashes & 15]
    return out


def from_hex(digits: np.ndarray) -> np.ndarray | None:
    """(n, 64) ASCII hex digits -> (n, 32) uint8; None when any is not a lowercase hex digit."""
    nibbles = _NIBBLE[digits]
    if (nibbles == 255).any():
        return None
    return (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]


def hex_hashes(column: Any) -> np.ndarray | None:
    """A string column of 64 hex digits a row, decoded straight from its buffers; None otherwise."""
    if column.null_count:
        return None
    n = len(column)
    offsets = np.frombuffer(column.buffers()[1], np.int32)[column.offset:column.offset + n + 1]
    if len(offsets) != n + 1 or not (np.diff(offsets) == 64).all():
        return None
    data = np.frombuffer(column.buffers()[2], np.uint8)[offsets[0]:offsets[-1]] if n else np.empty(0, np.uint8)
    return from_hex(data.reshape(n, 64))


def keys(hashes: np.ndarray) -> np.ndarray:
    """The hashes as one sortable, searchable value each (numpy compares void items bytewise)."""
    return np.ascontiguousarray(hashes).view(f"V{WIDTH}").reshape(-1)


def raw_rows(path: Path, start: int, n: int) -> np.ndarray:
    """Rows start .. start+n of a raw hash file."""
    with open(path, "rb") as fh:
        fh.seek(start * WIDTH)
        data = fh.read(n * WIDTH)
    return np.frombuffer(data, np.uint8).reshape(-1, WIDTH)


def raw_to_npy(raw: Path, out: Path, rows: int) -> None:
    """The raw file's first `rows` rows as OUT.sha256.npy (uint8, rows x 32), copied a block at a
    time through file writes, fsynced: a memory map of the whole output would hold every dirtied
    page in this process until the end (32 MB of RSS per million rows)."""
    from numpy.lib.format import write_array_header_1_0

    with open(out, "wb") as dst:
        write_array_header_1_0(dst, {"descr": "|u1", "fortran_order": False, "shape": (rows, WIDTH)})
        with open(raw, "rb") as fh:
            left = rows * WIDTH
            while left:
                block = fh.read(min(_BLOCK * WIDTH, left))
                if not block:
                    raise OSError(f"{raw} holds fewer than {rows:,} hashes")
                dst.write(block)
                left -= len(block)
        dst.flush()
        os.fsync(dst.fileno())
