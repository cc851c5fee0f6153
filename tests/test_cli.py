"""The `hfenc` command line through typer's CliRunner: every command, exit codes 0/1/2, data on
stdout and people's lines on stderr, --json parsed, the .npy loaded back and compared with the
library's `hfenc.encode` (the documented contract), and every bad input of issue 6: exit 1, one
`Error:` line naming the problem, no traceback, nothing at the output path.

The tiny bert model is used everywhere but in the one test of the packaged default model.
"""

from __future__ import annotations

import errno
import gzip
import importlib.metadata
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import hfenc
import tiny_models
from hfenc.model.archs import arch_names
from hfenc.cli import app
from hfenc.errors import HfencError, InputError
from hfenc.model.poolers import pooler_names

WIDTH = tiny_models.HIDDEN
runner = CliRunner()


def _run(*args: object, input: str | bytes | None = None, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input, env=env)


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("HFENC_DEBUG", raising=False)


@pytest.fixture(scope="module")
def bert(tiny_model_dir) -> Path:
    return tiny_model_dir("bert")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rng = random.Random(5)
    return [" ".join(rng.choice(tiny_models.WORDS) for _ in range(rng.randint(1, 12))) for _ in range(30)]


@pytest.fixture()
def data(tmp_path, texts) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "in.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return folder


def _embed(bert: Path, inp: object, out: object | None, *extra: object, device: str = "cpu"):
    args: list[object] = ["embed", inp]
    if out is not None:
        args += ["-o", out]
    return _run(*args, "-m", bert, "--device", device, *extra)


def _encode(texts: list[str], bert: Path, **options) -> np.ndarray:
    return hfenc.encode(texts, model=str(bert), device="cpu", **options)


def _hidden(out: Path) -> list[Path]:
    return [out.with_name(f".{out.name}.{tag}") for tag in ("partial", "resume.json")]


def _assert_ok(result) -> None:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr


def _assert_refused(result, out: Path | None, *needles: str, hint: str | None = None,
                    output_may_exist: bool = False) -> None:
    """Exit 1, one `Error:` line naming the problem, no traceback, nothing written at `out`."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == ""
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    if hint is not None:
        hints = [line for line in result.stderr.splitlines() if line.startswith("Hint: ")]
        assert hints and hint in hints[0], (hint, result.stderr)
    if out is not None:
        if not output_may_exist:
            assert not out.exists()
        assert not out.with_name(out.name + ".json").exists()
        for hidden in _hidden(out):
            assert not hidden.exists(), hidden


# ---- embed: success ---------------------------------------------------------------------------

def test_embed_writes_the_library_encode_rows_and_summarises_on_stderr(data, bert, texts):
    out = data / "out.npy"
    result = _embed(bert, data / "in.txt", out)
    _assert_ok(result)
    assert result.stdout == ""  # data only, and there is none without --json
    assert f"Wrote 30 rows x {WIDTH} (stored as float32) to {out}" in result.stderr
    got = np.load(out)
    assert got.shape == (30, WIDTH) and got.dtype == np.float32
    np.testing.assert_allclose(got, _encode(texts, bert), rtol=0, atol=1e-6)
    meta = json.loads((data / "out.npy.json").read_text())
    assert meta["complete"] is True and meta["rows"] == 30 and meta["device"] == "cpu"
    assert sorted(p.name for p in data.iterdir()) == ["in.txt", "out.npy", "out.npy.json", "out.sha256.npy"]


def test_embed_json_summary_on_stdout(data, bert):
    out = data / "out.npy"
    result = _embed(bert, data / "in.txt", out, "--json")
    _assert_ok(result)
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["dim"]) == (30, WIDTH)
    assert summary["output"] == str(out) and summary["sidecar"] == str(data / "out.npy.json")
    assert summary["resumed_from"] == 0 and summary["truncated"] == 0
    assert "Wrote" in result.stderr and "Wrote" not in result.stdout


def test_embed_quiet_prints_nothing_on_stderr(data, bert):
    result = _embed(bert, data / "in.txt", data / "out.npy", "-q", "--json")
    _assert_ok(result)
    assert result.stderr == ""
    assert json.loads(result.stdout)["rows"] == 30


def test_embed_default_output_beside_the_input(data, bert):
    result = _embed(bert, data / "in.txt", None)
    _assert_ok(result)
    assert np.load(data / "in.npy").shape == (30, WIDTH)
    assert (data / "in.npy.json").is_file()


def test_embed_gzip_jsonl_with_ids_and_skip_blank(tmp_path, bert):
    rows = ['{"id": "a", "body": "the cat"}', "", '{"id": "b", "body": "a dog"}', '{"id": "c", "body": "  "}',
            '{"id": "d", "body": "red car"}']
    (tmp_path / "in.jsonl.gz").write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    out = tmp_path / "out.npy"
    result = _embed(bert, tmp_path / "in.jsonl.gz", out, "--field", "body", "--id-field", "id", "--skip-blank")
    _assert_ok(result)
    np.testing.assert_allclose(np.load(out), _encode(["the cat", "a dog", "red car"], bert), rtol=0, atol=1e-6)
    assert (tmp_path / "out.ids.txt").read_text().splitlines() == ["a", "b", "d"]
    assert np.load(tmp_path / "out.lines.npy").tolist() == [1, 3, 5]


def test_embed_blank_lines_warn_on_stderr(tmp_path, bert):
    (tmp_path / "in.txt").write_text("the cat\n\na dog\n")
    result = _embed(bert, tmp_path / "in.txt", tmp_path / "out.npy")
    _assert_ok(result)
    assert "Warning: 1 blank record(s) were embedded" in result.stderr
    assert np.load(tmp_path / "out.npy").shape == (3, WIDTH)


def test_embed_truncate_dim_keeps_the_first_dims_then_normalizes(data, bert, texts):
    result = _embed(bert, data / "in.txt", data / "out.npy", "--truncate-dim", "12", "--normalize")
    _assert_ok(result)
    got = np.load(data / "out.npy")
    full = _encode(texts, bert)[:, :12]
    np.testing.assert_allclose(got, full / np.linalg.norm(full, axis=1, keepdims=True), rtol=0, atol=1e-6)


def test_embed_seeded_random_projection_is_marked_untrained(data, bert):
    args = ("--proj", "linear", "--dim", "8", "--seed", "0")
    _assert_ok(_embed(bert, data / "in.txt", data / "a.npy", *args))
    _assert_ok(_embed(bert, data / "in.txt", data / "b.npy", *args))
    a = np.load(data / "a.npy")
    assert a.shape == (30, 8)
    assert np.array_equal(a, np.load(data / "b.npy"))  # the seed makes it reproducible
    meta = json.loads((data / "a.npy.json").read_text())
    assert meta["proj"] == "linear" and meta["proj_untrained"] is True
    assert meta["seed"] == 0 and meta["dim"] == 8


def test_embed_stdin_with_output(tmp_path, bert):
    out = tmp_path / "out.npy"
    result = _run("embed", "-", "-o", out, "-m", bert, "--device", "cpu", input="the cat\na big dog\n")
    _assert_ok(result)
    np.testing.assert_allclose(np.load(out), _encode(["the cat", "a big dog"], bert), rtol=0, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy", "out.npy.json", "out.sha256.npy"]  # spool removed


def test_embed_encoding_errors_replace_goes_on(tmp_path, bert):
    (tmp_path / "in.txt").write_bytes(b"the cat\nbad \xff dog\n")
    result = _embed(bert, tmp_path / "in.txt", tmp_path / "out.npy", "--encoding-errors", "replace")
    _assert_ok(result)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), _encode(["the cat", "bad \ufffd dog"], bert),
                               rtol=0, atol=1e-6)


def test_embed_force_overwrites_an_existing_output(data, bert):
    out = data / "out.npy"
    out.write_bytes(b"old")
    _assert_ok(_embed(bert, data / "in.txt", out, "--force"))
    assert np.load(out).shape == (30, WIDTH)


def test_embed_default_model_works_offline(tmp_path, minilm_dir):
    """`hfenc embed file.txt` and nothing else: the packaged all-MiniLM-L6-v2, no network."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    lines = (Path(__file__).parents[1] / "examples" / "sentences.txt").read_text(encoding="utf-8").splitlines()
    texts = lines[:40]
    (tmp_path / "file.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    result = _run("embed", tmp_path / "file.txt")
    _assert_ok(result)
    got = np.load(tmp_path / "file.npy")
    assert got.shape == (40, 384)
    meta = json.loads((tmp_path / "file.npy.json").read_text())
    assert meta["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["model_source"] in ("package", "cache")
    assert meta["pooler"] == "mean" and meta["normalize"] is True and meta["max_length"] == 256
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    exact = meta["device"] == "cpu" and meta["dtype"] == "float32"
    reference = hfenc.encode(texts, model=str(minilm_dir), device="cpu")
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-6 if exact else 2e-2)


# ---- embed: every bad input -> exit 1, one line, nothing written ------------------------------

def test_missing_input_file(tmp_path, bert):
    out = tmp_path / "out.npy"
    _assert_refused(_embed(bert, tmp_path / "nope.txt", out), out, "nope.txt", "does not exist")


def test_input_is_a_directory(tmp_path, bert):
    (tmp_path / "folder").mkdir()
    out = tmp_path / "out.npy"
    _assert_refused(_embed(bert, tmp_path / "folder", out), out, "is a directory")


def test_empty_input(tmp_path, bert):
    (tmp_path / "in.txt").write_bytes(b"")
    out = tmp_path / "out.npy"
    _assert_refused(_embed(bert, tmp_path / "in.txt", out), out, "is empty")


def test_invalid_utf8_names_line_and_byte_offset(tmp_path, bert):
    (tmp_path / "in.txt").write_bytes(b"the cat\na dog\nbad \xc3( here\n")  # 8 + 6 + 4 = byte 18
    out = tmp_path / "out.npy"
    _assert_refused(_embed(bert, tmp_path / "in.txt", out), out,
                    "invalid UTF-8 (file byte offset 18)", hint="--encoding-errors replace")


def test_malformed_jsonl_line(tmp_path, bert):
    (tmp_path / "in.jsonl").write_text('{"text": "the cat"}\n{"text": the dog}\n')
    out = tmp_path / "out.npy"
    _assert_refused(_embed(bert, tmp_path / "in.jsonl", out), out, "line 2: malformed JSON")


def test_missing_jsonl_field(tmp_path, bert):
    (tmp_path / "in.jsonl").write_text('{"text": "the cat"}\n')
    out = tmp_path / "out.npy"
    _assert_refused(_embed(bert, tmp_path / "in.jsonl", out, "--field", "body"), out,
                    "line 1: no field 'body'", hint="--field")


def test_missing_csv_column(tmp_path, bert):
    (tmp_path / "in.csv").write_text("id,text\n1,the cat\n")
    out = tmp_path / "out.npy"
    _assert_refused(_embed(bert, tmp_path / "in.csv", out, "--column", "body"), out,
                    "no column 'body'; the header has: id, text", hint="--column")


def test_nul_byte(tmp_path, bert):
    (tmp_path / "in.txt").write_bytes(b"the cat\nthe \x00dog\n")
    out = tmp_path / "out.npy"
    _assert_refused(_embed(bert, tmp_path / "in.txt", out), out, "NUL byte (file byte offset 12)")


def test_output_directory_missing(data, bert):
    out = data / "missing" / "out.npy"
    _assert_refused(_embed(bert, data / "in.txt", out), out, "output directory", "does not exist")
    assert not out.parent.exists()


def test_output_directory_unwritable(data, bert, monkeypatch):
    target = data / "locked"
    target.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k:
                        False if Path(path) == target else real_access(path, mode, *a, **k))
    out = target / "out.npy"
    _assert_refused(_embed(bert, data / "in.txt", out), out, "is not writable")
    assert list(target.iterdir()) == []


