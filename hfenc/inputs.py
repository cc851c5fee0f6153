"""Readers: one text per record from .txt, .jsonl, .csv/.tsv (any of them .gz), or stdin.

Records stream; nothing holds the whole input. A first pass (`scan`) validates every record,
counts them (the memory-mapped output needs its row count up front), hashes the raw bytes (so
--resume can tell whether the input changed) and writes ids / kept line numbers beside the
output. The second pass (`chunks`) yields the texts in fixed-size chunks. Row i of the output is
record i of the input, always; blank records are embedded unless --skip-blank drops them.

Errors name the line (and for bad UTF-8, the byte offset in the file) and never show a traceback.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np

from .errors import InputError, UnknownChoiceError

Format = Literal["txt", "jsonl", "csv", "tsv"]
FORMATS = ("txt", "jsonl", "csv", "tsv")
_SUFFIXES = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_BOM = codecs.BOM_UTF8


@dataclass(frozen=True)
class InputSpec:
    path: str  # a file, or "-" for stdin
    format: str | None = None  # None: from the suffix (txt when unknown)
    field: str = "text"  # jsonl key holding the text
    column: str | None = None  # csv/tsv header holding the text (default: "text", else the only column)
    id_field: str | None = None  # jsonl key / csv column written out alongside
    encoding_errors: Literal["strict", "replace"] = "strict"
    skip_blank: bool = False

    def resolved_format(self) -> str:
        if self.format is not None:
            if self.format not in FORMATS:
                raise UnknownChoiceError("input format", self.format, FORMATS)
            return self.format
        name = self.path[:-3] if self.path.endswith(".gz") else self.path
        return _SUFFIXES.get(Path(name).suffix.lower(), "txt")


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line where the record starts
    text: str
    id: str | None = None


def _open_binary(path: str) -> IO[bytes]:
    p = Path(path)
    if not p.exists():
        raise InputError(f"input file {path} does not exist")
    if p.is_dir():
        raise InputError(f"input {path} is a directory, not a file")
    try:
        fh: IO[bytes] = open(p, "rb")
    except OSError as exc:
        raise InputError(f"cannot open {path}: {exc.strerror}") from exc
    if path.endswith(".gz"):
        return gzip.open(fh, "rb")  # type: ignore[return-value]
    return fh


def _decode(raw: bytes, line: int, offset: int, errors: str) -> str:
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise InputError(f"line {line}: NUL byte at byte offset {offset + nul}; is this a binary file?")
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"line {line}: invalid UTF-8 at byte offset {offset + exc.start}",
            hint="fix the file's encoding, or pass --encoding-errors replace",
        ) from None


def _lines(spec: InputSpec) -> Iterator[tuple[int, str]]:
    """(line number, text without its line ending) for every line of the (decompressed) input."""
    offset = 0
    with _open_binary(spec.path) as fh:
        try:
            for line, raw in enumerate(fh, 1):
                start, offset = offset, offset + len(raw)
                if line == 1 and raw.startswith(_BOM):
                    raw, start = raw[3:], start + 3
                raw = raw.rstrip(b"\n")
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                yield line, _decode(raw, line, start, spec.encoding_errors)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputError(f"cannot read {spec.path}: {exc}") from exc


def _jsonl(spec: InputSpec) -> Iterator[Record]:
    for line, text in _lines(spec):
        if not text.strip():
            if spec.skip_blank:
                continue
            raise InputError(f"line {line}: blank line in JSONL input", hint="pass --skip-blank to skip blank lines")
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise InputError(f"line {line}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict) or spec.field not in obj:
            raise InputError(f"line {line}: no field {spec.field!r}", hint="choose the field with --field")
        value = obj[spec.field]
        if not isinstance(value, str):
            raise InputError(f"line {line}: field {spec.field!r} is {type(value).__name__}, not a string")
        yield Record(line, value, _id(obj, spec.id_field, line))


def _id(obj: dict, key: str | None, line: int) -> str | None:
    if key is None:
        return None
    if key not in obj or obj[key] is None:
        raise InputError(f"line {line}: no id field {key!r}")
    value = str(obj[key])
    if "\n" in value or "\r" in value:
        raise InputError(f"line {line}: the id contains a line break")
    return value


def _csv(spec: InputSpec, delimiter: str) -> Iterator[Record]:
    # csv.reader pulls lines on demand; remember where each record starts (a quoted field may
    # span lines) so messages and OUT.lines.npy name its first line.
    state = {"line": 0, "start": 0, "fresh": True}

    def feed() -> Iterator[str]:
        for n, text in _lines(spec):
            state["line"] = n
            if state["fresh"] and text:  # csv skips blank lines between records
                state["start"], state["fresh"] = n, False
            yield text + "\n"

    try:
        reader = csv.DictReader(feed(), delimiter=delimiter)
        header = reader.fieldnames
        if not header:
            raise InputError(f"{spec.path} has no header row")
        column = spec.column or ("text" if "text" in header or len(header) != 1 else header[0])
        for key in (column, spec.id_field):
            if key is not None and key not in header:
                raise InputError(f"no column {key!r}; the header has: {', '.join(header)}",
                                 hint="choose the column with --column")
        state["fresh"] = True
        for row in reader:
            start = state["start"]
            state["fresh"] = True
            value = row.get(column)
            if value is None:
                raise InputError(f"line {start}: the record has no value in column {column!r}")
            yield Record(start, value, _id(row, spec.id_field, start))
    except csv.Error as exc:
        raise InputError(f"line {state['line']}: malformed CSV ({exc})") from None


def records(spec: InputSpec) -> Iterator[Record]:
    """Every record of the input, in order, blank ones included unless skip_blank."""
    fmt = spec.resolved_format()
    if fmt == "jsonl":
        source: Iterator[Record] = _jsonl(spec)
    elif fmt in ("csv", "tsv"):
        source = _csv(spec, "," if fmt == "csv" else "\t")
    else:
        if spec.id_field is not None:
            raise InputError("--id-field needs a .jsonl, .csv or .tsv input")
        source = (Record(n, t) for n, t in _lines(spec))
    for record in source:
        if spec.skip_blank and not record.text.strip():
            continue
        yield record


@dataclass(frozen=True)
class Scan:
    rows: int
    blank: int
    sha256: str
    bytes: int


def _hash_file(path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
            size += len(block)
    return "sha256:" + digest.hexdigest(), size


def scan(spec: InputSpec, ids_out: IO[str] | None = None, lines_out: IO[bytes] | None = None) -> Scan:
    """Validate and count every record; write ids (one per line) and kept line numbers (int64)."""
    rows = blank = 0
    batch: list[int] = []
    for record in records(spec):
        rows += 1
        if not record.text.strip():
            blank += 1
        if ids_out is not None:
            ids_out.write((record.id or "") + "\n")
        if lines_out is not None:
            batch.append(record.line)
            if len(batch) >= 65536:
                lines_out.write(np.asarray(batch, dtype="<i8").tobytes())
                batch.clear()
    if lines_out is not None and batch:
        lines_out.write(np.asarray(batch, dtype="<i8").tobytes())
    if rows == 0:
        raise InputError(f"input {spec.path} is empty: no records to embed")
    sha, size = _hash_file(spec.path)
    return Scan(rows, blank, sha, size)


def chunks(spec: InputSpec, chunk_size: int, start_row: int = 0) -> Iterator[tuple[int, list[str]]]:
    """(first row, texts) for consecutive chunks of `chunk_size` records, from `start_row` on."""
    texts: list[str] = []
    row = 0
    for record in records(spec):
        if row >= start_row:
            texts.append(record.text)
        row += 1
        if row % chunk_size == 0 and texts:
            yield row - len(texts), texts
            texts = []
    if texts:
        yield row - len(texts), texts


def spool_stdin(directory: Path) -> Path:
    """Copy standard input to a temporary file (two passes need a file); the caller deletes it."""
    fd, name = tempfile.mkstemp(prefix=".hfenc-stdin-", dir=directory)
    with os.fdopen(fd, "wb") as out:
        stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else io.BytesIO(sys.stdin.read().encode())
        shutil.copyfileobj(stream, out, 1 << 20)
    return Path(name)
