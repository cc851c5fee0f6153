"""Readers: one text per record from .txt, .jsonl, .csv/.tsv (any of them .gz), or stdin.

Records stream; nothing holds the whole input. A first pass (`scan`) validates every record,
counts them (the memory-mapped output needs its row count up front), hashes the raw bytes (so
--resume can tell whether the input changed) and writes ids / kept line numbers beside the
output. The second pass (`chunks`) yields the texts in fixed-size chunks. Row i of the output is
record i of the input, always; blank records are embedded unless --skip-blank drops them.

Errors name the line (and for bad UTF-8, the byte offset in the file) and never show a traceback.
Reading fails closed (issue 10): any damage to a .gz (truncated, bad CRC or header, garbage in the
deflate data), an I/O error, a CSV record whose field count differs from its header, or an input
that changes between the two passes is one InputError naming the file or the line, never a
zlib/OSError traceback and never rows read from bytes that were not validated. The hash is taken
from the very bytes the scan parsed (a tee under the decompressor), and `chunks(expected=scan)`
hashes again as it streams, so a file replaced, appended to or removed between the passes fails
before its last chunk is handed out.

CSV follows Python's csv rules (quoted fields may hold commas and span lines). TSV is plain
tab-separated values by default: each line is one record split on tabs, and a `"` is an ordinary
character, as in `cut` or a database dump; `InputSpec(tsv_quoting=True)` reads it with CSV quoting.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from hfenc.errors import InputError
from hfenc.io.hashes import digest
from hfenc.io.records import (FORMATS, InputSpec, Record, Tally, changed, id_text, one_line,  # noqa: F401 (API)
                                open_raw, _TABLES, _format_of)

_BOM = codecs.BOM_UTF8
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Tee(io.RawIOBase):
    """The raw file as it is read: every byte is hashed and counted on its way to the decoder, so
    the recorded hash is of exactly the bytes that were validated (re-reading the file afterwards
    would hash whatever is there by then)."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = self._raw.readinto(buffer) or 0
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self.size += n
        return n

    def drain(self) -> None:
        """Read (and hash) what the decoder left: gzip padding after the last member."""
        block = bytearray(1 << 16)
        while self.readinto(block):
            pass

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


def _unreadable(path: str, gz: bool, lines_read: int, exc: BaseException) -> InputError:
    """The one-line error for a read that failed after `lines_read` complete lines."""
    where = f"after line {lines_read}" if lines_read else "at its start"
    if gz and isinstance(exc, EOFError):
        message = f"cannot read {path}: the gzip data ends early, {where} (is the file truncated?)"
    elif gz and isinstance(exc, zlib.error):
        detail = str(exc).split(": ", 1)[-1]  # drop zlib's "Error -3 while decompressing data: "
        message = f"cannot read {path}: corrupt gzip data {where} ({' '.join(detail.split())})"
    elif gz and isinstance(exc, (gzip.BadGzipFile, struct.error, EOFError)):
        message = f"cannot read {path}: corrupt gzip file {where} ({one_line(exc)})"
    else:  # an I/O error: EIO, a stale NFS handle, a file truncated under us, ...
        strerror = getattr(exc, "strerror", None)
        message = f"cannot read {path} {where}: {' '.join(strerror.split()) if strerror else one_line(exc)}"
        return InputError(message)
    return InputError(message, hint="check the file with `gzip -t`; fetch or compress it again")


def _decode(raw: bytes, line: int, offset: int, errors: str) -> str:
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise InputError(f"line {line}, byte {nul + 1}: NUL byte (file byte offset {offset + nul}); is this a binary file?")
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"line {line}, byte {exc.start + 1}: invalid UTF-8 (file byte offset {offset + exc.start})",
            hint="fix the file's encoding, or pass --encoding-errors replace",
        ) from None


