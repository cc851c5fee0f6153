"""Issue 11, everyday use: inputs and outputs that cannot be misread, interruptions that say what
they are, the library's contract, a CLI that fits 80 columns. One test (or more) per point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import hfenc
from hfenc.cli import base as cli
from hfenc.cli import app


@pytest.fixture(scope="module")
def bert(tiny_model_dir) -> Path:
    return tiny_model_dir("bert")


def _run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_error(result, *needles: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def test_several_inputs_and_globs_in_one_job(tmp_path, bert, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("b.txt").write_text("red car\n")
    Path("a.txt").write_text("a dog\nthe cat\n")
    assert _run("embed", "a.txt", "b.txt", "-m", bert, "-o", "ab.npy", "-q").exit_code == 0
    assert _run("embed", "*.txt", "-m", bert, "-o", "glob.npy", "-q").exit_code == 0  # sorted: a, b
    single = hfenc.encode(["a dog", "the cat", "red car"], model=str(bert), device="cpu")
    np.testing.assert_allclose(np.load("ab.npy"), single, atol=1e-6)
    np.testing.assert_array_equal(np.load("glob.npy"), np.load("ab.npy"))
    files = json.loads(Path("ab.npy.json").read_text())["input"]["files"]
    assert files == [{"path": "a.txt", "rows": 2}, {"path": "b.txt", "rows": 1}]
    _one_error(_run("embed", "a.txt", "b.txt", "-m", bert), "several inputs needs an output path")
    _one_error(_run("embed", "nothing*.txt", "-m", bert, "-o", "n.npy"), "no file matches 'nothing*.txt'")


def test_text_arguments_and_stdout_refusals(tmp_path, bert, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run("embed", "--text", "a dog", "-t", "two\nlines", "-m", bert, "-o", "t.npy", "-q")
    assert result.exit_code == 0, result.stderr
    expected = hfenc.encode(["a dog", "two\nlines"], model=str(bert), device="cpu")
    np.testing.assert_allclose(np.load("t.npy"), expected, atol=1e-6)
    assert json.loads(Path("t.npy.json").read_text())["input"]["path"] == "(--text)"
    _one_error(_run("embed", "--text", "x", "-m", bert, "-o", "-"), "-o - (standard output) is not supported")
    _one_error(_run("embed", "--text", "x", "-m", bert, "-o", "out.txt"), "unknown output type '.txt'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npy", "t.npy.json", "t.sha256.npy"]  # never a file named -
    usage = _run("embed", "in.txt", "--text", "x", "-m", bert)
    assert usage.exit_code == 2 and "not both" in usage.stderr


def test_input_types_are_checked_not_guessed(tmp_path, bert):
    data = tmp_path / "table.dat"
    data.write_text("a dog\n")
    _one_error(_run("embed", data, "-m", bert, "-o", tmp_path / "o.npy"), "unknown input type '.dat'", ".jsonl")
    assert _run("embed", data, "--format", "txt", "-m", bert, "-o", tmp_path / "o.npy", "-q").exit_code == 0


@pytest.mark.parametrize("name, body, option, needle", [
    ("in.jsonl", '{"text": "a"}\n', ["--column", "text"], "--column does not apply to jsonl input"),
    ("in.txt", "a\n", ["--field", "body"], "--field does not apply to txt input"),
    ("in.csv", "text\na\n", ["--tsv-quoting"], "--tsv-quoting does not apply to csv input"),
    ("in.txt", "a\n", ["--id-field", "id"], "--id-field does not apply to txt input"),
])
def test_options_that_do_not_apply_to_the_format_are_refused(tmp_path, bert, name, body, option, needle):
    (tmp_path / name).write_text(body)
    _one_error(_run("embed", tmp_path / name, *option, "-m", bert, "-o", tmp_path / "o.npy"), needle)
    assert not (tmp_path / "o.npy").exists()


def test_a_json_array_is_one_record_per_item(tmp_path, bert):
    (tmp_path / "in.json").write_text(json.dumps([{"text": "a dog", "id": "x"}, {"text": "red car", "id": "y"}], indent=1))
    result = _run("embed", tmp_path / "in.json", "--id-field", "id", "-m", bert, "-o", tmp_path / "o.npy", "-q")
    assert result.exit_code == 0, result.stderr
    assert np.load(tmp_path / "o.npy").shape[0] == 2
    assert (tmp_path / "o.ids.txt").read_text() == "x\ny\n"


def _ctrl_c_after_one_chunk(monkeypatch) -> None:
    from hfenc.jobs import local as jobs

    real = jobs.chunks

    def stop_after_one(*args, **kwargs):
        for i, chunk in enumerate(real(*args, **kwargs)):
            if i == 1:
                raise KeyboardInterrupt
            yield chunk

    monkeypatch.setattr(jobs, "chunks", stop_after_one)


def test_ctrl_c_is_an_interruption_not_an_error(tmp_path, bert, monkeypatch):
    _ctrl_c_after_one_chunk(monkeypatch)
    (tmp_path / "in.txt").write_text("".join(f"the cat {i}\n" for i in range(20)))
    result = _run("embed", tmp_path / "in.txt", "-m", bert, "-o", tmp_path / "o.npy", "--chunk-size", "5")
    assert result.exit_code == 130
    assert result.stderr.startswith("Interrupted: 5 of 20 rows are saved") and "Error" not in result.stderr
    assert "--resume" in result.stderr and "hfenc clean --remove" in result.stderr


def test_clean_lists_and_removes_only_what_a_resume_state_claims(tmp_path, bert, monkeypatch):
    _ctrl_c_after_one_chunk(monkeypatch)
    (tmp_path / "in.txt").write_text("".join(f"the cat {i}\n" for i in range(20)))
    _run("embed", tmp_path / "in.txt", "-m", bert, "-o", tmp_path / "o.npy", "--chunk-size", "5")
    (tmp_path / ".mine.partial").write_text("not hfenc's")
    listing = _run("clean", tmp_path, "--json")
    found = json.loads(listing.stdout)
    assert [(Path(f["output"]).name, f["rows_done"], f["rows"]) for f in found] == [("o.npy", 5, 20)]
    assert _run("clean", tmp_path, "--remove").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mine.partial", "in.txt"]


def test_clean_leaves_an_output_a_running_job_holds_and_a_state_it_cannot_read(tmp_path, bert, monkeypatch):
    from hfenc.io.claim import Claim

    _ctrl_c_after_one_chunk(monkeypatch)
    (tmp_path / "in.txt").write_text("".join(f"the cat {i}\n" for i in range(20)))
    for name in ("held.npy", "free.npy"):
        _run("embed", tmp_path / "in.txt", "-m", bert, "-o", tmp_path / name, "--chunk-size", "5")
    (tmp_path / ".bad.npy.resume.json").write_text('{"fingerprint": [], "rows_done": "x"}')
    before = sorted(p.name for p in tmp_path.iterdir())
    with Claim(tmp_path / "held.npy"):  # as a job running on it holds it
        listing = json.loads(_run("clean", tmp_path, "--json").stdout)
        assert [(Path(i["output"]).name, i["status"]) for i in listing] == [
            ("bad.npy", "unreadable"), ("free.npy", "interrupted"), ("held.npy", "in use")]
        result = _run("clean", tmp_path, "--remove")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error: ")] == [
        "Error: 2 of 3 interrupted run(s) were left alone (see above)"]
    assert "held.npy: in use by hfenc pid" in result.stderr and "bad.npy.resume.json is not a resume state" in result.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(n for n in before if "free" not in n)  # only the free run's files went
    assert ".held.npy.resume.json" in left and ".held.npy.partial" in left


def test_user_text_is_printed_as_data_never_as_markup(tmp_path, bert, monkeypatch):
    # a path, a query and the texts of hits with rich markup or emoji codes in them appear verbatim
    monkeypatch.chdir(tmp_path)
    Path("notes[v2].txt").write_text("the [red] flag marks errors\npip install hfenc[ray] :x:\n")
    made = _run("embed", "notes[v2].txt", "-m", bert, "--device", "cpu")
    assert made.exit_code == 0, made.stderr
    assert "notes[v2].npy" in made.stderr and Path("notes[v2].npy").exists()
    found = _run("search", "notes[v2].npy", "python list[int] :x:", "--texts", "notes[v2].txt", "--device", "cpu")
    assert found.exit_code == 0, found.stderr
    for text in ("python list[int] :x:", "the [red] flag marks errors", "pip install hfenc[ray] :x:"):
        assert text in found.stdout, found.stdout


def test_version_threads_and_device_names(tmp_path, bert):
    assert _run("-V").stdout.startswith("hfenc ")
    (tmp_path / "in.txt").write_text("a dog\n")
    result = _run("embed", tmp_path / "in.txt", "-m", bert, "-o", tmp_path / "o.npy", "--device", "CPU",
                  "--threads", "1", "-q")
    assert result.exit_code == 0, result.stderr
    side = json.loads((tmp_path / "o.npy.json").read_text())
    assert side["device"] == "cpu" and side["threads"] == 1


def test_the_summary_counts_start_up(tmp_path, bert):
    (tmp_path / "in.txt").write_text("a dog\n")
    result = _run("embed", tmp_path / "in.txt", "-m", bert, "-o", tmp_path / "o.npy")
    assert "(start-up " in result.stderr and f"sidecar {tmp_path / 'o.npy.json'}" in result.stderr


def test_lock_plan_names_the_bundled_configs_when_a_model_is_unknown():
    result = _run("lock-plan", "bert-base-cased", "--unlocked", "1")
    _one_error(result, "not found")
    assert "bert-base-uncased" in result.stderr and "xlm-roberta-large" in result.stderr


def test_library_errors_name_arguments_the_cli_names_options(tmp_path, bert):
    with pytest.raises(hfenc.HfencError, match=r"^dim=0 must be a positive number"):
        hfenc.Embedder(str(bert), device="cpu", dim=0)
    (tmp_path / "in.txt").write_text("a dog\n")
    _one_error(_run("embed", tmp_path / "in.txt", "-m", bert, "--dim", "0"), "Error: --dim 0 must be a positive number")
    with pytest.raises(hfenc.HfencError, match=r"unlocked=9 is out of range"):
        hfenc.plan_lock(str(bert), 9)


def test_the_library_shows_its_api_and_streams_iterables(bert):
    assert dir(hfenc) == hfenc.__all__ and "Any" not in dir(hfenc)
    stream = (t for t in ["a dog", "the cat", "red car"])
    np.testing.assert_array_equal(hfenc.encode(stream, model=str(bert), device="cpu"),
                                  hfenc.encode(["a dog", "the cat", "red car"], model=str(bert), device="cpu"))


def test_hftextencoder_on_a_sentence_transformers_folder_pools_like_embed(minilm_dir):
    import torch

    encoder = hfenc.HFTextEncoder(str(minilm_dir)).eval()  # float32, as a training tower
    assert encoder.pooler_type == "mean" and not encoder.uses_pooling_layer
    embedder = hfenc.Embedder(str(minilm_dir), device="cpu", dtype="float32", normalize=False)
    ids = embedder.tokenizer(["a dog on the road"])
    mask = torch.ones(1, int(ids.lengths[0]), dtype=torch.bool)
    with torch.no_grad():
        tower = encoder(torch.from_numpy(ids.flat[None]), mask).numpy()
    np.testing.assert_allclose(tower, embedder.encode(["a dog on the road"]), atol=1e-5)


def test_tables_wrap_at_80_columns_instead_of_cutting(monkeypatch):
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    buffer = StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buffer, width=80, force_terminal=True, color_system=None))
    table = Table()
    table.add_column("parameter")
    table.add_column("state")
    name = "transformer.encoder.layer.11.attention.output.LayerNorm.weight.and.more.words"
    table.add_row(name, "trainable")
    cli.print_table(table)
    text = buffer.getvalue()
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines())
    assert "".join(line.strip("│ ").split("│")[0].strip() for line in text.splitlines()[3:-1]) == name


def test_help_fits_80_columns():
    for command in (["--help"], ["embed", "--help"], ["lock-plan", "--help"], ["search", "--help"], ["info", "--help"]):
        result = CliRunner().invoke(app, command, terminal_width=80, env={"COLUMNS": "80"})
        if result.exit_code == 2 and "No such command" in result.stderr:
            continue  # a command another issue adds
        assert result.exit_code == 0, (command, result.stderr)
        assert max(len(line) for line in result.stdout.splitlines()) <= 80, command
        assert "…" not in result.stdout, command


def test_messages_name_the_byte_within_the_line_and_the_right_option(tmp_path, bert):
    (tmp_path / "in.txt").write_bytes(b"fine\nab\xffc\n")
    _one_error(_run("embed", tmp_path / "in.txt", "-m", bert, "-o", tmp_path / "o.npy"),
               "line 2, byte 3: invalid UTF-8 (file byte offset 7)")
    (tmp_path / "in.csv").write_text("text,key\na,1\n")
    result = _run("embed", tmp_path / "in.csv", "--id-column", "id", "-m", bert, "-o", tmp_path / "o.npy")
    _one_error(result, "no column 'id'; the header has: text, key", "choose the id column with --id-field")


def test_lock_plan_lists_its_bundled_models():
    from hfenc.model.resolve import bundled_config_names

    result = _run("lock-plan", "--list")
    assert result.exit_code == 0 and result.stdout.split() == bundled_config_names()
    assert "bert-base-uncased" in result.stdout.split()
