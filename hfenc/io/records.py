"""What every input reader shares: the input's description (InputSpec), a record, what a pass
read (Tally), the formats known by suffix, and opening a file for the first or the second pass.

The text readers (hfenc.io.inputs) and the table readers (hfenc.io.parquet, which needs the optional
pyarrow) both build on this module and on nothing of each other's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from hfenc.errors import InputChanged, InputError, UnknownChoiceError

Format = Literal["txt", "jsonl", "csv", "tsv"]
FORMATS = ("txt", "jsonl", "json", "csv", "tsv", "parquet", "arrow")
_SUFFIXES = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
             ".csv": "csv", ".tsv": "tsv",
             # tables, read by hfenc.io.parquet (the `parquet` extra): Parquet, Arrow IPC / Feather v2
             ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow"}
# Which options mean something for which format (issue 11: the others are refused, not ignored).
_APPLIES = {"field": ("jsonl", "json"), "column": ("csv", "tsv", "parquet", "arrow"),
            "id_field": ("jsonl", "json", "csv", "tsv", "parquet", "arrow"), "tsv_quoting": ("tsv",)}
_OPTION = {"field": "--field", "column": "--column", "id_field": "--id-field", "tsv_quoting": "--tsv-quoting"}
@dataclass(frozen=True)
class InputSpec:
    path: str  # a file, or "-" for stdin
    format: str | None = None  # None: from the suffix (txt when unknown)
    field: str = "text"  # jsonl key holding the text
    column: str | None = None  # csv/tsv header holding the text (default: "text", else the only column)
    id_field: str | None = None  # jsonl key / csv column written out alongside
    encoding_errors: Literal["strict", "replace"] = "strict"
    skip_blank: bool = False
    tsv_quoting: bool = False  # TSV: False splits every line on tabs ('"' is text); True: CSV-style quotes
    more: tuple[str, ...] = ()  # further input files, read after `path`, in order

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.path, *self.more)

    def resolved_format(self) -> str:
        """The format: --format, else the suffix (known suffixes only; issue 11: a file is never
        guessed to be text). Several files must share one format."""
        if self.format is not None:
            if self.format not in FORMATS:
                raise UnknownChoiceError("input format", self.format, FORMATS)
            return self.format
        formats = {_format_of(p) for p in self.paths}
        if len(formats) > 1:
            raise InputError(f"the input files have different formats ({', '.join(sorted(formats))}); "
                             "embed them in separate jobs, or give --format")
        return formats.pop()

    def check(self) -> None:
        """Refuse options that mean nothing for this format (they would be silently ignored)."""
        fmt = self.resolved_format()
        given = {"field": self.field != "text", "column": self.column is not None,
                 "id_field": self.id_field is not None, "tsv_quoting": self.tsv_quoting}
        for name, formats in _APPLIES.items():
            if given[name] and fmt not in formats:
                where = " or ".join(f".{f}" for f in formats)
                raise InputError(f"{_OPTION[name]} does not apply to {fmt} input; it is for {where} input")


_TABLES = ("parquet", "arrow")  # compressed inside: never read through gzip


def _format_of(path: str) -> str:
    if path == "-":
        return "txt"
    gz = path.endswith(".gz")
    suffix = Path(path[:-3] if gz else path).suffix.lower()
    if suffix not in _SUFFIXES:  # (a gzipped table is refused by name where it is read)
        if os.path.isdir(path):
            raise InputError(f"input {path} is a directory, not a file", hint="name its files, or a glob such as 'dir/*.txt'")
        if not os.path.exists(path):
            raise InputError(f"input file {path} does not exist")
        texts = sorted(k for k, f in _SUFFIXES.items() if f not in _TABLES)
        tables = sorted(k for k, f in _SUFFIXES.items() if f in _TABLES)
        raise InputError(f"{path}: unknown input type {suffix or '(no suffix)'!r}; hfenc reads {', '.join(texts)} (each also "
                         f"as .gz) and {', '.join(tables)}",
                         hint="give --format txt|jsonl|json|csv|tsv|parquet|arrow to read it as one of them")
    return _SUFFIXES[suffix]


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line where the record starts
    text: str
    id: str | None = None


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (error messages never span lines)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def changed(path: str, detail: str) -> InputError:
    return InputChanged(f"input changed while it was being embedded: {path} {detail}",
                      hint="embed a copy of the file that nothing writes to while hfenc runs")


def open_raw(path: str, again: bool = False) -> IO[bytes]:
    """The file, unbuffered (the hashing tee buffers above it). `again`: this is the second pass."""
    p = Path(path)
    if not p.exists():
        if again:  # scan() opened it a moment ago
            raise changed(path, "was removed")
        raise InputError(f"input file {path} does not exist")
    if p.is_dir():
        raise InputError(f"input {path} is a directory, not a file")
    try:
        return open(p, "rb", buffering=0)
    except FileNotFoundError:  # removed between the check and the open
        if again:
            raise changed(path, "was removed") from None
        raise InputError(f"input file {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot open {path}: {exc.strerror or one_line(exc)}") from None


@dataclass
class Tally:
    """What one pass read: filled in when the pass reaches the end of the input."""
    sha256: str | None = None
    bytes: int = 0


_KINDS = {bool: "a boolean", float: "a fractional number", dict: "an object", list: "an array",
          tuple: "an array", bytes: "binary data", bytearray: "binary data", type(None): "null"}


def id_text(value: object, where: str) -> str:
    """An id as hfenc writes it (one line of OUT.ids.txt, a string column): a string as it is, an
    integer in decimal. Anything else is refused: written as Python shows it (`{'k': 1}`, `True`,
    `b'ab'`), it would be an id no other tool reads back."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        kind = _KINDS.get(type(value), f"a {type(value).__name__}")
        raise InputError(f"{where}: the id is {kind}, not a string or an integer",
                         hint="ids must be strings or integers")
    if "\n" in text or "\r" in text:
        raise InputError(f"{where}: the id contains a line break")
    return text