def _lines(spec: InputSpec, tally: Tally | None = None, again: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, text without its line ending) for every line of the (decompressed) input.

    Every way the bytes cannot be read becomes one InputError naming the file and the lines read
    so far: gzip's EOFError / BadGzipFile / zlib.error / struct.error and any OSError (issue 10).
    A gzip CRC or length mismatch is only seen at the end, so a pass is complete only once this
    generator is exhausted; then `tally` holds the hash and size of the raw bytes."""
    path, gz = spec.path, spec.path.endswith(".gz")
    tee = _Tee(open_raw(path, again))
    line = offset = 0
    try:
        with tee:
            # gzip reads its header lazily, so a bad header fails inside the loop, caught below.
            fh: IO[bytes] = gzip.GzipFile(fileobj=tee, mode="rb") if gz else io.BufferedReader(tee, 1 << 20)
            with fh:
                for raw in fh:
                    line += 1
                    start, offset = offset, offset + len(raw)
                    if line == 1 and raw.startswith(_BOM):
                        raw, start = raw[3:], start + 3
                    raw = raw.rstrip(b"\n")
                    if raw.endswith(b"\r"):
                        raw = raw[:-1]
                    yield line, _decode(raw, line, start, spec.encoding_errors)
                tee.drain()
            if tally is not None:
                tally.sha256, tally.bytes = "sha256:" + tee.digest.hexdigest(), tee.size
    except (OSError, EOFError, zlib.error, struct.error) as exc:
        raise _unreadable(path, gz, line, exc) from None


def _jsonl(spec: InputSpec, tally: Tally | None, again: bool) -> Iterator[Record]:
    for line, text in _lines(spec, tally, again):
        if not text.strip():
            if spec.skip_blank:
                continue
            raise InputError(f"line {line}: blank line in JSONL input", hint="pass --skip-blank to skip blank lines")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"line {line}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:
            # An integer over Python's 4300-digit limit (a ValueError without .msg), or nesting
            # deeper than the interpreter's stack: valid JSON that Python cannot load.
            raise InputError(f"line {line}: JSON that Python cannot load ({one_line(exc)})") from None
        yield _json_record(obj, spec, line)


def _json_record(obj: object, spec: InputSpec, line: int, item: str = "the record") -> Record:
    """A JSON value as a record: an object's text field (jsonl, json), or a bare string (json)."""
    if isinstance(obj, str) and spec.resolved_format() == "json":
        if spec.id_field is not None or spec.field != "text":  # a bare string has no fields to read
            option = f"--id-field {spec.id_field}" if spec.id_field is not None else f"--field {spec.field}"
            raise InputError(f"line {line}: {item} is a bare string, so {option} has no field to read",
                             hint="give objects with the fields named, or drop the option")
        return Record(line, _unicode(obj, line, "the text", spec.encoding_errors))
    if not isinstance(obj, dict):
        raise InputError(f"line {line}: {item} is a JSON {_json_type(obj)}, not an object with a {spec.field!r} field")
    if spec.field not in obj:
        present = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
        raise InputError(f"line {line}: no field {spec.field!r}; the fields present are: {present}",
                         hint="choose the field with --field")
    value = obj[spec.field]
    if not isinstance(value, str):
        raise InputError(f"line {line}: field {spec.field!r} is a JSON {_json_type(value)}, not a string")
    value = _unicode(value, line, f"field {spec.field!r}", spec.encoding_errors)
    return Record(line, value, _id(obj, spec.id_field, line, spec.encoding_errors))


def _json_type(value: object) -> str:
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string",
             list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _json_array(spec: InputSpec, tally: Tally | None, again: bool) -> Iterator[Record]:
    """A .json file holding one array of strings or objects, parsed element by element as its
    lines arrive: an indented array streams in flat memory; a minified one (one line) is held
    whole, so big inputs belong in .jsonl."""
    decoder = json.JSONDecoder()
    lines = _lines(spec, tally, again)
    buf, pos, line = "", 0, 1  # line: the line number at buf[pos]
    state = "start"  # start -> open (after '[') -> sep (after an item) -> next (after ',') -> done

    def more() -> bool:
        nonlocal buf, pos
        nxt = next(lines, None)
        if nxt is None:
            return False
        buf, pos = buf[pos:] + nxt[1] + "\n", 0  # keep only the unparsed rest
        return True

    def skip_to(end: int) -> None:
        nonlocal pos, line
        line += buf.count("\n", pos, end)
        pos = end

    while True:
        end = pos
        while end < len(buf) and buf[end] in " \t\r\n":
            end += 1
        skip_to(end)
        if pos == len(buf):
            if not more():
                break
            continue
        char = buf[pos]
        if state == "start" and char != "[":
            raise InputError(f"line {line}: a .json input must be one array of texts or objects (found {char!r})",
                             hint="for one JSON object per line, name the file .jsonl")
        if state == "done":
            raise InputError(f"line {line}: text after the end of the JSON array")
        if state == "start" or (state == "sep" and char == ","):
            state = "open" if state == "start" else "next"
            skip_to(pos + 1)
            continue
        if char == "]" and state in ("open", "sep"):
            state = "done"
            skip_to(pos + 1)
            continue
        if state == "sep":
            raise InputError(f"line {line}: malformed JSON array (expected ',' or ']', found {char!r})")
        try:
            obj, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as exc:
            if more():  # the item goes on over the next line
                continue
            raise InputError(f"line {line}: malformed JSON ({exc.msg})") from None
        except (ValueError, RecursionError) as exc:
            raise InputError(f"line {line}: JSON that Python cannot load ({one_line(exc)})") from None
        record = _json_record(obj, spec, line, "the array item")
        if not (spec.skip_blank and not record.text.strip()):
            yield record
        skip_to(end)
        state = "sep"
    if state != "done":
        raise InputError(f"{spec.path}: no JSON array in the file" if state == "start"
                         else f"{spec.path}: the JSON array is not closed (no ']')")


