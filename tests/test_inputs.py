"""hfenc.inputs: the readers (txt, jsonl, csv/tsv, gzip), the validating scan, chunking, and one
clear InputError for each kind of bad input (issue 6, "Inputs" and "Bad input").

Expected values are written out by hand from the bytes each test builds (line numbers, byte
offsets, hashes from hashlib), never computed with hfenc.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from hfenc.errors import HfencError, InputError, UnknownChoiceError
from hfenc.inputs import InputSpec, chunks, records, scan


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


def test_unknown_suffix_reads_as_txt_and_carriage_return_inside_line_kept(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.dat", b"a\rb\nc\n"))
    assert spec.resolved_format() == "txt"
    assert _texts(spec) == ["a\rb", "c"]


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
    data = "key\tbody\nk1\tfirst, with a comma\nk2\t\"tab\tinside\"\n"
    spec = InputSpec(_write(tmp_path, "in.tsv", data), column="body", id_field="key")
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
    assert "line 3" in message and "byte offset 19" in message and "UTF-8" in message
    assert "--encoding-errors replace" in info.value.hint


def test_invalid_utf8_offset_counts_bom_and_crlf(tmp_path):
    data = b"\xef\xbb\xbfab\r\ncd\xc3\r\n"  # truncated 2-byte sequence at byte 3+2+2+2 = 9
    with pytest.raises(InputError, match=r"line 2: invalid UTF-8 at byte offset 9\b"):
        _scan(InputSpec(_write(tmp_path, "in.txt", data)))


def test_invalid_utf8_on_the_first_line_after_a_bom(tmp_path):
    data = b"\xef\xbb\xbfa\x80b\n"  # 0x80 is byte 3 + 1 = 4
    with pytest.raises(InputError, match=r"line 1: invalid UTF-8 at byte offset 4\b"):
        _scan(InputSpec(_write(tmp_path, "in.txt", data)))


def test_invalid_utf8_in_jsonl_and_csv(tmp_path):
    # line 2 starts at byte 17 (len of '{"text": "fine"}\n'); '{"text": "' is 10 more bytes
    with pytest.raises(InputError, match=r"line 2: invalid UTF-8 at byte offset 27\b"):
        _scan(InputSpec(_write(tmp_path, "in.jsonl", b'{"text": "fine"}\n{"text": "\xfe"}\n')))
    # "text\n" + "abc\n" = 9 bytes: the 0xe9 opening line 3
    with pytest.raises(InputError, match=r"line 3: invalid UTF-8 at byte offset 9\b"):
        _scan(InputSpec(_write(tmp_path, "in.csv", b"text\nabc\n\xe9t\xe9\n")))


def test_encoding_errors_replace_goes_on_with_replacement_characters(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.txt", b"ok\nbad \xff\xfe here\nfine\n"), encoding_errors="replace")
    assert _texts(spec) == ["ok", "bad \ufffd\ufffd here", "fine"]
    assert _scan(spec)[0].rows == 3


def test_nul_byte_names_line_and_offset(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.txt", b"a\nb\x00c\n"))
    with pytest.raises(InputError, match=r"line 2: NUL byte at byte offset 3\b"):
        _scan(spec)
    # replace does not make a binary file acceptable
    with pytest.raises(InputError, match="NUL"):
        _scan(InputSpec(spec.path, encoding_errors="replace"))


def test_malformed_json_line_names_the_line(tmp_path):
    spec = InputSpec(_write(tmp_path, "in.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c"\n'))
    with pytest.raises(InputError, match=r"line 3: malformed JSON"):
        _scan(spec)


@pytest.mark.parametrize("line, message", [
    ('{"body": "x"}', r"line 2: no field 'text'"),
    ('["text"]', r"line 2: no field 'text'"),
    ('{"text": 5}', r"line 2: field 'text' is int, not a string"),
    ('{"text": null}', r"line 2: field 'text' is NoneType"),
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
    with pytest.raises(UnknownChoiceError, match=r"unknown input format 'xml'; choose one of: csv, jsonl, tsv, txt"):
        spec.resolved_format()
    with pytest.raises(HfencError):
        _scan(spec)


def test_id_field_with_plain_text_is_refused(tmp_path):
    with pytest.raises(InputError, match="--id-field needs"):
        _scan(InputSpec(_write(tmp_path, "in.txt", "a\n"), id_field="id"))


def test_csv_line_numbers_count_blank_lines_between_records(tmp_path):
    from hfenc.inputs import InputSpec, records

    path = tmp_path / "in.csv"
    path.write_text("text,id\na,1\n\nb,2\n", encoding="utf-8")
    got = [(r.line, r.text) for r in records(InputSpec(str(path)))]
    assert got == [(2, "a"), (4, "b")]