def test_disk_full(data, bert, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    out = data / "out.npy"
    _assert_refused(_embed(bert, data / "in.txt", out), out, "disk full")
    assert sorted(p.name for p in data.iterdir()) == ["in.txt"]


def test_output_exists_without_force(data, bert):
    out = data / "out.npy"
    out.write_bytes(b"precious")
    result = _embed(bert, data / "in.txt", out)
    _assert_refused(result, out, "already exists", hint="--force", output_may_exist=True)
    assert out.read_bytes() == b"precious"


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_model_with_missing_weights(data, bert):
    model = _copy_model(bert, data / "model")
    (model / "model.safetensors").unlink()
    out = data / "out.npy"
    result = _run("embed", data / "in.txt", "-o", out, "-m", model, "--device", "cpu")
    _assert_refused(result, out, "no weights", str(model))


def test_model_with_corrupt_weights(data, bert):
    model = _copy_model(bert, data / "model")
    with open(model / "model.safetensors", "r+b") as fh:
        fh.truncate(100)
    out = data / "out.npy"
    result = _run("embed", data / "in.txt", "-o", out, "-m", model, "--device", "cpu")
    _assert_refused(result, out, "cannot load the weights", str(model))


def test_model_directory_missing(data):
    out = data / "out.npy"
    result = _run("embed", data / "in.txt", "-o", out, "-m", data / "no-such-model")
    _assert_refused(result, out, "no-such-model", "does not exist")


def test_hub_name_offline_fails_fast_with_where_it_looked(data):
    out = data / "out.npy"
    start = time.perf_counter()
    result = _run("embed", data / "in.txt", "-o", out, "-m", "nobody-here/no-such-model-xyz")
    assert time.perf_counter() - start < 2.0
    _assert_refused(result, out, "'nobody-here/no-such-model-xyz' not found", "Hugging Face cache", "offline",
                    hint="hf download nobody-here/no-such-model-xyz")


@pytest.mark.parametrize("options, needles, hint", [
    (["--pooler", "avg"], ["unknown pooler 'avg'; choose one of: ", "cls", "mean", "max", "last_token"], None),
    (["--dtype", "f8"], ["unknown dtype 'f8'; choose one of: auto, bfloat16, float16, float32, int8"], None),
    (["--out-dtype", "int8"], ["unknown output dtype 'int8'; choose one of: float16, float32"], None),
    (["--proj", "conv", "--dim", "8"], ["unknown projection 'conv'; choose one of:", "linear", "mlp"], None),
    (["--format", "xml"], ["unknown input format 'xml'; choose one of: ", "csv, json, jsonl"], None),
    (["--on-overflow", "drop"], ["unknown overflow policy 'drop'; choose one of: error, truncate"], None),
    (["--encoding-errors", "ignore"], ["'ignore'; choose one of: replace, strict"], None),
    (["--truncate-dim", "64"], ["--truncate-dim 64", "output width 32"], None),
    (["--dim", "8"], ["--dim 8 differs from the model's output width 32"], "--proj"),
    (["--proj", "linear", "--dim", "8"], ["a linear projection needs trained weights"], "--seed"),
    (["--proj", "mlp"], ["--proj mlp needs --dim"], None),
    (["--proj", "linear", "--dim", "8", "--proj-weights", "no-such-file.pt"], ["no-such-file.pt", "does not exist"],
     None),
    (["--max-length", "1000"], ["--max-length 1000 exceeds the model's 64 positions"], None),
    (["--chunk-size", "0"], ["chunk size must be positive"], None),
    (["--batch-tokens", "0"], ["--batch-tokens 0 must be a positive number"], None),
])
def test_bad_options_list_the_problem(data, bert, options, needles, hint):
    out = data / "out.npy"
    _assert_refused(_embed(bert, data / "in.txt", out, *options), out, *needles, hint=hint)


def test_unknown_device_lists_the_choices(data, bert):
    out = data / "out.npy"
    _assert_refused(_embed(bert, data / "in.txt", out, device="tpu"), out,
                    "unknown device 'tpu'; choose one of: auto, cpu, cuda, cuda:N, mps")


def test_cuda_where_there_is_none(data, bert, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = data / "out.npy"
    _assert_refused(_embed(bert, data / "in.txt", out, device="cuda"), out,
                    "device 'cuda' was asked for", "no CUDA GPU", hint="--device cpu")


def test_on_overflow_error_names_the_record(tmp_path, bert):
    (tmp_path / "in.txt").write_text("the cat\nthe big red dog and a small cat read a long book\nsun\n")
    out = tmp_path / "out.npy"
    _assert_refused(_embed(bert, tmp_path / "in.txt", out, "--max-length", "8", "--on-overflow", "error"), out,
                    "line 2 is longer than the maximum of 8 tokens", hint="--max-length")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_stdin_without_output(bert):
    result = _run("embed", "-", "-m", bert, "--device", "cpu", input="the cat\n")
    _assert_refused(result, None, "standard input needs an output path", hint="-o")


def test_stdin_with_bad_input_leaves_no_spool_file(tmp_path, bert):
    out = tmp_path / "out.npy"
    result = _run("embed", "-", "-o", out, "-m", bert, "--device", "cpu", input=b"the cat\n\xff dog\n")
    _assert_refused(result, out, "invalid UTF-8 (file byte offset 8)")
    assert list(tmp_path.iterdir()) == []


def test_resume_with_nothing_to_resume(data, bert):
    out = data / "out.npy"
    _assert_refused(_embed(bert, data / "in.txt", out, "--resume"), out, "nothing to resume")


def test_debug_env_raises_the_error(tmp_path, bert):
    result = _run("embed", tmp_path / "nope.txt", "-o", tmp_path / "out.npy", "-m", bert, "--device", "cpu",
                  env={"HFENC_DEBUG": "1"})
    assert result.exit_code == 1
    assert isinstance(result.exception, InputError) and isinstance(result.exception, HfencError)
    assert "does not exist" in str(result.exception)


def test_debug_env_zero_is_off(tmp_path, bert):
    out = tmp_path / "out.npy"
    result = _run("embed", tmp_path / "nope.txt", "-o", out, "-m", bert, env={"HFENC_DEBUG": "0"})
    _assert_refused(result, out, "does not exist")


# ---- usage errors: exit 2 ---------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["embed"], "give an input file (or - for stdin), or --text TEXT"),
    (["embed", "in.txt", "--dim", "notanumber"], "--dim"),
    (["embed", "in.txt", "--frobnicate"], "--frobnicate"),
    (["lock-plan", "bert-base-uncased"], "--unlocked"),
    (["info", "--frobnicate"], "--frobnicate"),
    (["no-such-command"], "no-such-command"),
])
def test_usage_errors_exit_2(args, needle):
    result = _run(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert needle in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


# ---- listings, info, lock-plan, version, help -------------------------------------------------

def test_poolers_table_lists_every_pooler(bert):
    result = _run("poolers")
    _assert_ok(result)
    assert result.stderr == ""
    for name in pooler_names():
        assert name in result.stdout
    for name in ("cls", "mean", "max", "last_token"):
        assert name in result.stdout


def test_poolers_json():
    result = _run("poolers", "--json")
    _assert_ok(result)
    listing = json.loads(result.stdout)
    names = [p["name"] for p in listing]
    assert sorted(names) == sorted(pooler_names())
    assert {"cls", "mean", "max", "last_token"} <= set(names)
    assert all(p["description"] and isinstance(p["aliases"], list) for p in listing)


def test_archs_table_and_json():
    table = _run("archs")
    _assert_ok(table)
    for name in ("bert", "t5", "qwen2"):
        assert name in table.stdout
    result = _run("archs", "--json")
    _assert_ok(result)
    listing = {a["model_type"]: a for a in json.loads(result.stdout)}
    assert set(listing) == set(arch_names())
    assert listing["bert"]["default_pooler"] == "cls" and listing["bert"]["encoder_decoder"] is False
    assert listing["t5"]["encoder_decoder"] is True
    assert all(a["blocks"] and "final_norm" in a and "embeddings" in a for a in listing.values())


def test_architectures_is_an_alias_of_archs():
    alias, archs = _run("architectures", "--json"), _run("archs", "--json")
    _assert_ok(alias)
    assert json.loads(alias.stdout) == json.loads(archs.stdout)
    _assert_ok(_run("architectures"))


def test_info_json_of_a_local_model(bert):
    result = _run("info", bert, "--json")
    _assert_ok(result)
    data = json.loads(result.stdout)
    assert data["model_type"] == "bert" and data["source"] == "local"
    assert (data["layers"], data["width"], data["context_length"]) == (2, WIDTH, tiny_models.MAX_LEN)
    assert data["weights"] == {"model.safetensors": (bert / "model.safetensors").stat().st_size}
    table = _run("info", bert)
    _assert_ok(table)
    assert "bert" in table.stdout


def test_info_of_a_missing_model(tmp_path):
    result = _run("info", tmp_path / "no-such-model", "--json")
    _assert_refused(result, None, "does not exist")


def test_lock_plan_smoke(bert):
    result = _run("lock-plan", bert, "--unlocked", "1", "--json")
    _assert_ok(result)
    plan = json.loads(result.stdout)
    assert plan["model_type"] == "bert" and plan["num_layers"] == 2 and plan["unlocked"] == 1
    assert 0 < plan["trainable_params"] < plan["total_params"]


def test_version():
    result = _run("--version")
    _assert_ok(result)
    assert result.stdout.strip() == f"hfenc {importlib.metadata.version('hfenc')}"


@pytest.mark.parametrize("command", [["embed"], ["poolers"], ["archs"], ["info"], ["lock-plan"]])
def test_help_has_examples(command):
    result = _run(*command, "--help")
    _assert_ok(result)
    assert "Examples" in result.stdout
    assert "hfenc " in result.stdout.split("Examples", 1)[1]


def test_root_help_has_examples():
    result = _run("--help")
    _assert_ok(result)
    assert "embed" in result.stdout and "lock-plan" in result.stdout
    assert "Examples" in result.stdout


def test_architectures_help_has_examples():
    result = _run("architectures", "--help")
    _assert_ok(result)
    assert "Examples" in result.stdout