def _unicode(value: str, line: int, what: str, errors: str) -> str:
    r"""`value`, refused (or, with encoding_errors=replace, repaired) when it holds a lone UTF-16
    surrogate: JSON's "\ud800" escape decodes to one, which is not Unicode; the tokenizer then
    fails with a TypeError and OUT.ids.txt cannot be written as UTF-8."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        if errors == "replace":
            return _SURROGATE.sub("\ufffd", value)
        raise InputError(
            f"line {line}: {what} holds a lone surrogate \\u{ord(value[exc.start]):04x}, which is not valid Unicode",
            hint="fix the file's escapes, or pass --encoding-errors replace",
        ) from None
    return value


def _id(obj: dict, key: str | None, line: int, errors: str = "strict") -> str | None:
    if key is None:
        return None
    if key not in obj or obj[key] is None:
        raise InputError(f"line {line}: no id field {key!r}")
    return _id_value(obj[key], line, errors)


def _id_value(value: object, line: int, errors: str = "strict") -> str:
    return _unicode(id_text(value, f"line {line}"), line, "the id", errors)


# csv refuses a field over csv.field_size_limit() (128 KiB by default) while a .txt line may be
# any length, so the same text would be fine in .txt and refused in .csv (issue 10). The limit is
# process-wide state of the csv module: raise it to the largest the C long holds only while
# hfenc parses one record, and give the previous value back after each, so code around hfenc
# never sees it changed. The count makes overlapping readers safe (jobs reads a second pass in
# the tokenizer thread while the main thread may look a line up with records()); other code
# parsing CSV in another thread at that instant sees a higher limit, never a lower one.
_FIELD_LIMIT = 2 ** (8 * struct.calcsize("l") - 1) - 1
_limit_lock = threading.Lock()
_limit_users = 0
_limit_saved = 0


def _raise_field_limit() -> None:
    global _limit_users, _limit_saved
    with _limit_lock:
        if _limit_users == 0:
            _limit_saved = csv.field_size_limit(_FIELD_LIMIT)
        _limit_users += 1


def _restore_field_limit() -> None:
    global _limit_users
    with _limit_lock:
        _limit_users -= 1
        if _limit_users == 0:
            csv.field_size_limit(_limit_saved)


def _quoted_rows(spec: InputSpec, delimiter: str, tally: Tally | None, again: bool) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each record, with CSV quoting (a quoted field may span lines)."""
    kind = "CSV" if delimiter == "," else "TSV"
    # csv.reader pulls lines on demand; remember where each record starts (a quoted field may
    # span lines) so messages and OUT.lines.npy name its first line.
    state = {"line": 0, "start": 0, "fresh": True}

    def feed() -> Iterator[str]:
        for n, text in _lines(spec, tally, again):
            state["line"] = n
            if state["fresh"] and text:  # csv skips blank lines between records
                state["start"], state["fresh"] = n, False
            yield text + "\n"

    # strict: a quoted field that is never closed (a truncated file) or text after a closing
    # quote is an error; without it csv silently joins the rest of the file into one field.
    reader = csv.reader(feed(), delimiter=delimiter, strict=True)
    while True:
        state["fresh"] = True
        _raise_field_limit()
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise InputError(f"line {state['start']}: malformed {kind} (a quoted field in this record "
                                 "is never closed: the file ends inside it)") from None
            raise InputError(f"line {state['line']}: malformed {kind} ({one_line(exc)})") from None
        finally:
            _restore_field_limit()
        if fields:  # [] is a blank line between records
            yield state["start"], fields


