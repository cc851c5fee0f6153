"""`hfenc verify` (issue 24): exit 0 on an untouched output, 1 with one line per problem after
each kind of damage; rows embedded again within the recorded dtype's tolerance."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import tiny_models
from terminal import in_terminal, screen_lines
from hfenc import Embedder
from hfenc.cli import app
from hfenc.compute.chunking import ChunkOptions
from hfenc.io.inputs import InputSpec
from hfenc.jobs.local import JobOptions, embed_file
from hfenc.verification import verify

pytest.importorskip("pyarrow")


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(tiny_models.WORDS) for _ in range(rng.randint(2, 30))) for _ in range(n)]


def _made(folder: Path, bert: Path, name: str = "out.npy", **job) -> Path:
    src = folder / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(_texts(40))))
    spec = InputSpec(str(src), id_field="id")
    embed_file(JobOptions(spec, folder / name, **job), Embedder(bert, pooler="mean", device="cpu", dtype="float32"))
    return folder / name


def _verify(*args: str):
    result = CliRunner().invoke(app, ["verify", *args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize("name,job", [("out.npy", {}), ("out.parquet", {}), ("out.npy", {"quantize": "int8"}),
                                      ("out.parquet", {"quantize": "binary"}), ("out.npy", {"out_dtype": "float16"}),
                                      ("out.parquet", {"chunking": ChunkOptions(12, 3)}),
                                      ("out.npy", {"chunking": ChunkOptions(12, 3, late=True)})])
def test_an_untouched_output_verifies(tmp_path, bert, name, job):
    out = _made(tmp_path, bert, name, **job)
    result = _verify(str(out), "--all", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {out}:")
    report = verify(out, every=True, device="cpu")
    assert report.ok and report.sampled == report.rows and report.min_cosine >= report.tolerance


def _one_problem(out: Path, *args: str) -> str:
    result = _verify(str(out), "--device", "cpu", *args)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_one_flipped_float_in_the_array_is_found(tmp_path, bert):
    out = _made(tmp_path, bert)
    array = np.load(out)
    array[17, 3] = -array[17, 3]
    np.save(out, array)
    assert "out.npy has changed" in _one_problem(out)


def test_an_edited_sidecar_is_found(tmp_path, bert):
    out = _made(tmp_path, bert)
    sidecar = out.with_name("out.npy.json")
    data = json.loads(sidecar.read_text())
    data["normalize"] = not data["normalize"]
    sidecar.write_text(json.dumps(data, indent=2))
    assert "was edited after hfenc wrote it" in _one_problem(out)


def test_a_swapped_ids_file_is_found(tmp_path, bert):
    out = _made(tmp_path, bert)
    ids = tmp_path / "out.ids.txt"
    lines = ids.read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    ids.write_text("".join(x + "\n" for x in lines))
    assert "out.ids.txt has changed" in _one_problem(out)


def test_a_truncated_parquet_file_is_found(tmp_path, bert):
    out = _made(tmp_path, bert, "out.parquet")
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    assert "out.parquet has" in _one_problem(out)


def test_rows_that_no_longer_match_their_text_are_named(tmp_path, bert):
    """Rows changed and the hashes and seal made to match again (as a tool that rewrote the
    file would): only embedding the rows again finds them."""
    from hfenc.io.outputs import file_sha256, sealed

    out = _made(tmp_path, bert)
    array = np.load(out)
    array[[5, 9]] = array[[9, 5]]
    np.save(out, array)
    sidecar = out.with_name("out.npy.json")
    data = json.loads(sidecar.read_text())
    data["files"]["out.npy"]["sha256"] = file_sha256(out)
    sidecar.write_text(json.dumps(sealed(data), indent=2))
    result = _verify(str(out), "--all", "--device", "cpu")
    assert result.exit_code == 1
    assert [line.split(":")[1].strip() for line in result.stdout.splitlines()] == ["row 5", "row 9"]


def test_a_moved_input_is_named_and_can_be_given(tmp_path, bert):
    out = _made(tmp_path, bert)
    shutil.move(tmp_path / "in.jsonl", tmp_path / "elsewhere.jsonl")
    line = _one_problem(out)
    assert "cannot embed the rows again" in line and "--input" in line
    assert _verify(str(out), "--device", "cpu", "--input", str(tmp_path / "elsewhere.jsonl")).exit_code == 0
    assert _verify(str(out), "--sample", "0").exit_code == 0


def test_another_input_is_refused(tmp_path, bert):
    out = _made(tmp_path, bert)
    (tmp_path / "other.jsonl").write_text(json.dumps({"id": "x", "text": "hello"}) + "\n")
    assert "not the input" in _one_problem(out, "--input", str(tmp_path / "other.jsonl"))


def test_json_report(tmp_path, bert):
    out = _made(tmp_path, bert, "out.parquet")
    result = _verify(str(out), "--json", "--sample", "8", "--device", "cpu")
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["ok"] and report["rows_embedded_again"] == 8
    assert report["files_checked"] == 1 and report["problems"] == []


def test_not_an_output_is_one_error_line(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"nothing")
    result = _verify(str(tmp_path / "x.npy"))
    assert result.exit_code == 1 and result.stderr.startswith("Error:") and len(result.stderr.splitlines()) <= 2


def test_the_report_fits_an_80_column_terminal_and_stays_whole_on_a_pipe(tmp_path, bert):
    out = _made(tmp_path, bert)
    (tmp_path / "out.ids.txt").write_text("swapped\n" * 40)
    code, text = in_terminal(["verify", str(out), "--device", "cpu"], columns=80)
    lines = [line for line in screen_lines(text) if line.strip()]
    assert code == 1 and all(len(line) <= 80 for line in lines), lines
    assert " ".join(line.strip() for line in lines) == _one_problem(out)
