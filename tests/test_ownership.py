"""Issue 10: hfenc touches only what it can prove it wrote; model folders are data, never code;
odd path names work; failures mid-run are one line.

Each test names the behaviour it guards; the fault-injection harness (kills at every step of a
job) is tests/test_faults.py."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import hfenc
from hfenc.cli import app
from hfenc.errors import HfencError, OutputError
from hfenc.io.inputs import InputSpec
from hfenc.jobs.local import JobOptions, embed_file


@pytest.fixture(scope="module")
def embedder(tiny_model_dir):
    return hfenc.Embedder(str(tiny_model_dir("bert")), device="cpu")


def _jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for t, i in rows), encoding="utf-8")
    return path


def _job(src: Path, out: Path, **kw) -> JobOptions:
    spec_kw = {k: kw.pop(k) for k in ("id_field", "skip_blank") if k in kw}
    return JobOptions(InputSpec(str(src), **spec_kw), out, **kw)


ROWS = [("a dog", "k1"), ("the cat", "k2"), ("red car", "k3")]


def test_a_users_side_file_beside_the_output_is_never_deleted(tmp_path, embedder):
    src = tmp_path / "titles.txt"
    src.write_text("the cat\na dog\n")
    mine = tmp_path / "titles.ids.txt"
    mine.write_text("my own notes\n")
    result = embed_file(_job(src, None), embedder)
    assert mine.read_text() == "my own notes\n"  # before issue 10 it was removed as "stale"
    assert any("left titles.ids.txt alone" in w for w in result.warnings)
    embed_file(_job(src, None, force=True), embedder)  # --force replaces the output, not her file
    assert mine.read_text() == "my own notes\n"


def test_id_field_refuses_to_overwrite_a_file_it_did_not_write(tmp_path, embedder):
    src = _jsonl(tmp_path / "in.jsonl", ROWS)
    mine = tmp_path / "out.ids.txt"
    mine.write_text("precious\n")
    with pytest.raises(OutputError, match="out.ids.txt exists and hfenc did not write it"):
        embed_file(_job(src, tmp_path / "out.npy", id_field="id"), embedder)
    assert mine.read_text() == "precious\n" and not (tmp_path / "out.npy").exists()
    embed_file(_job(src, tmp_path / "out.npy", id_field="id", force=True), embedder)  # asked for
    assert mine.read_text() == "k1\nk2\nk3\n"


def test_the_sidecar_lists_its_files_with_their_hashes(tmp_path, embedder):
    import hashlib

    src = _jsonl(tmp_path / "in.jsonl", ROWS)
    result = embed_file(_job(src, tmp_path / "out.npy", id_field="id"), embedder)
    files = json.loads(result.sidecar.read_text())["files"]
    ids = (tmp_path / "out.ids.txt").read_bytes()
    assert files["out.ids.txt"] == {"bytes": len(ids), "sha256": "sha256:" + hashlib.sha256(ids).hexdigest()}
    assert files["out.npy"]["bytes"] == (tmp_path / "out.npy").stat().st_size


def test_an_owned_side_file_that_was_edited_is_no_longer_ours(tmp_path, embedder):
    src = _jsonl(tmp_path / "in.jsonl", ROWS)
    embed_file(_job(src, tmp_path / "out.npy", id_field="id"), embedder)
    (tmp_path / "out.ids.txt").write_text("k1\nk2\nEDITED\n")
    result = embed_file(_job(src, tmp_path / "out.npy", force=True), embedder)  # no ids this time
    assert (tmp_path / "out.ids.txt").read_text() == "k1\nk2\nEDITED\n"
    assert any("left out.ids.txt alone" in w for w in result.warnings)


def test_an_owned_stale_side_file_goes_with_the_output_it_described(tmp_path, embedder):
    src = _jsonl(tmp_path / "in.jsonl", ROWS)
    embed_file(_job(src, tmp_path / "out.npy", id_field="id"), embedder)
    embed_file(_job(src, tmp_path / "out.npy", force=True), embedder)
    assert not (tmp_path / "out.ids.txt").exists()


def test_a_json_file_of_someone_elses_at_the_sidecar_path_is_refused(tmp_path, embedder):
    src = tmp_path / "in.txt"
    src.write_text("the cat\n")
    (tmp_path / "out.npy.json").write_text('{"mine": true}\n')
    with pytest.raises(OutputError, match="out.npy.json exists and hfenc did not write it"):
        embed_file(_job(src, tmp_path / "out.npy"), embedder)
    assert (tmp_path / "out.npy.json").read_text() == '{"mine": true}\n'


def test_a_stray_hidden_partial_file_is_not_removed_without_force(tmp_path, embedder):
    src = tmp_path / "in.txt"
    src.write_text("the cat\n")
    (tmp_path / ".out.npy.partial").write_bytes(b"not ours")
    with pytest.raises(OutputError, match="no interrupted hfenc run claims it"):
        embed_file(_job(src, tmp_path / "out.npy"), embedder)
    assert (tmp_path / ".out.npy.partial").read_bytes() == b"not ours"


def test_force_over_an_old_output_never_pairs_new_rows_with_old_metadata(tmp_path, embedder, monkeypatch):
    """The publication order: the old sidecar goes before the new array arrives."""
    from hfenc import faults
    from hfenc.io import outputs

    src = tmp_path / "in.txt"
    src.write_text("the cat\n")
    embed_file(_job(src, tmp_path / "out.npy"), embedder)
    src.write_text("a dog\nred car\n")
    seen = []

    def spy(name):
        if name.startswith("published-") or name == "old-sidecar-removed":
            seen.append((name, (tmp_path / "out.npy.json").exists(), np.load(tmp_path / "out.npy").shape[0]))

    monkeypatch.setattr(faults, "point", spy)
    monkeypatch.setattr(outputs.faults, "point", spy)
    embed_file(_job(src, tmp_path / "out.npy", force=True), embedder)
    assert seen[0] == ("old-sidecar-removed", False, 1)  # old rows, no sidecar: not "complete"
    assert ("published-array", False, 2) in seen  # new rows arrive with no sidecar beside them
    assert seen[-1] == ("published-sidecar", True, 2)


def test_a_crash_after_publication_before_the_state_is_removed_resumes(tmp_path, embedder, monkeypatch):
    from hfenc.io import outputs

    src = tmp_path / "in.txt"
    src.write_text("the cat\na dog\n")

    class Crash(BaseException):
        pass

    def crash(name):
        if name == "published":
            raise Crash

    monkeypatch.setattr(outputs.faults, "point", crash)
    with pytest.raises(Crash):
        embed_file(_job(src, tmp_path / "out.npy"), embedder)
    assert (tmp_path / ".out.npy.resume.json").exists()  # the dead end issue 10 found
    monkeypatch.undo()
    result = embed_file(_job(src, tmp_path / "out.npy", resume=True), embedder)
    assert result.rows == 2 and not (tmp_path / ".out.npy.resume.json").exists()
    assert json.loads((tmp_path / "out.npy.json").read_text())["complete"] is True


# ---- model folders are data, never code ------------------------------------------------------

class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['HFENC_PWNED']}",))


def test_pickled_code_in_bin_weights_never_runs(tiny_model_dir, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir("bert"), folder)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    monkeypatch.setenv("HFENC_PWNED", str(marker))
    with open(folder / "pytorch_model.bin", "wb") as fh:
        torch.save({**state, "evil": _Payload()}, fh, pickle_module=pickle)
    with pytest.raises(HfencError):
        hfenc.Embedder(str(folder), device="cpu")
    assert not marker.exists()


def test_module_paths_that_leave_the_folder_are_refused(tiny_model_dir, tmp_path):
    from hfenc.model.st import read_st_layout

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for rel in ("../elsewhere", str(outside), "link"):
        folder = tmp_path / f"m{abs(hash(rel))}"
        shutil.copytree(tiny_model_dir("bert"), folder)
        (folder / "link").symlink_to(outside)
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": rel, "type": "sentence_transformers.models.Pooling"}]))
        with pytest.raises(HfencError, match="outside the model folder"):
            read_st_layout(folder)


# ---- odd names -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["my texts.txt", "tëxtés ünï.txt", "-leading-dash.txt"])
def test_odd_input_and_output_names_work(tmp_path, tiny_model_dir, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text("the cat\na dog\n")
    out = name.replace(".txt", ".npy")
    result = CliRunner().invoke(app, ["embed", "-m", str(tiny_model_dir("bert")), "-o", out, "-q", "--", name])
    assert result.exit_code == 0, result.stderr
    assert np.load(tmp_path / out).shape[0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, out, out + ".json", out[:-len(".npy")] + ".sha256.npy"])


def test_nothing_is_written_outside_the_outputs_directory(tmp_path, tiny_model_dir, monkeypatch):
    work, dest = tmp_path / "work", tmp_path / "dest"
    work.mkdir(), dest.mkdir()
    monkeypatch.chdir(work)
    (tmp_path / "in.jsonl").write_text('{"text": "the cat", "id": "a"}\n')
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "in.jsonl"), "-m", str(tiny_model_dir("bert")),
                                      "-o", str(dest / "o.npy"), "--id-field", "id", "-q"], input="")
    assert result.exit_code == 0, result.stderr
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in dest.iterdir()) == ["o.ids.txt", "o.npy", "o.npy.json", "o.sha256.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "in.jsonl", "work"]


# ---- failures mid-run: one line, saved rows kept --------------------------------------------

def test_disk_full_while_saving_progress_is_one_line_and_resumable(tmp_path, embedder, monkeypatch):
    import errno

    from hfenc.io import outputs

    src = tmp_path / "in.txt"
    src.write_text("".join(f"the cat {i}\n" for i in range(30)))
    real = outputs.write_json_atomic
    calls = {"n": 0}

    def full(path, data):
        calls["n"] += 1
        if calls["n"] == 3:  # the state after the 2nd chunk (the 1st write is the empty state)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(outputs, "write_json_atomic", full)
    with pytest.raises(OutputError, match="disk full") as info:
        embed_file(_job(src, tmp_path / "out.npy", chunk_size=5), embedder)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.npy").exists()
    monkeypatch.undo()
    result = embed_file(_job(src, tmp_path / "out.npy", chunk_size=5, resume=True), embedder)
    assert result.resumed_from == 5 and result.rows == 30  # the state saved before the failure


def test_missing_or_corrupt_weight_shards_are_one_line(tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir("bert"), folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(HfencError) as info:
        hfenc.Embedder(str(folder), device="cpu")
    assert "\n" not in str(info.value)
    # A sharded checkpoint whose index names a shard that is not there.
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"embeddings.word_embeddings.weight": "model-00001-of-00002.safetensors"}}))
    (folder / "model-00002-of-00002.safetensors").write_bytes(data)
    with pytest.raises(HfencError) as info:
        hfenc.Embedder(str(folder), device="cpu")
    assert "\n" not in str(info.value)


# ---- the resume fingerprint covers the whole pipeline; untrained parts are seeded ------------

def _interrupt(src: Path, out: Path, embedder, **kw):
    from hfenc.errors import Interrupted

    def stop(progress):
        if progress.rows_done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        embed_file(_job(src, out, chunk_size=5, **kw), embedder, progress=stop)


@pytest.mark.parametrize("change", ["tokenizer", "lowercase", "dense_activation"])
def test_resume_refuses_a_changed_pipeline(tmp_path, tiny_model_dir, change):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as m
    import torch

    from hfenc.errors import ResumeError

    folder = tmp_path / "st"
    torch.manual_seed(0)
    SentenceTransformer(modules=[m.Transformer(str(tiny_model_dir("bert"))), m.Pooling(32, pooling_mode="mean"),
                                 m.Dense(32, 8, activation_function=torch.nn.Tanh())]).save(str(folder))
    src = tmp_path / "in.txt"
    src.write_text("".join(f"the cat {i}\n" for i in range(12)))
    _interrupt(src, tmp_path / "out.npy", hfenc.Embedder(str(folder), device="cpu"))
    if change == "tokenizer":  # a new special token: other ids for the same texts
        data = json.loads((folder / "tokenizer.json").read_text())
        data["added_tokens"].append({**data["added_tokens"][-1], "id": 999, "content": "[NEW]"})
        (folder / "tokenizer.json").write_text(json.dumps(data))
    elif change == "lowercase":
        (folder / "sentence_bert_config.json").write_text(json.dumps(
            {**json.loads((folder / "sentence_bert_config.json").read_text()), "do_lower_case": True}))
    else:
        dense = next(folder.glob("*_Dense"))
        cfg = json.loads((dense / "config.json").read_text())
        (dense / "config.json").write_text(json.dumps({**cfg, "activation_function": "torch.nn.modules.activation.ReLU"}))
    with pytest.raises(ResumeError, match="changed since the interrupted run"):
        embed_file(_job(src, tmp_path / "out.npy", chunk_size=5, resume=True), hfenc.Embedder(str(folder), device="cpu"))


def test_an_untrained_pooling_layer_is_the_same_in_every_run(tiny_model_dir, tmp_path):
    """roberta-like checkpoints have no trained pooling layer: with the cls pooler it is random,
    but seeded (--seed, default 0), so two runs and a resumed run agree."""
    import warnings

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir("bert"), folder)
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if not k.startswith("pooler.")}
    save_file(state, str(folder / "model.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = [hfenc.Embedder(str(folder), device="cpu", pooler="cls", **kw) for kw in ({}, {}, {"seed": 7})]
    texts = ["the cat", "a dog"]
    a, b, c = (e.encode(texts) for e in runs)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # the seed decides it
    assert runs[0].settings.init_seed == 0 and runs[2].settings.init_seed == 7