def _tab_rows(spec: InputSpec, tally: Tally | None, again: bool) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) of each line split on tabs: plain TSV has no quoting, and '"' is text."""
    for line, text in _lines(spec, tally, again):
        if text:  # blank lines between records are skipped, as for CSV
            yield line, text.split("\t")


def _table(spec: InputSpec, fmt: str, tally: Tally | None, again: bool) -> Iterator[Record]:
    quoted = fmt == "csv" or spec.tsv_quoting
    if quoted:
        rows = _quoted_rows(spec, "," if fmt == "csv" else "\t", tally, again)
    else:
        rows = _tab_rows(spec, tally, again)
    first = next(rows, None)
    if first is None:
        raise InputError(f"{spec.path} has no header row")
    header = first[1]
    column = spec.column or ("text" if "text" in header or len(header) != 1 else header[0])
    for key in (column, spec.id_field):
        if key is not None and key not in header:
            shown = ", ".join(name if name.isprintable() else repr(name) for name in header)
            raise InputError(f"no column {key!r}; the header has: {shown}",
                             hint="choose the text column with --column" if key == column
                             else "choose the id column with --id-field")
        if key is not None and header.count(key) > 1:
            raise InputError(f"column {key!r} appears {header.count(key)} times in the header",
                             hint="give each column of the header its own name")
    width, text_at = len(header), header.index(column)
    id_at = None if spec.id_field is None else header.index(spec.id_field)
    if fmt == "csv":
        extra_hint = 'quote a field that holds a comma: "a, b"'
    elif quoted:
        extra_hint = "quote a field that holds a tab"
    else:
        extra_hint = "plain TSV splits every tab; pass --tsv-quoting if the file quotes fields that hold tabs"
    for line, fields in rows:
        if len(fields) != width:  # a field lost or gained (a stray delimiter, a cut line)
            if len(fields) < width:
                raise InputError(f"line {line}: the record has no value in column {header[len(fields)]!r} "
                                 f"({len(fields)} of {width} fields)",
                                 hint="every record needs one field per column of the header")
            raise InputError(f"line {line}: the record has {len(fields)} fields, the header has {width}",
                             hint=extra_hint)
        yield Record(line, fields[text_at], None if id_at is None else _id_value(fields[id_at], line))


def records(spec: InputSpec, tally: Tally | None = None, again: bool = False) -> Iterator[Record]:
    """Every record of the input, in order, blank ones included unless skip_blank. `tally`
    receives the hash and size of the bytes parsed; `again`: the second pass over the input (a
    file gone since the first is InputChanged, not a missing input)."""
    if spec.more:  # several files: each is read and hashed on its own, rows in argument order
        parts = []
        for path in spec.paths:
            part = Tally()
            yield from records(_one(spec, path), part, again)
            parts.append((path, part))
        if tally is not None:
            combine_hashes(tally, parts)
        return
    fmt = spec.resolved_format()
    if fmt == "json":
        source: Iterator[Record] = _json_array(spec, tally, again)
    elif fmt == "jsonl":
        source = _jsonl(spec, tally, again)
    elif fmt in ("csv", "tsv"):
        source = _table(spec, fmt, tally, again)
    elif fmt in ("parquet", "arrow"):
        from hfenc.io.parquet import table_records  # pyarrow is an optional extra, imported there only

        source = table_records(spec, tally, again)
    else:
        if spec.id_field is not None:
            raise InputError("--id-field needs a .jsonl, .csv or .tsv input")
        source = (Record(n, t) for n, t in _lines(spec, tally, again))
    for record in source:
        if spec.skip_blank and not record.text.strip():
            continue
        yield record


def combine_hashes(tally: Tally, parts: list[tuple[str, Tally]]) -> None:
    """The hash of several files: of their names, hashes and sizes, in order."""
    digest = hashlib.sha256()
    for path, part in parts:
        digest.update(f"{path}\0{part.sha256}\0{part.bytes}\n".encode())
    tally.sha256, tally.bytes = "sha256:" + digest.hexdigest(), sum(part.bytes for _, part in parts)


def _one(spec: InputSpec, path: str) -> InputSpec:
    from dataclasses import replace

    return replace(spec, path=path, more=())


@dataclass(frozen=True)
class Scan:
    rows: int
    blank: int
    sha256: str
    bytes: int
    files: tuple[tuple[str, int], ...] = ()  # (path, records) per input file, in order


def scan(spec: InputSpec, ids_out: IO[str] | None = None, lines_out: IO[bytes] | None = None,
         hashes_out: IO[bytes] | None = None) -> Scan:
    """Validate and count every record; write ids (one per line), kept line numbers (int64) and
    the texts' SHA-256 (32 bytes each, hfenc.io.hashes).

    The hash and size are of the raw bytes this pass parsed (for a .gz, the compressed file)."""
    rows = blank = 0
    batch: list[int] = []
    tally, parts, files = Tally(), [], []
    for path in spec.paths:
        part, before = Tally(), rows
        for record in records(_one(spec, path), part):
            rows += 1
            if not record.text.strip():
                blank += 1
            if ids_out is not None:
                ids_out.write((record.id or "") + "\n")
            if hashes_out is not None:
                hashes_out.write(digest(record.text))
            if lines_out is not None:
                batch.append(record.line)
                if len(batch) >= 65536:
                    lines_out.write(np.asarray(batch, dtype="<i8").tobytes())
                    batch.clear()
        parts.append((path, part))
        files.append((path, rows - before))
    if spec.more:
        combine_hashes(tally, parts)
    else:
        tally = parts[0][1]
    if lines_out is not None and batch:
        lines_out.write(np.asarray(batch, dtype="<i8").tobytes())
    if rows == 0:
        raise InputError(f"input {' '.join(spec.paths)} is empty: no records to embed")
    assert tally.sha256 is not None  # the pass reached the end of the input
    return Scan(rows, blank, tally.sha256, tally.bytes, tuple(files))


def chunks(spec: InputSpec, chunk_size: int, start_row: int = 0,
           expected: Scan | None = None) -> Iterator[tuple[int, list[str]]]:
    """(first row, texts) for consecutive chunks of `chunk_size` records, from `start_row` on.

    With `expected` (this input's scan()), the pass proves it read the bytes that were validated:
    it hashes them again as it streams, so a file that was replaced, appended to, truncated or
    removed since the scan is an InputError ("input changed while it was being embedded"): at
    once when it has more records than the scan counted, else at the end of the input, which is
    always reached before the last chunk is handed out (the last chunk is held back until then)."""
    tally = Tally()
    again = expected is not None
    texts: list[str] = []
    row = 0
    for record in records(spec, tally, again):
        if expected is not None and row >= expected.rows:
            raise changed(spec.path, f"has more than the {expected.rows} records it had")
        if row >= start_row:
            if texts and row % chunk_size == 0:
                yield row - len(texts), texts
                texts = []
            texts.append(record.text)
        row += 1
    if expected is not None:
        if row != expected.rows:
            raise changed(spec.path, f"has {row} records, not the {expected.rows} it had")
        if (tally.sha256, tally.bytes) != (expected.sha256, expected.bytes):
            raise changed(spec.path, f"no longer has the bytes it was checked with ({tally.bytes} bytes, "
                                      f"it had {expected.bytes})")
    if texts:
        yield row - len(texts), texts


def spool_texts(directory: Path, texts: tuple[str, ...] | list[str]) -> Path:
    """Texts given as arguments, as a hidden JSONL file (a text may hold newlines); the caller
    deletes it."""
    fd, name = tempfile.mkstemp(prefix=".hfenc-text-", suffix=".jsonl", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        for text in texts:
            out.write(json.dumps({"text": text}) + "\n")
    return Path(name)


def expand_inputs(args: list[str]) -> list[str]:
    """Command-line inputs with globs expanded (sorted), for shells that pass them unexpanded."""
    import glob

    paths: list[str] = []
    for arg in args:
        if arg != "-" and not os.path.exists(arg) and any(c in arg for c in "*?["):
            found = sorted(glob.glob(arg))
            if not found:
                raise InputError(f"no file matches {arg!r}")
            paths.extend(found)
        else:
            paths.append(arg)
    return paths


def spool_stdin(directory: Path) -> Path:
    """Copy standard input to a temporary file (two passes need a file); the caller deletes it."""
    fd, name = tempfile.mkstemp(prefix=".hfenc-stdin-", dir=directory)
    with os.fdopen(fd, "wb") as out:
        stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else io.BytesIO(sys.stdin.read().encode())
        shutil.copyfileobj(stream, out, 1 << 20)
    return Path(name)
