"""Parquet and Arrow IPC through hfenc.io.parquet (issue 12), on the tiny bert model.

Input: a .parquet / .arrow / .feather column embeds to the same rows as the same texts in a .txt,
streamed by row group; every bad table (missing column, non-string column, nulls, corrupt bytes)
is one line and exit 1 with nothing written. Output: -o OUT.parquet holds the same vectors, row
order and ids as the .npy output, in the documented schema, read back by pyarrow + numpy alone;
an interrupted run resumes to the same table bit for bit; a SIGKILL at any step of the job leaves
either nothing or a complete file, never a half-written one. Expected rows come from the .npy
output of the same job (the documented contract) or from an uninterrupted run.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import tiny_models
from interrupts import stop_after
from hfenc import Embedder
from hfenc.cli import app
from hfenc.errors import ConfigError, InputError
from hfenc.io.inputs import InputSpec, records
from hfenc.jobs.local import JobOptions, embed_file

WIDTH = tiny_models.HIDDEN
runner = CliRunner()


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(tiny_models.WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def _job(src: Path, out: Path | None, **kw) -> JobOptions:
    spec = {k: kw.pop(k) for k in ("column", "id_field", "format", "skip_blank", "field") if k in kw}
    return JobOptions(InputSpec(str(src), **spec), out, **kw)


def _embedding(table: pa.Table) -> np.ndarray:
    """pyarrow + numpy, no glue: the fixed-size-list column as an (n, w) array."""
    column = table.column("embedding").combine_chunks()
    return column.flatten().to_numpy().reshape(len(table), column.type.list_size)


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())








@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _texts(50)


@pytest.fixture()
def data(tmp_path, texts) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "in.jsonl").write_text("".join(json.dumps({"text": t, "id": f"doc-{i * 3}"}) + "\n"
                                             for i, t in enumerate(texts)), encoding="utf-8")
    return folder


def _cli(bert: Path, *args: object):
    return runner.invoke(app, ["embed", *map(str, args), "-m", str(bert), "--device", "cpu"])


def _refused(result, *needles: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, result.stderr)
    return errors[0]


# ---- output: the round trip -------------------------------------------------------------------

def test_parquet_output_equals_the_npy_output_rows_order_and_ids(data, embedder, texts):
    embed_file(_job(data / "in.jsonl", data / "a.npy", id_field="id", chunk_size=7), embedder)
    embed_file(_job(data / "in.jsonl", data / "out.parquet", id_field="id", chunk_size=7), embedder)
    table = pq.read_table(data / "out.parquet")
    assert table.schema.names == ["row", "id", "tokens", "truncated", "text_sha256", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), WIDTH)
    assert table.column("row").to_pylist() == list(range(50))
    assert table.column("id").to_pylist() == [f"doc-{i * 3}" for i in range(50)]
    assert np.array_equal(_embedding(table), np.load(data / "a.npy"))  # bit for bit
    assert (data / "a.ids.txt").read_text().splitlines() == table.column("id").to_pylist()
    # one row group per chunk; the sidecar's facts travel in the file
    assert pq.ParquetFile(data / "out.parquet").metadata.num_row_groups == 8  # ceil(50 / 7)
    inside = json.loads(table.schema.metadata[b"hfenc"])
    sidecar = json.loads((data / "out.parquet.json").read_text())
    assert inside == {k: v for k, v in sidecar.items() if k not in ("files", "sidecar_sha256")}
    assert sidecar["out_format"] == "parquet" and sidecar["columns"] == ["row", "id", "tokens", "truncated",
                                                                         "text_sha256", "embedding"]
    assert sidecar["files"]["out.parquet"]["bytes"] == (data / "out.parquet").stat().st_size
    assert "ids_file" not in sidecar  # the ids are in the file: no OUT.ids.txt
    assert _names(data) == ["a.ids.txt", "a.npy", "a.npy.json", "a.sha256.npy", "in.jsonl", "out.parquet",
                            "out.parquet.json"]  # Parquet has its hashes in a column


def test_keep_text_and_float16(data, embedder, texts):
    embed_file(_job(data / "in.jsonl", data / "h.npy", out_dtype="float16"), embedder)
    embed_file(_job(data / "in.jsonl", data / "h.parquet", out_dtype="float16", keep_text=True), embedder)
    table = pq.read_table(data / "h.parquet")
    assert table.schema.names == ["row", "text", "tokens", "truncated", "text_sha256", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), WIDTH)
    assert table.column("text").to_pylist() == texts
    got = _embedding(table)
    assert got.dtype == np.float16 and np.array_equal(got, np.load(data / "h.npy"))


def test_out_format_decides_for_the_default_name_and_other_suffixes(data, embedder):
    result = embed_file(_job(data / "in.jsonl", None, out_format="parquet"), embedder)
    assert result.output == data / "in.parquet" and pq.read_table(result.output).num_rows == 50
    other = embed_file(_job(data / "in.jsonl", data / "vectors.bin", out_format="parquet"), embedder)
    assert pq.read_table(other.output).num_rows == 50


@pytest.mark.parametrize("args, needle", [
    (["-o", "x.npy", "--out-format", "parquet"], "has the .npy suffix but --out-format parquet"),
    (["-o", "x.parquet", "--out-format", "npy"], "has the .parquet suffix but --out-format npy"),
    (["-o", "x.npy", "--keep-text"], "--keep-text needs a Parquet output"),
    (["-o", "x.parquet", "--out-format", "arrow"], "unknown output format 'arrow'; choose one of: npy, npz, parquet"),
])
def test_contradicting_output_options_are_refused(data, bert, args, needle, monkeypatch):
    monkeypatch.chdir(data)
    _refused(_cli(bert, "in.jsonl", *args), needle)
    assert _names(data) == ["in.jsonl"]


def test_existing_parquet_needs_force_and_is_replaced_whole(data, embedder):
    out = data / "out.parquet"
    embed_file(_job(data / "in.jsonl", out, chunk_size=16), embedder)
    with pytest.raises(Exception, match="already exists"):
        embed_file(_job(data / "in.jsonl", out), embedder)
    (data / "less.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(5, 9)))
    embed_file(_job(data / "less.jsonl", out, force=True), embedder)
    assert pq.read_table(out).num_rows == 5
    assert [p for p in _names(data) if p.startswith(".")] == []


def test_overflow_refusal_leaves_no_parquet_and_no_hidden_files(tmp_path, bert):
    short = Embedder(str(bert), device="cpu", max_length=8)
    (tmp_path / "in.txt").write_text("the cat\n" + " ".join(["dog"] * 20) + "\n")
    with pytest.raises(InputError, match="longer than the maximum"):
        embed_file(JobOptions(InputSpec(str(tmp_path / "in.txt")), tmp_path / "out.parquet", on_overflow="error"), short)
    assert _names(tmp_path) == ["in.txt"]


# ---- output: resume -----------------------------------------------------------------------------

def test_interrupted_parquet_run_resumes_to_the_same_table_bit_for_bit(data, embedder):
    full = data / "full.parquet"
    embed_file(_job(data / "in.jsonl", full, id_field="id", keep_text=True, chunk_size=7), embedder)
    out = data / "out.parquet"
    job = _job(data / "in.jsonl", out, id_field="id", keep_text=True, chunk_size=7)
    with pytest.raises(Exception, match="rows are saved"):
        embed_file(job, embedder, progress=stop_after(14))
    assert not out.exists()
    partial = data / ".out.parquet.partial"
    assert sorted(p.name for p in partial.iterdir()) == ["000000000000+7.arrow", "000000000007+7.arrow"]
    assert json.loads((data / ".out.parquet.resume.json").read_text())["rows_done"] == 14
    result = embed_file(_job(data / "in.jsonl", out, id_field="id", keep_text=True, chunk_size=7, resume=True),
                        embedder)
    assert result.resumed_from == 14 and result.metadata["resumed_from_row"] == 14
    a, b = pq.read_table(full), pq.read_table(out)
    for name in ("row", "id", "text", "embedding"):
        assert a.column(name).equals(b.column(name)), name
    assert np.array_equal(_embedding(a), _embedding(b))
    assert not partial.exists() and not (data / ".out.parquet.resume.json").exists()
    assert [p for p in _names(data) if p.startswith(".")] == []


def test_resume_refuses_other_parquet_options(data, embedder):
    out = data / "out.parquet"
    with pytest.raises(Exception, match="rows are saved"):
        embed_file(_job(data / "in.jsonl", out, chunk_size=7), embedder, progress=stop_after(7))
    with pytest.raises(Exception, match="cannot resume: keep_text changed"):
        embed_file(_job(data / "in.jsonl", out, chunk_size=7, resume=True, keep_text=True), embedder)


def test_resume_refuses_a_partial_directory_that_lost_a_chunk(data, embedder):
    out = data / "out.parquet"
    with pytest.raises(Exception, match="rows are saved"):
        embed_file(_job(data / "in.jsonl", out, chunk_size=7), embedder, progress=stop_after(21))
    (data / ".out.parquet.partial" / "000000000007+7.arrow").unlink()
    with pytest.raises(Exception, match=r"lacks rows 7 to 13"):
        embed_file(_job(data / "in.jsonl", out, chunk_size=7, resume=True), embedder)


def test_sigkill_at_every_step_leaves_nothing_or_a_whole_file(bert, tmp_path, report):
    driver = Path(__file__).with_name("parquet_fault_driver.py")
    proc = subprocess.run([sys.executable, str(driver), str(bert), str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    report("parquet fault injection: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.items()
                                                   if k != "failures"))
    assert result["failures"] == [], result["failures"]
    assert result["killed"] >= 10 and result["runs_completed"] == result["kill_points"]


# ---- input --------------------------------------------------------------------------------------

def test_parquet_input_by_row_group_equals_the_same_texts_from_txt(tmp_path, embedder, texts):
    (tmp_path / "in.txt").write_text("".join(t + "\n" for t in texts))
    ids = [f"k{i}" for i in range(50)]
    pq.write_table(pa.table({"n": range(50), "body": texts, "key": ids}), tmp_path / "in.parquet", row_group_size=6)
    assert pq.ParquetFile(tmp_path / "in.parquet").metadata.num_row_groups == 9
    embed_file(_job(tmp_path / "in.txt", tmp_path / "txt.npy", chunk_size=16), embedder)
    result = embed_file(_job(tmp_path / "in.parquet", tmp_path / "pq.npy", column="body", id_field="key",
                             chunk_size=16), embedder)
    assert np.array_equal(np.load(tmp_path / "pq.npy"), np.load(tmp_path / "txt.npy"))
    assert (tmp_path / "pq.ids.txt").read_text().splitlines() == ids
    meta = result.metadata["input"]
    assert meta["format"] == "parquet" and meta["column"] == "body"
    assert meta["bytes"] == (tmp_path / "in.parquet").stat().st_size


@pytest.mark.parametrize("ids, kind", [([b"ab", b"cd"], "binary data"), ([True, False], "a boolean"),
                                       ([1.5, 2.5], "a fractional number"), ([{"k": 1}, {"k": 2}], "an object")])
def test_parquet_ids_that_are_not_strings_or_integers_are_refused(tmp_path, ids, kind):
    pq.write_table(pa.table({"text": ["a", "b"], "key": ids}), tmp_path / "in.parquet")
    spec = InputSpec(str(tmp_path / "in.parquet"), id_field="key")
    with pytest.raises(InputError, match=rf"record 1: the id is {kind}, not a string or an integer"):
        list(records(spec))


def test_a_null_inside_an_arrow_dictionary_is_a_null_record(tmp_path):
    # the indices are valid, the dictionary entry they point at is null: null_count says 0
    column = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), pa.array(["a", None]))
    feather.write_feather(pa.table({"text": column}), str(tmp_path / "in.arrow"))
    with pytest.raises(InputError, match=r"record 2: column 'text' is null"):
        list(records(InputSpec(str(tmp_path / "in.arrow"))))


def test_parquet_integer_ids_are_written_in_decimal(tmp_path):
    pq.write_table(pa.table({"text": ["a", "b"], "key": pa.array([7, -3], pa.int64())}), tmp_path / "in.parquet")
    assert [r.id for r in records(InputSpec(str(tmp_path / "in.parquet"), id_field="key"))] == ["7", "-3"]


@pytest.mark.parametrize("suffix, write", [
    (".arrow", lambda t, p: feather.write_feather(t, p, compression="uncompressed", chunksize=7)),
    (".feather", lambda t, p: feather.write_feather(t, p, chunksize=7)),
])
def test_arrow_ipc_and_feather_input(tmp_path, embedder, texts, suffix, write):
    write(pa.table({"text": texts}), str(tmp_path / f"in{suffix}"))
    embed_file(_job(tmp_path / f"in{suffix}", tmp_path / "out.npy", chunk_size=16), embedder)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), embedder.encode(texts), rtol=0, atol=1e-6)


def test_only_column_is_the_text_and_dictionary_strings_are_strings(tmp_path, embedder, texts):
    column = pa.array(texts[:10]).dictionary_encode()
    pq.write_table(pa.table({"sentence": column}), tmp_path / "in.parquet")
    embed_file(_job(tmp_path / "in.parquet", tmp_path / "out.npy"), embedder)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), embedder.encode(texts[:10]), rtol=0, atol=1e-6)


def _bad_tables(folder: Path) -> list[tuple[str, list[str], str]]:
    good = ["the cat", "a dog", "the sea"]
    pq.write_table(pa.table({"text": good, "n": [1, 2, 3]}), folder / "fine.parquet")
    pq.write_table(pa.table({"body": good}), folder / "nocol.parquet")
    pq.write_table(pa.table({"text": [1, 2, 3]}), folder / "ints.parquet")
    pq.write_table(pa.table({"text": ["the cat", None, "the sea"]}), folder / "nulls.parquet")
    pq.write_table(pa.table({"text": good, "id": ["a", None, "c"]}), folder / "nullid.parquet")
    pq.write_table(pa.table({"text": good, "id": ["a", "b\nc", "d"]}), folder / "breakid.parquet")
    (folder / "corrupt.parquet").write_bytes((folder / "fine.parquet").read_bytes()[:-40] + b"\0" * 40)
    pq.write_table(pa.table({"text": [f"text number {i}" for i in range(2000)]}), folder / "mid.parquet")
    raw = bytearray((folder / "mid.parquet").read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + 64] = b"\xff" * 64
    (folder / "midcorrupt.parquet").write_bytes(bytes(raw))
    (folder / "garbage.parquet").write_bytes(b"PAR1 this is not a parquet file at all")
    (folder / "garbage.arrow").write_bytes(b"ARROW1 nope")
    (folder / "data.parquet.gz").write_bytes(b"\x1f\x8b")
    return [
        ("nocol.parquet", ["--column", "text"], "no column 'text'; the file has: body"),
        ("fine.parquet", ["--column", "n"], "column 'n' holds int64, not strings"),
        ("ints.parquet", [], "column 'text' holds int64, not strings"),
        ("nulls.parquet", [], "record 2: column 'text' is null"),
        ("nullid.parquet", ["--id-column", "id"], "record 2: id column 'id' is null"),
        ("breakid.parquet", ["--id-column", "id"], "record 2: the id contains a line break"),
        ("midcorrupt.parquet", [], "cannot read midcorrupt.parquet as a Parquet file: Corrupt snappy compressed data"),
        ("corrupt.parquet", [], "cannot read corrupt.parquet as a Parquet file"),
        ("garbage.parquet", [], "cannot read garbage.parquet as a Parquet file"),
        ("garbage.arrow", [], "cannot read garbage.arrow as an Arrow IPC (Feather) file"),
        ("data.parquet.gz", [], "a gzipped parquet file cannot be read"),
        ("fine.parquet", ["--field", "body"], "--field does not apply to parquet input"),
    ]


def test_bad_table_inputs_are_one_line_exit_1_and_write_nothing(tmp_path, bert, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = _bad_tables(tmp_path)
    before = _names(tmp_path)
    for name, extra, needle in cases:
        _refused(_cli(bert, name, "-o", "out.npy", *extra), needle)
        _refused(_cli(bert, name, "-o", "out.parquet", *extra), needle)
        assert _names(tmp_path) == before, name


def test_a_table_changed_between_the_passes_is_refused(tmp_path, embedder, texts, monkeypatch):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": texts}), src)
    import hfenc.jobs.local

    real_scan = hfenc.jobs.local.scan

    def scan_then_change(spec, *args):
        info = real_scan(spec, *args)
        pq.write_table(pa.table({"text": list(reversed(texts))}), src)
        return info

    monkeypatch.setattr(hfenc.jobs.local, "scan", scan_then_change)
    with pytest.raises(InputError, match="input changed while it was being embedded"):
        embed_file(_job(src, tmp_path / "out.parquet"), embedder)
    assert _names(tmp_path) == ["in.parquet"]


# ---- the optional extra -------------------------------------------------------------------------

def test_without_pyarrow_one_line_names_the_extra(tmp_path, bert, monkeypatch, texts):
    import hfenc.io.parquet

    (tmp_path / "in.txt").write_text("the cat\n")
    pq.write_table(pa.table({"text": texts}), tmp_path / "in.parquet")
    hfenc.io.parquet._arrow_modules.cache_clear()
    for name in ("pyarrow", "pyarrow.parquet", "pyarrow.ipc", "pyarrow.compute"):
        monkeypatch.setitem(sys.modules, name, None)  # `import pyarrow` raises ImportError
    try:
        with pytest.raises(ConfigError, match="need pyarrow") as info:
            hfenc.io.parquet.arrow()
        assert info.value.hint == "pip install 'hfenc[parquet]'"
        monkeypatch.chdir(tmp_path)
        for args in (["in.txt", "-o", "out.parquet"], ["in.parquet", "-o", "out.npy"]):
            result = _cli(bert, *args)
            _refused(result, "Parquet and Arrow files need pyarrow, which is not installed")
            assert "Hint: pip install 'hfenc[parquet]'" in result.stderr
        assert _names(tmp_path) == ["in.parquet", "in.txt"]
    finally:
        hfenc.io.parquet._arrow_modules.cache_clear()
