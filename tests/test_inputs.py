"""hfenc.io.inputs: the readers (txt, jsonl, csv/tsv, gzip), the validating scan, chunking, and one
clear InputError for each kind of bad input (issue 6, "Inputs" and "Bad input").

Expected values are written out by hand from the bytes each test builds (line numbers, byte
offsets, hashes from hashlib), never computed with hfenc.
"""

from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import io
import zlib
from pathlib import Path

import numpy as np
import pytest

import hfenc.io.inputs
import hfenc.io.records
from hfenc.errors import HfencError, InputError, UnknownChoiceError
from hfenc.io.inputs import InputSpec, chunks, records, scan


def _write(directory: Path, name: str, data: bytes | str) -> str:
    path = directory / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return str(path)


def _texts(spec: InputSpec) -> list[str]:
    return [r.text for r in records(spec)]


def _scan(spec: InputSpec):
    """scan() with both side outputs captured: (Scan, ids lines, kept line numbers)."""
    ids, lines = io.StringIO(), io.BytesIO()
    info = scan(spec, ids if spec.id_field else None, lines if spec.skip_blank else None)
    kept = np.frombuffer(lines.getvalue(), dtype="<i8").tolist()
    return info, ids.getvalue().splitlines(), kept


# ---- .txt -----------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"alpha beta\ngamma\ndelta epsilon\n",
    b"alpha beta\r\ngamma\r\ndelta epsilon\r\n",
    b"alpha beta\r\ngamma\ndelta epsilon",  # mixed endings, no final newline
])
def test_txt_one_record_per_line_any_line_ending(tmp_path, data):
    spec = InputSpec(_write(tmp_path, "in.txt", data))
    assert _texts(spec) == ["alpha beta", "gamma", "delta epsilon"]
    assert [r.line for r in records(spec)] == [1, 2, 3]


def test_txt_utf8_bom_is_stripped_and_unicode_kept(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.txt", b"\xef\xbb\xbfcaf\xc3\xa9\n\xe2\x82\xac 5\n"))
    assert _texts(spec) == ["café", "€ 5"]


def test_unknown_suffix_is_refused_and_format_forces_one(tmp_path):
    """Issue 11: a file is never guessed to be text (a .parquet or .dat read as lines)."""
    path = _write(tmp_path, "in.dat", b"a\rb\nc\n")
    with pytest.raises(InputError, match=r"unknown input type '\.dat'; hfenc reads .*\.jsonl"):
        InputSpec(path).resolved_format()
    spec = InputSpec(path, format="txt")
    assert spec.resolved_format() == "txt"
    assert _texts(spec) == ["a\rb", "c"]  # a carriage return inside a line is kept


def test_blank_lines_are_kept_and_counted(tmp_path):
    data = b"first\n\n   \nlast\n\n"
    spec = InputSpec(_write(tmp_path, "in.txt", data))
    assert _texts(spec) == ["first", "", "   ", "last", ""]
    info, _, _ = _scan(spec)
    assert (info.rows, info.blank) == (5, 3)
    assert info.bytes == len(data)
    assert info.sha256 == "sha256:" + hashlib.sha256(data).hexdigest()


def test_skip_blank_drops_blank_lines_and_writes_kept_line_numbers(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.txt", b"first\n\n   \nthird\r\n\nfifth\n"), skip_blank=True)
    assert _texts(spec) == ["first", "third", "fifth"]
    info, _, kept = _scan(spec)
    assert (info.rows, info.blank) == (3, 0)
    assert kept == [1, 4, 6]


# ---- .jsonl ---------------------------------------------------------------------------------

JSONL = (
    '{"id": 7, "text": "hello world", "body": "b1"}\n'
    '{"id": "x-2", "text": "caf\\u00e9 \\"quoted\\"", "body": "b2"}\n'
    '{"id": 9, "text": "", "body": "b3"}\n'
)


def test_jsonl_default_field_text(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.jsonl", JSONL))
    assert spec.resolved_format() == "jsonl"
    assert _texts(spec) == ["hello world", 'café "quoted"', ""]


def test_jsonl_other_field_and_id_field(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.jsonl", JSONL), field="body", id_field="id")
    assert _texts(spec) == ["b1", "b2", "b3"]
    info, ids, _ = _scan(spec)
    assert info.rows == 3
    assert ids == ["7", "x-2", "9"]


def test_jsonl_skip_blank_drops_blank_lines_and_empty_texts(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.ndjson", JSONL.replace("\n", "\n\n", 1)), skip_blank=True)
    assert spec.resolved_format() == "jsonl"
    info, _, kept = _scan(spec)
    assert info.rows == 2
    assert kept == [1, 3]  # line 2 is blank, line 4 has an empty text


def test_jsonl_blank_line_without_skip_blank_names_the_line(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.jsonl", '{"text": "a"}\n\n{"text": "b"}\n'))
    with pytest.raises(InputError, match=r"line 2: blank line") as info:
        _scan(spec)
    assert "--skip-blank" in info.value.hint


# ---- .csv / .tsv ----------------------------------------------------------------------------

CSV = 'id,text,other\n1,"hello, world",x\n2,"two\nlines ""quoted""",y\n3,plain,z\n'


def test_csv_text_column_by_default_with_quoted_multiline_fields(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.csv", CSV), id_field="id")
    assert _texts(spec) == ["hello, world", 'two\nlines "quoted"', "plain"]
    info, ids, _ = _scan(spec)
    assert info.rows == 3
    assert ids == ["1", "2", "3"]


def test_csv_crlf_file_and_chosen_column(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.csv", CSV.replace("\n", "\r\n")), column="other")
    assert _texts(spec) == ["x", "y", "z"]


def test_csv_single_column_without_text_header_uses_that_column(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.csv", "sentence\nfirst one\nsecond one\n"))
    assert _texts(spec) == ["first one", "second one"]


def test_csv_header_after_a_bom_is_found(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.csv", b"\xef\xbb\xbftext,id\r\nfirst,1\r\n"), id_field="id")
    assert _texts(spec) == ["first"]
    assert _scan(spec)[1] == ["1"]


def test_tsv_column_and_id_column(tmp_path):
    # Quoting is asked for (tsv_quoting): a quoted field may hold a tab.
    data = "key\tbody\nk1\tfirst, with a comma\nk2\t\"tab\tinside\"\n"
    spec = InputSpec(_write(tmp_path, "in.tsv", data), column="body", id_field="key", tsv_quoting=True)
    assert spec.resolved_format() == "tsv"
    assert _texts(spec) == ["first, with a comma", "tab\tinside"]
    assert _scan(spec)[1] == ["k1", "k2"]


def test_format_option_overrides_the_suffix(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.txt", "text\nfrom csv\n"), format="csv")
    assert _texts(spec) == ["from csv"]


def test_csv_skip_blank_kept_line_numbers(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.csv", "id,text\n1,a\n2,\n3,c\n"), skip_blank=True)
    info, _, kept = _scan(spec)
    assert info.rows == 2
    assert kept == [2, 4]


def test_csv_multiline_record_line_number_is_its_first_line(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.csv", 'id,text\n1,"a\nb"\n2,\n3,c\n'), skip_blank=True)
    info, _, kept = _scan(spec)
    assert info.rows == 2
    assert kept == [2, 5]


# ---- gzip -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, data, kwargs, expected", [
    ("in.txt.gz", "\ufeffone\r\ntwo\n\nfour\n", {}, ["one", "two", "", "four"]),
    ("in.jsonl.gz", '{"text": "one"}\n{"text": "two"}\n', {}, ["one", "two"]),
    ("in.csv.gz", 'text\n"o,ne"\n"t\nwo"\n', {}, ["o,ne", "t\nwo"]),
    ("in.tsv.gz", "a\tb\n1\tone\n2\ttwo\n", {"column": "b"}, ["one", "two"]),
])
def test_gzip_of_each_format(tmp_path, name, data, kwargs, expected):
    raw = gzip.compress(data.encode("utf-8"))
    spec = InputSpec(_write(tmp_path, name, raw), **kwargs)
    assert _texts(spec) == expected
    info, _, _ = _scan(spec)
    assert info.rows == len(expected)
    # The hash is of the file as stored (what --resume compares), not of the decompressed text.
    assert info.sha256 == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_corrupt_gzip_is_an_input_error(tmp_path):
    raw = gzip.compress(b"one\ntwo\n" * 200)
    spec = InputSpec(_write(tmp_path, "in.txt.gz", raw[: len(raw) // 2]))
    with pytest.raises(InputError, match="cannot read"):
        _scan(spec)


# ---- chunks ---------------------------------------------------------------------------------

def _numbered(tmp_path: Path, n: int) -> tuple[InputSpec, list[str]]:
    texts = [f"text number {i}" for i in range(n)]
    return InputSpec(_write(tmp_path, "in.txt", "\n".join(texts) + "\n")), texts


def test_chunks_are_consecutive_and_of_the_requested_size(tmp_path):
    spec, texts = _numbered(tmp_path, 23)
    got = list(chunks(spec, 7))
    assert [start for start, _ in got] == [0, 7, 14, 21]
    assert [len(t) for _, t in got] == [7, 7, 7, 2]
    assert [t for _, chunk in got for t in chunk] == texts


def test_chunks_exact_multiple_and_one_big_chunk(tmp_path):
    spec, texts = _numbered(tmp_path, 21)
    assert [(s, len(t)) for s, t in chunks(spec, 7)] == [(0, 7), (7, 7), (14, 7)]
    assert list(chunks(spec, 1000)) == [(0, texts)]


def test_chunks_start_row_skips_finished_chunks(tmp_path):
    spec, texts = _numbered(tmp_path, 23)
    got = list(chunks(spec, 7, start_row=14))
    assert got == [(14, texts[14:21]), (21, texts[21:])]
    assert list(chunks(spec, 7, start_row=23)) == []


def test_chunks_start_row_inside_a_chunk_covers_exactly_the_rest(tmp_path):
    spec, texts = _numbered(tmp_path, 23)
    got = list(chunks(spec, 7, start_row=10))
    assert got[0][0] == 10
    for (start, chunk), (following, _) in zip(got, got[1:]):
        assert following == start + len(chunk)
    assert all(1 <= len(chunk) <= 7 for _, chunk in got)
    assert [t for _, chunk in got for t in chunk] == texts[10:]


def test_chunks_count_rows_after_skip_blank(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.txt", "a\n\nb\nc\n\n\nd\ne\n"), skip_blank=True)
    assert list(chunks(spec, 2)) == [(0, ["a", "b"]), (2, ["c", "d"]), (4, ["e"])]
    assert list(chunks(spec, 2, start_row=4)) == [(4, ["e"])]


# ---- bad input: one InputError each, naming the problem ---------------------------------------

def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="does not exist") as info:
        _scan(InputSpec(path))
    assert path in str(info.value)


def test_directory(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        _scan(InputSpec(str(tmp_path)))


@pytest.mark.parametrize("name, data, kwargs", [
    ("empty.txt", b"", {}),
    ("empty.jsonl", b"", {}),
    ("header-only.csv", b"text\n", {}),
    ("only-blank.txt", b"\n  \n\n", {"skip_blank": True}),
    ("empty.txt.gz", gzip.compress(b""), {}),
])
def test_empty_input(tmp_path, name, data, kwargs):
    with pytest.raises(InputError, match="empty|no header"):
        _scan(InputSpec(_write(tmp_path, name, data), **kwargs))


def test_invalid_utf8_names_line_and_byte_offset(tmp_path):
    data = b"ok line\nsecond\nbad \xff here\nfine\n"
    # line 3 starts at byte 8 + 7 = 15; "bad " is 4 bytes, so 0xff is byte 19 of the file.
    spec = InputSpec(_write(tmp_path, "in.txt", data))
    with pytest.raises(InputError) as info:
        _scan(spec)
    message = str(info.value)
    assert "line 3" in message and "file byte offset 19" in message and "UTF-8" in message
    assert "--encoding-errors replace" in info.value.hint


def test_invalid_utf8_offset_counts_bom_and_crlf(tmp_path):
    data = b"\xef\xbb\xbfab\r\ncd\xc3\r\n"  # truncated 2-byte sequence at byte 3+2+2+2 = 9
    with pytest.raises(InputError, match=r"line 2, byte \d+: invalid UTF-8 \(file byte offset 9\)"):
        _scan(InputSpec(_write(tmp_path, "in.txt", data)))


def test_invalid_utf8_on_the_first_line_after_a_bom(tmp_path):
    data = b"\xef\xbb\xbfa\x80b\n"  # 0x80 is byte 3 + 1 = 4
    with pytest.raises(InputError, match=r"line 1, byte \d+: invalid UTF-8 \(file byte offset 4\)"):
        _scan(InputSpec(_write(tmp_path, "in.txt", data)))


def test_invalid_utf8_in_jsonl_and_csv(tmp_path):
    # line 2 starts at byte 17 (len of '{"text": "fine"}\n'); '{"text": "' is 10 more bytes
    with pytest.raises(InputError, match=r"line 2, byte \d+: invalid UTF-8 \(file byte offset 27\)"):
        _scan(InputSpec(_write(tmp_path, "in.jsonl", b'{"text": "fine"}\n{"text": "\xfe"}\n')))
    # "text\n" + "abc\n" = 9 bytes: the 0xe9 opening line 3
    with pytest.raises(InputError, match=r"line 3, byte \d+: invalid UTF-8 \(file byte offset 9\)"):
        _scan(InputSpec(_write(tmp_path, "in.csv", b"text\nabc\n\xe9t\xe9\n")))


def test_encoding_errors_replace_goes_on_with_replacement_characters(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.txt", b"ok\nbad \xff\xfe here\nfine\n"), encoding_errors="replace")
    assert _texts(spec) == ["ok", "bad \ufffd\ufffd here", "fine"]
    assert _scan(spec)[0].rows == 3


def test_nul_byte_names_line_and_offset(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.txt", b"a\nb\x00c\n"))
    with pytest.raises(InputError, match=r"line 2, byte \d+: NUL byte \(file byte offset 3\)"):
        _scan(spec)
    # replace does not make a binary file acceptable
    with pytest.raises(InputError, match="NUL"):
        _scan(InputSpec(spec.path, encoding_errors="replace"))


def test_malformed_json_line_names_the_line(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c"\n'))
    with pytest.raises(InputError, match=r"line 3: malformed JSON"):
        _scan(spec)


@pytest.mark.parametrize("line, message", [
    ('{"body": "x"}', r"line 2: no field 'text'; the fields present are: 'body'"),
    ('["text"]', r"line 2: the record is a JSON array, not an object with a 'text' field"),
    ('{"text": 5}', r"line 2: field 'text' is a JSON number, not a string"),
    ('{"text": null}', r"line 2: field 'text' is a JSON null, not a string"),
])
def test_jsonl_missing_or_wrong_field_names_the_line(tmp_path, line, message):
    spec = InputSpec(_write(tmp_path, "in.jsonl", '{"text": "ok"}\n' + line + "\n"))
    with pytest.raises(InputError, match=message):
        _scan(spec)


def test_jsonl_missing_id_field_names_the_line(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.jsonl", '{"text": "a", "id": 1}\n{"text": "b"}\n'), id_field="id")
    with pytest.raises(InputError, match=r"line 2: no id field 'id'"):
        _scan(spec)


def test_jsonl_field_option_names_the_missing_field(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.jsonl", '{"text": "a"}\n'), field="body")
    with pytest.raises(InputError, match=r"line 1: no field 'body'") as info:
        _scan(spec)
    assert "--field" in info.value.hint


def test_csv_missing_column_lists_the_header(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.csv", "id,sentence,other\n1,a,b\n"), column="body")
    with pytest.raises(InputError, match=r"no column 'body'; the header has: id, sentence, other"):
        _scan(spec)
    # no --column: the default 'text' is required when there are several columns
    with pytest.raises(InputError, match=r"no column 'text'; the header has: id, sentence, other"):
        _scan(InputSpec(spec.path))
    with pytest.raises(InputError, match=r"no column 'key'"):
        _scan(InputSpec(spec.path, column="sentence", id_field="key"))


def test_csv_short_row_names_the_line(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.csv", "id,text\n1,a\n2\n"))
    with pytest.raises(InputError, match=r"line 3: the record has no value in column 'text'"):
        _scan(spec)


def test_unknown_format_lists_the_choices(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.txt", "a\n"), format="xml")
    with pytest.raises(UnknownChoiceError, match=r"unknown input format 'xml'; choose one of: .*csv, json, jsonl.*tsv, txt"):
        spec.resolved_format()
    with pytest.raises(HfencError):
        _scan(spec)


@pytest.mark.parametrize("option", [{"id_field": "id"}, {"field": "body"}])
def test_a_json_array_of_bare_strings_refuses_field_options(tmp_path, option):
    # a bare string has no fields: the option was ignored and the ids written empty
    spec = InputSpec(_write(tmp_path, "in.json", '["a", "b"]\n'), **option)
    name = "--id-field id" if "id_field" in option else "--field body"
    with pytest.raises(InputError, match=rf"line 1: the array item is a bare string, so {name} has no field"):
        _scan(spec)
    assert [r.text for r in records(InputSpec(spec.path))] == ["a", "b"]  # without the option it reads


@pytest.mark.parametrize("value, kind", [
    ('{"k": 1}', "an object"), ("true", "a boolean"), ("1.5", "a fractional number"), ("[1]", "an array"),
])
def test_ids_that_are_not_strings_or_integers_are_refused_naming_the_line(tmp_path, value, kind):
    data = '{"text": "a", "id": "x"}\n{"text": "b", "id": %s}\n' % value
    with pytest.raises(InputError, match=rf"line 2: the id is {kind}, not a string or an integer"):
        _scan(InputSpec(_write(tmp_path, "in.jsonl", data), id_field="id"))


def test_integer_ids_are_written_in_decimal(tmp_path):
    data = '{"text": "a", "id": 7}\n{"text": "b", "id": -12345678901234567890}\n{"text": "c", "id": "x"}\n'
    _, ids, _ = _scan(InputSpec(_write(tmp_path, "in.jsonl", data), id_field="id"))
    assert ids == ["7", "-12345678901234567890", "x"]


def test_id_field_with_plain_text_is_refused(tmp_path):
    with pytest.raises(InputError, match="--id-field needs"):
        _scan(InputSpec(_write(tmp_path, "in.txt", "a\n"), id_field="id"))


def test_csv_line_numbers_count_blank_lines_between_records(tmp_path):
    from hfenc.io.inputs import InputSpec, records

    path = tmp_path / "in.csv"
    path.write_text("text,id\na,1\n\nb,2\n", encoding="utf-8")
    got = [(r.line, r.text) for r in records(InputSpec(str(path)))]
    assert got == [(2, "a"), (4, "b")]


# ---- issue 10: damaged gzip, I/O errors, inputs that change between the passes ---------------

def _one_line_error(excinfo, *needles: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def _gzip_header() -> bytes:
    # RFC 1952: magic, deflate, no flags, mtime 0, no extra flags, OS unknown
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def _gzip_trailer(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "little") + (len(data) & 0xFFFFFFFF).to_bytes(4, "little")


def _lines_text(n: int) -> bytes:
    # digits of a fixed LCG: poorly compressible, so the deflate data spans many reads
    x, out = 12345, []
    for i in range(n):
        x = (x * 1103515245 + 12345) % 2**31
        out.append(f"row {i} {x} {x * 7 % 1000003} {x % 977}\n")
    return "".join(out).encode()


GOOD_GZ_TEXT = _lines_text(40)


@pytest.mark.parametrize("name, damage", [
    ("truncated", lambda raw: raw[: len(raw) // 2]),
    ("header only", lambda raw: raw[:10]),
    ("bad magic", lambda raw: raw[:1] + b"\x8c" + raw[2:]),
    ("bad method", lambda raw: raw[:2] + b"\x07" + raw[3:]),
    ("bad crc", lambda raw: raw[:-8] + bytes([raw[-8] ^ 0x01]) + raw[-7:]),
    ("bad length", lambda raw: raw[:-1] + bytes([raw[-1] ^ 0x01])),
    ("reserved block type", lambda raw: raw[:10] + b"\x07" + raw[11:]),  # BFINAL=1, BTYPE=11: zlib.error
    ("garbage after the member", lambda raw: raw + b"garbage!"),
    ("trailer cut short", lambda raw: raw[:-3]),
])
def test_damaged_gzip_is_one_input_error_naming_the_file(tmp_path, name, damage):
    raw = gzip.compress(GOOD_GZ_TEXT, mtime=0)
    path = _write(tmp_path, "in.txt.gz", damage(raw))
    with pytest.raises(InputError) as info:
        _scan(InputSpec(path))
    _one_line_error(info, f"cannot read {path}", "gzip")
    assert "gzip -t" in info.value.hint


def test_zlib_error_in_the_middle_names_the_line_reached(tmp_path):
    # A full flush ends the first part on a byte boundary, so the next byte is a block header;
    # 0x07 declares the reserved block type: zlib fails there, after the first part's lines.
    text = _lines_text(3000)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = compressor.compress(text) + compressor.flush(zlib.Z_FULL_FLUSH)
    path = _write(tmp_path, "in.txt.gz", _gzip_header() + body + b"\x07" + b"\x00" * 64)
    with pytest.raises(InputError) as info:
        _scan(InputSpec(path))
    message = _one_line_error(info, f"cannot read {path}: corrupt gzip data after line ", "invalid block type")
    reached = int(message.split("after line ")[1].split()[0])
    assert 0 < reached <= 3000


def test_gzip_stream_cut_short_names_the_line_reached(tmp_path):
    text = _lines_text(3000)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)  # no final block
    path = _write(tmp_path, "in.txt.gz", _gzip_header() + body)
    with pytest.raises(InputError) as info:
        _scan(InputSpec(path))
    message = _one_line_error(info, f"cannot read {path}: the gzip data ends early, after line ")
    assert "after line 3000 " in message or "after line 2999 " in message  # all lines were read


def test_every_single_byte_corruption_of_a_gzip_is_read_or_refused(tmp_path):
    # The case of issue 10: some single-byte changes made zlib raise through the reader.
    raw = gzip.compress(b"".join(b"line %d of the file\n" % i for i in range(30)), mtime=0)
    path = tmp_path / "in.txt.gz"
    outcomes = {"ok": 0, "refused": 0}
    for position in range(len(raw)):
        for damaged in (raw[:position] + bytes([raw[position] ^ 0xFF]) + raw[position + 1:], raw[:position]):
            path.write_bytes(damaged)
            spec = InputSpec(str(path))
            try:
                info = scan(spec)
                got = [t for _, chunk in chunks(spec, 7, expected=info) for t in chunk]
            except InputError as exc:
                assert "\n" not in str(exc)
                outcomes["refused"] += 1
            else:
                assert len(got) == info.rows
                outcomes["ok"] += 1
    assert outcomes["refused"] > len(raw), outcomes  # a test that cannot fail is a defect


def test_gzip_padded_with_zeros_is_read(tmp_path):
    raw = gzip.compress(b"one\ntwo\n", mtime=0) + b"\x00" * 32
    spec = InputSpec(_write(tmp_path, "in.txt.gz", raw))
    assert _texts(spec) == ["one", "two"]
    info, _, _ = _scan(spec)
    assert info.sha256 == "sha256:" + hashlib.sha256(raw).hexdigest() and info.bytes == len(raw)


def test_concatenated_gzip_members_are_one_input(tmp_path):
    raw = gzip.compress(b"one\ntwo\n", mtime=0) + gzip.compress(b"three\n", mtime=0)
    assert _texts(InputSpec(_write(tmp_path, "in.txt.gz", raw))) == ["one", "two", "three"]


class _FailingRaw(io.RawIOBase):
    """A file whose reads fail with EIO once `good` bytes have been read (a bad disk sector)."""

    def __init__(self, path: str, good: int) -> None:
        self._fh, self._left = open(path, "rb", buffering=0), good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._left <= 0:
            raise OSError(errno.EIO, "Input/output error")
        n = self._fh.readinto(memoryview(buffer)[: min(len(buffer), self._left)])
        self._left -= n
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


@pytest.mark.parametrize("name, data", [
    ("in.txt", b"first\nsecond\nthird\n" * 50),
    ("in.txt.gz", gzip.compress(_lines_text(2000), mtime=0)),
])
def test_io_error_while_reading_is_one_input_error(tmp_path, monkeypatch, name, data):
    path = _write(tmp_path, name, data)
    real_open = open

    def failing_open(file, mode="r", buffering=-1, *args, **kwargs):
        if str(file) == path:
            return _FailingRaw(path, good=len(data) // 2)
        return real_open(file, mode, buffering, *args, **kwargs)

    monkeypatch.setattr(hfenc.io.records, "open", failing_open, raising=False)  # the module that opens inputs
    with pytest.raises(InputError) as info:
        _scan(InputSpec(path))
    message = _one_line_error(info, f"cannot read {path} after line ", "Input/output error")
    assert int(message.split("after line ")[1].split(":")[0]) > 0  # the line reached is named


def test_directory_and_removed_file_in_the_second_pass(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        list(chunks(InputSpec(str(tmp_path)), 4))
    spec = InputSpec(_write(tmp_path, "in.txt", "a\nb\nc\n"))
    info = scan(spec)
    Path(spec.path).unlink()
    with pytest.raises(InputError) as excinfo:
        list(chunks(spec, 2, expected=info))
    _one_line_error(excinfo, "input changed while it was being embedded", spec.path, "removed")
    with pytest.raises(InputError, match="does not exist"):  # no scan to compare with
        list(chunks(spec, 2))


def _changed_after_scan(tmp_path, before: bytes, after: bytes, chunk: int = 4):
    """scan() the file, replace its bytes, then stream chunks(expected=...): (starts seen, error)."""
    spec = InputSpec(_write(tmp_path, "in.txt", before))
    info = scan(spec)
    Path(spec.path).write_bytes(after)
    starts = []
    with pytest.raises(InputError) as excinfo:
        for start, texts in chunks(spec, chunk, expected=info):
            starts.append(start)
    _one_line_error(excinfo, "input changed while it was being embedded", spec.path)
    return starts, str(excinfo.value)


def test_input_replaced_with_other_bytes_fails_before_the_last_chunk(tmp_path):
    before = b"".join(b"text %d\n" % i for i in range(10))
    starts, message = _changed_after_scan(tmp_path, before, before.replace(b"text 9", b"TEXT 9"))
    assert starts == [0, 4]  # rows 8-9 (the last chunk) are never handed out
    assert "no longer has the bytes it was checked with" in message


def test_input_appended_to_fails_as_soon_as_it_has_more_records(tmp_path):
    before = b"".join(b"text %d\n" % i for i in range(10))
    starts, message = _changed_after_scan(tmp_path, before, before + b"more\n" * 100)
    assert starts == [0, 4]
    assert "has more than the 10 records it had" in message


def test_input_truncated_fails_at_its_end(tmp_path):
    before = b"".join(b"text %d\n" % i for i in range(10))
    starts, message = _changed_after_scan(tmp_path, before, before[: before.index(b"text 6")])
    assert starts == [0]
    assert "has 6 records, not the 10 it had" in message


def test_unchanged_input_streams_every_chunk_with_expected(tmp_path):
    data = b"".join(b"text %d\n" % i for i in range(10))
    spec = InputSpec(_write(tmp_path, "in.txt.gz", gzip.compress(data, mtime=0)))
    info = scan(spec)
    Path(spec.path).write_bytes(gzip.compress(data, mtime=0))  # rewritten with the same bytes
    got = list(chunks(spec, 4, expected=info))
    assert [s for s, _ in got] == [0, 4, 8]
    assert [t for _, c in got for t in c] == [f"text {i}" for i in range(10)]
    assert list(chunks(spec, 4, start_row=8, expected=info)) == [(8, ["text 8", "text 9"])]


def test_scan_hashes_the_bytes_it_parsed_in_one_pass(tmp_path, monkeypatch):
    # The hash must be of the bytes that were validated: reading the file again afterwards would
    # hash whatever is there by then. One open per pass.
    spec = InputSpec(_write(tmp_path, "in.txt", b"a\nb\n"))
    opened = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(hfenc.io.records, "open", counting_open, raising=False)
    info = scan(spec)
    assert opened == [spec.path]
    assert info.sha256 == "sha256:" + hashlib.sha256(b"a\nb\n").hexdigest()


# ---- issue 10: CSV records must match their header --------------------------------------------

@pytest.mark.parametrize("data, message", [
    ("id,text\n1,hello,EXTRA\n", r"^line 2: the record has 3 fields, the header has 2$"),
    ("id,text\n1,ok\n2,hello,EXTRA,MORE\n", r"^line 3: the record has 4 fields, the header has 2$"),
    ('id,text\n1,"two\nlines",EXTRA\n', r"^line 2: the record has 3 fields, the header has 2$"),
    ("text,other\nhello\n", r"^line 2: the record has no value in column 'other' \(1 of 2 fields\)$"),
    ("text\nhello,world\n", r"^line 2: the record has 2 fields, the header has 1$"),
])
def test_csv_extra_or_missing_fields_name_the_line(tmp_path, data, message):
    with pytest.raises(InputError, match=message):
        _scan(InputSpec(_write(tmp_path, "in.csv", data)))


def test_csv_extra_field_hint_says_to_quote(tmp_path):
    with pytest.raises(InputError) as info:
        _scan(InputSpec(_write(tmp_path, "in.csv", "id,text\n1,hello, world\n")))
    assert "quote" in info.value.hint


@pytest.mark.parametrize("data, message", [
    ('id,text\n1,"never closed\n2,more\n3,rows\n', r"^line 2: malformed CSV \(a quoted field .* never closed"),
    ('id,text\n1,"quoted"tail\n', r"^line 2: malformed CSV \("),
])
def test_csv_truncated_quote_or_text_after_a_quote_is_refused(tmp_path, data, message):
    # csv's lenient default would join the rest of the file into one field
    with pytest.raises(InputError, match=message) as info:
        _scan(InputSpec(_write(tmp_path, "in.csv", data)))
    _one_line_error(info)


def test_duplicate_column_name_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"column 'text' appears 2 times in the header"):
        _scan(InputSpec(_write(tmp_path, "in.csv", "text,id,text\na,1,b\n")))


@pytest.mark.parametrize("name, kwargs", [("in.csv", {}), ("in.tsv", {}), ("in.tsv", {"tsv_quoting": True})])
def test_a_field_as_long_as_a_txt_line_is_read(tmp_path, name, kwargs):
    big = "word " * 30_000  # 150 KB: over csv's default field size limit of 128 KiB
    sep = "," if name.endswith(".csv") else "\t"
    spec = InputSpec(_write(tmp_path, name, f"id{sep}text\n1{sep}{big}\n2{sep}small\n"), **kwargs)
    assert _texts(InputSpec(_write(tmp_path, "in.txt", big + "\n"))) == [big]
    before = csv.field_size_limit()
    assert _texts(spec) == [big, "small"]
    assert csv.field_size_limit() == before  # the module-wide limit is given back


def test_field_size_limit_set_by_the_host_program_is_kept(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.csv", "text\n" + "x" * 200_000 + "\n"))
    previous = csv.field_size_limit(1000)
    try:
        records_ = records(spec)
        assert len(next(records_).text) == 200_000
        assert csv.field_size_limit() == 1000  # between records, too
        assert list(records_) == []
        with pytest.raises(csv.Error):  # the host's own csv use still sees its limit
            list(csv.reader(["y" * 2000]))
    finally:
        csv.field_size_limit(previous)


# ---- issue 10: TSV is tab-separated values, no quoting unless asked for ------------------------

def test_tsv_stray_quote_does_not_merge_records(tmp_path):
    # a field that opens with '"' would start a quoted field spanning lines under CSV rules
    spec = InputSpec(_write(tmp_path, "in.tsv", 'id\ttext\n1\t"hi, she said\n2\tmiddle\n3\tend" here\n'),
                     id_field="id")
    assert [(r.line, r.text, r.id) for r in records(spec)] == [
        (2, '"hi, she said', "1"), (3, "middle", "2"), (4, 'end" here', "3")]
    assert _scan(spec)[0].rows == 3


def test_tsv_quotes_are_text_and_commas_are_not_separators(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.tsv", 'text\n"quoted"\na, b\n""\n'))
    assert _texts(spec) == ['"quoted"', "a, b", '""']


def test_tsv_header_column_id_blank_lines_crlf_bom_and_line_numbers(tmp_path):
    data = b'\xef\xbb\xbfkey\tbody\tother\r\nk1\tfirst "one"\tx\r\n\r\nk2\t\ty\r\n\r\n\r\nk3\tthird\tz\r\n'
    spec = InputSpec(_write(tmp_path, "in.tsv", data), column="body", id_field="key")
    assert [(r.line, r.text, r.id) for r in records(spec)] == [
        (2, 'first "one"', "k1"), (4, "", "k2"), (7, "third", "k3")]
    info, ids, _ = _scan(spec)
    assert (info.rows, info.blank, ids) == (3, 1, ["k1", "k2", "k3"])
    info, _, kept = _scan(InputSpec(spec.path, column="body", skip_blank=True))
    assert (info.rows, kept) == (2, [2, 7])
    with pytest.raises(InputError, match=r"no column 'text'; the header has: key, body, other"):
        _scan(InputSpec(spec.path))


@pytest.mark.parametrize("kwargs", [{}, {"tsv_quoting": True}])
def test_tsv_extra_or_missing_fields_name_the_line(tmp_path, kwargs):
    with pytest.raises(InputError, match=r"^line 3: the record has 3 fields, the header has 2$") as info:
        _scan(InputSpec(_write(tmp_path, "in.tsv", "id\ttext\n1\ta\n2\tb\tc\n"), **kwargs))
    if not kwargs:
        assert "--tsv-quoting" in info.value.hint
    with pytest.raises(InputError, match=r"^line 2: the record has no value in column 'text' \(1 of 2 fields\)$"):
        _scan(InputSpec(_write(tmp_path, "in.tsv", "id\ttext\n1\n"), **kwargs))


def test_tsv_gz_and_single_column(tmp_path):
    raw = gzip.compress(b'sentence\n"fine" it is\n\nsecond\n', mtime=0)
    assert _texts(InputSpec(_write(tmp_path, "in.tsv.gz", raw))) == ['"fine" it is', "second"]


def test_tsv_quoting_reads_quoted_fields_across_lines(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.tsv", 'id\ttext\n1\t"two\nlines"\n2\tb\n'), tsv_quoting=True)
    assert [(r.line, r.text) for r in records(spec)] == [(2, "two\nlines"), (4, "b")]
    with pytest.raises(InputError, match=r"malformed TSV"):
        _scan(InputSpec(_write(tmp_path, "bad.tsv", 'id\ttext\n1\t"open\n'), tsv_quoting=True))


# ---- issue 10: JSON that parses but cannot be embedded ------------------------------------------

@pytest.mark.parametrize("line, message", [
    ('{"text": "a", "n": 1' + "1" * 5000 + "}", r"^line 2: JSON that Python cannot load \(Exceeds the limit"),
    ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", r"^line 2: JSON that Python cannot load \(maximum recursion"),
    ('{"text": "bad \\ud800 surrogate"}', r"^line 2: field 'text' holds a lone surrogate \\ud800"),
])
def test_jsonl_python_cannot_load_or_embed_is_refused(tmp_path, line, message):
    with pytest.raises(InputError, match=message) as info:
        _scan(InputSpec(_write(tmp_path, "in.jsonl", '{"text": "ok"}\n' + line + "\n")))
    _one_line_error(info)


def test_jsonl_lone_surrogate_in_id_and_replace(tmp_path):
    path = _write(tmp_path, "in.jsonl", '{"text": "x \\udc80 y", "id": "a\\ud800"}\n')
    with pytest.raises(InputError, match=r"line 1: field 'text' holds a lone surrogate \\udc80") as info:
        _scan(InputSpec(path, id_field="id"))
    assert "--encoding-errors replace" in info.value.hint
    with pytest.raises(InputError, match=r"line 1: the id holds a lone surrogate \\ud800"):
        _scan(InputSpec(_write(tmp_path, "id.jsonl", '{"text": "x", "id": "a\\ud800"}\n'), id_field="id"))
    spec = InputSpec(path, id_field="id", encoding_errors="replace")
    assert [(r.text, r.id) for r in records(spec)] == [("x \ufffd y", "a\ufffd")]
    assert _scan(spec)[1] == ["a\ufffd"]
    # a surrogate pair is one real character, not refused
    assert _texts(InputSpec(_write(tmp_path, "ok.jsonl", '{"text": "\\ud83d\\ude00"}\n'))) == ["\U0001F600"]
