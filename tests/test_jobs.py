"""hfenc.jobs.local.embed_file on the tiny bert model: rows in input order, the sidecar, output that is
either whole or absent, resume after Ctrl-C / SIGTERM / SIGKILL (bit for bit), and the output
errors of issue 6 (exists, unwritable, disk full).

Expected numbers come from `Embedder.encode` on the same texts (the documented contract) or from
an uninterrupted run; counts, line numbers and hashes are written out by hand or with hashlib.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import tiny_models
from interrupts import stop_after
from hfenc import Embedder
from hfenc.errors import ConfigError, InputError, Interrupted, OutputError, ResumeError
from hfenc.io.inputs import InputSpec
from hfenc.jobs.local import JobOptions, embed_file

WIDTH = tiny_models.HIDDEN


def _sentences(n: int, seed: int = 0, max_words: int = 12) -> list[str]:
    """n texts of 1..max_words words of the tiny vocabulary (each word is one token)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(tiny_models.WORDS) for _ in range(rng.randint(1, max_words))) for _ in range(n)]


def _write_lines(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def _job(input_path: Path | str, output: Path | None, *, force: bool = False, resume: bool = False,
         out_dtype: str = "float32", chunk_size: int = 16384, on_overflow: str = "truncate",
         **spec: object) -> JobOptions:
    return JobOptions(InputSpec(str(input_path), **spec), output, force, resume, out_dtype, chunk_size,
                      on_overflow)  # type: ignore[arg-type]


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())








@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _sentences(50)


@pytest.fixture()
def data(tmp_path, texts) -> Path:
    """A folder holding only in.txt (50 lines); outputs go beside it."""
    folder = tmp_path / "data"
    folder.mkdir()
    _write_lines(folder / "in.txt", texts)
    return folder


# ---- the output -----------------------------------------------------------------------------

def test_rows_equal_encode_of_the_same_texts_in_order(data, embedder, texts):
    out = data / "out.npy"
    result = embed_file(_job(data / "in.txt", out), embedder)
    got = np.load(out)
    assert got.shape == (50, WIDTH) and got.dtype == np.float32
    np.testing.assert_allclose(got, embedder.encode(texts), rtol=0, atol=1e-6)
    # row i is record i: the row of a text moved to the front of the input moves with it
    assert not np.allclose(got[0], got[1])
    assert (result.output, result.sidecar) == (out, data / "out.npy.json")
    assert (result.rows, result.dim, result.blank, result.resumed_from) == (50, WIDTH, 0, 0)
    assert result.tokens == sum(len(t.split()) + 2 for t in texts)  # [CLS] words [SEP]


def test_sidecar_records_how_the_output_was_made(data, embedder, bert):
    raw = (data / "in.txt").read_bytes()
    embed_file(_job(data / "in.txt", data / "out.npy"), embedder)
    meta = json.loads((data / "out.npy.json").read_text())
    assert meta["complete"] is True
    assert meta["output"] == "out.npy"
    assert (meta["rows"], meta["dim"], meta["out_dtype"]) == (50, WIDTH, "float32")
    assert meta["model"] == str(bert) and meta["model_source"] == "local"
    assert meta["model_type"] == "bert"
    assert meta["pooler"] == "cls"  # bert's own pooled output is its default
    assert meta["normalize"] is False  # not a sentence-transformers folder: off
    assert meta["max_length"] == tiny_models.MAX_LEN
    assert (meta["dtype"], meta["device"]) == ("float32", "cpu")
    assert meta["proj"] == "none" and meta["proj_untrained"] is False
    assert meta["truncated_rows"] == 0 and meta["blank_rows"] == 0
    assert meta["input"]["sha256"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert meta["input"]["bytes"] == len(raw) and meta["input"]["format"] == "txt"
    assert meta["weights_sha256"].startswith("sha256:") and len(meta["weights_sha256"]) == 7 + 64
    assert meta["versions"] == {"hfenc": importlib.metadata.version("hfenc"), "torch": torch.__version__,
                                "transformers": transformers.__version__}
    assert isinstance(meta["elapsed_seconds"], (int, float)) and meta["elapsed_seconds"] >= 0
    assert meta["resumed_from_row"] is None


def test_success_leaves_no_hidden_files(data, embedder):
    embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7), embedder)
    assert _names(data) == ["in.txt", "out.npy", "out.npy.json", "out.sha256.npy"]


def test_default_output_is_beside_the_input_without_gz(tmp_path, embedder, texts):
    import gzip

    src = tmp_path / "docs.jsonl.gz"
    src.write_bytes(gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in texts[:5]).encode()))
    result = embed_file(_job(src, None), embedder)
    assert result.output == tmp_path / "docs.npy"
    np.testing.assert_allclose(np.load(tmp_path / "docs.npy"), embedder.encode(texts[:5]), rtol=0, atol=1e-6)


def test_existing_output_is_refused_without_force(data, embedder):
    out = data / "out.npy"
    out.write_bytes(b"precious")
    calls = []

    def load() -> Embedder:
        calls.append(1)
        return embedder

    with pytest.raises(OutputError, match="already exists") as info:
        embed_file(_job(data / "in.txt", out), load)
    assert "--force" in info.value.hint
    assert out.read_bytes() == b"precious"
    assert calls == []  # refused before the model was loaded
    assert _names(data) == ["in.txt", "out.npy"]

    embed_file(_job(data / "in.txt", out, force=True), load)
    assert np.load(out).shape == (50, WIDTH)


def test_small_chunks_give_the_same_rows_as_one_chunk(data, embedder):
    one = embed_file(_job(data / "in.txt", data / "one.npy"), embedder)
    many = embed_file(_job(data / "in.txt", data / "many.npy", chunk_size=7), embedder)
    assert (one.rows, many.rows) == (50, 50)
    # Not bit for bit: a chunk's batches are padded to its own longest text, and a different
    # padded width changes the attention kernels' summation order (1 ulp, ~6e-8).
    np.testing.assert_allclose(np.load(data / "many.npy"), np.load(data / "one.npy"), rtol=0, atol=1e-6)


def test_same_chunk_size_is_deterministic_bit_for_bit(data, embedder):
    embed_file(_job(data / "in.txt", data / "a.npy", chunk_size=7), embedder)
    embed_file(_job(data / "in.txt", data / "b.npy", chunk_size=7), embedder)
    assert np.array_equal(np.load(data / "a.npy"), np.load(data / "b.npy"))


def test_out_dtype_float16(data, embedder, texts):
    result = embed_file(_job(data / "in.txt", data / "out.npy", out_dtype="float16"), embedder)
    got = np.load(data / "out.npy")
    assert got.dtype == np.float16 and got.shape == (50, WIDTH)
    np.testing.assert_array_equal(got, embedder.encode(texts).astype(np.float16))
    assert result.metadata["out_dtype"] == "float16"


def test_unknown_out_dtype_lists_the_choices(data, embedder):
    with pytest.raises(Exception, match=r"unknown output dtype 'int8'; choose one of: float16, float32"):
        embed_file(_job(data / "in.txt", data / "out.npy", out_dtype="int8"), embedder)
    assert _names(data) == ["in.txt"]


def test_blank_lines_are_embedded_and_counted(tmp_path, embedder):
    texts = ["the cat", "", "a dog", "   ", "the sea"]
    _write_lines(tmp_path / "in.txt", texts)
    result = embed_file(_job(tmp_path / "in.txt", tmp_path / "out.npy"), embedder)
    assert result.rows == 5 and result.blank == 2
    assert any("2 blank record" in w for w in result.warnings)
    assert json.loads((tmp_path / "out.npy.json").read_text())["blank_rows"] == 2
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), embedder.encode(texts), rtol=0, atol=1e-6)


def test_skip_blank_writes_kept_line_numbers(tmp_path, embedder):
    (tmp_path / "in.txt").write_text("the cat\n\na dog\n  \n\nthe sea\nred car\n\n")
    result = embed_file(_job(tmp_path / "in.txt", tmp_path / "out.npy", skip_blank=True), embedder)
    assert result.rows == 4 and result.warnings == []
    lines = np.load(tmp_path / "out.lines.npy")
    assert lines.tolist() == [1, 3, 6, 7]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"),
                               embedder.encode(["the cat", "a dog", "the sea", "red car"]), rtol=0, atol=1e-6)
    meta = json.loads((tmp_path / "out.npy.json").read_text())
    assert meta["lines_file"] == "out.lines.npy"
    assert _names(tmp_path) == ["in.txt", "out.lines.npy", "out.npy", "out.npy.json", "out.sha256.npy"]


def test_id_field_writes_ids_aligned_with_rows(tmp_path, embedder, texts):
    ids = [f"doc-{i * 7}" for i in range(12)]
    records = [{"id": i, "body": t, "text": "unused"} for i, t in zip(ids, texts)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = embed_file(_job(tmp_path / "in.jsonl", tmp_path / "out.npy", field="body", id_field="id",
                             chunk_size=5), embedder)
    assert result.rows == 12
    assert (tmp_path / "out.ids.txt").read_text().splitlines() == ids
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), embedder.encode(texts[:12]), rtol=0, atol=1e-6)
    assert result.metadata["ids_file"] == "out.ids.txt"
    assert _names(tmp_path) == ["in.jsonl", "out.ids.txt", "out.npy", "out.npy.json", "out.sha256.npy"]


def test_id_column_of_a_csv(tmp_path, embedder):
    (tmp_path / "in.csv").write_text('key,text\nk1,"the cat, the dog"\nk2,"a\nbird"\n')
    embed_file(_job(tmp_path / "in.csv", tmp_path / "out.npy", id_field="key"), embedder)
    assert (tmp_path / "out.ids.txt").read_text() == "k1\nk2\n"
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), embedder.encode(["the cat, the dog", "a\nbird"]),
                               rtol=0, atol=1e-6)


# ---- truncation and --on-overflow error -------------------------------------------------------

@pytest.fixture(scope="module")
def short_embedder(bert) -> Embedder:
    return Embedder(str(bert), device="cpu", max_length=8)


def test_truncated_rows_are_counted(data, short_embedder, texts):
    # Each word is one token plus [CLS] and [SEP]: more than 6 words do not fit in 8 tokens.
    expected = sum(len(t.split()) > 6 for t in texts)
    assert 0 < expected < len(texts)
    result = embed_file(_job(data / "in.txt", data / "out.npy"), short_embedder)
    assert result.truncated == expected
    assert json.loads((data / "out.npy.json").read_text())["truncated_rows"] == expected
    assert any(f"{expected} text(s) were longer than 8 tokens" in w for w in result.warnings)


@pytest.mark.parametrize("chunk_size", [16384, 3])
def test_on_overflow_error_names_the_record_and_leaves_nothing(tmp_path, short_embedder, chunk_size):
    texts = ["the cat", "a dog", "red car", "blue sky", "the big red dog and a small cat read a book", "sun"]
    _write_lines(tmp_path / "in.txt", texts)
    job = _job(tmp_path / "in.txt", tmp_path / "out.npy", chunk_size=chunk_size, on_overflow="error")
    with pytest.raises(InputError, match=r"line 5 is longer than the maximum of 8 tokens") as info:
        embed_file(job, short_embedder)
    assert "--max-length" in info.value.hint
    assert _names(tmp_path) == ["in.txt"]  # no output, no partial, no resume state


def test_on_overflow_error_passes_when_nothing_overflows(tmp_path, short_embedder):
    _write_lines(tmp_path / "in.txt", ["the cat", "a dog"])
    result = embed_file(_job(tmp_path / "in.txt", tmp_path / "out.npy", on_overflow="error"), short_embedder)
    assert result.rows == 2 and result.truncated == 0


# ---- resume ---------------------------------------------------------------------------------

def _interrupted(data: Path, embedder: Embedder, chunk_size: int = 7, rows: int = 14) -> Interrupted:
    with pytest.raises(Interrupted) as info:
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=chunk_size), embedder,
                   progress=stop_after(rows))
    return info.value


def test_interrupt_keeps_finished_chunks_and_resume_is_bit_for_bit(data, embedder, tmp_path):
    # Ctrl-C lands after the first batch of the third chunk: two whole chunks, and that batch
    # (the chunk's only one here) in flight beside them
    stopped = _interrupted(data, embedder)
    assert stopped.rows_done == 21
    assert "21 of 50 rows are saved" in str(stopped)
    assert not (data / "out.npy").exists() and not (data / "out.npy.json").exists()
    assert _names(data) == [".out.npy.inflight", ".out.npy.partial", ".out.npy.resume.json", "in.txt"]
    state = json.loads((data / ".out.npy.resume.json").read_text())
    assert state["rows_done"] == 14 and state["stats"]["inflight"] == {"start": 14, "batches": 1, "rows": 7}

    result = embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, resume=True), embedder)
    assert result.resumed_from == 14 and result.rows == 50
    assert result.metadata["resumed_from_row"] == 14
    assert _names(data) == ["in.txt", "out.npy", "out.npy.json", "out.sha256.npy"]

    reference = tmp_path / "reference.npy"
    embed_file(_job(data / "in.txt", reference, chunk_size=7), embedder)
    assert np.array_equal(np.load(data / "out.npy"), np.load(reference))


def test_batches_finished_inside_a_chunk_survive_and_resume_bit_for_bit(data, bert, tmp_path, monkeypatch):
    """One 50-row chunk cut into many small batches, a checkpoint after every batch (the engine's
    interval set to 0 s): an interrupt mid-chunk keeps the finished batches, and --resume
    computes only the rest, in the batches an uninterrupted run uses, so the rows are the same bits."""
    import hfenc.compute.engine as engine

    monkeypatch.setattr(engine, "CHECKPOINT_SECONDS", 0.0)
    small = Embedder(str(bert), device="cpu", batch_tokens=64)
    with pytest.raises(Interrupted) as info:
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=50), small, progress=stop_after(20))
    state = json.loads((data / ".out.npy.resume.json").read_text())
    kept = state["stats"]["inflight"]
    assert state["rows_done"] == 0 and kept["start"] == 0 and 20 < kept["rows"] < 50 and kept["batches"] > 1
    assert info.value.rows_done == kept["rows"]
    calls = []
    original = small.engine.module.forward
    monkeypatch.setattr(small.engine.module, "forward", lambda *a, **k: calls.append(len(a[0])) or original(*a, **k))
    result = embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=50, resume=True), small)
    assert result.resumed_from == 0 and sum(calls) == 50 - kept["rows"]  # only the unfinished rows ran
    assert _names(data) == ["in.txt", "out.npy", "out.npy.json", "out.sha256.npy"]
    embed_file(_job(data / "in.txt", tmp_path / "reference.npy", chunk_size=50), small)
    assert np.array_equal(np.load(data / "out.npy"), np.load(tmp_path / "reference.npy"))


def test_a_state_from_before_a_fingerprint_key_existed_still_resumes(data, embedder, tmp_path):
    """id_field and encoding_errors joined the fingerprint later: a state without them means
    their defaults (outputs.FINGERPRINT_DEFAULTS), so that run resumes, equal to a fresh one."""
    _interrupted(data, embedder)
    state_path = data / ".out.npy.resume.json"
    state = json.loads(state_path.read_text())
    assert state["fingerprint"]["id_field"] is None and state["fingerprint"]["encoding_errors"] == "strict"
    del state["fingerprint"]["id_field"], state["fingerprint"]["encoding_errors"]
    state_path.write_text(json.dumps(state))
    result = embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, resume=True), embedder)
    assert result.resumed_from == 14
    embed_file(_job(data / "in.txt", tmp_path / "reference.npy", chunk_size=7), embedder)
    assert np.array_equal(np.load(data / "out.npy"), np.load(tmp_path / "reference.npy"))


def test_resume_with_another_dtype_is_refused_naming_the_dtype_to_give(data, embedder):
    """`--dtype auto` may decide otherwise on another machine: the hint says what the run used."""
    _interrupted(data, embedder)
    state_path = data / ".out.npy.resume.json"
    state = json.loads(state_path.read_text())
    state["fingerprint"]["dtype"] = "bfloat16"  # as an interrupted run on a bf16 CPU records it
    state_path.write_text(json.dumps(state))
    with pytest.raises(ResumeError) as info:
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, resume=True), embedder)
    assert "dtype: 'bfloat16' -> 'float32'" in str(info.value)
    assert info.value.hint.startswith("rerun with --dtype bfloat16")


def test_resume_with_another_token_budget_is_refused_naming_both_values(data, embedder, bert):
    """The batches a text lands in move its row by an ulp or so: another --batch-tokens on resume
    would mix rows of two batchings, so it is refused with the value to give."""
    _interrupted(data, embedder)
    other = Embedder(str(bert), device="cpu", batch_tokens=embedder.engine.batch_tokens // 2)
    with pytest.raises(ResumeError) as info:
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, resume=True), other)
    assert f"batch_tokens: {embedder.engine.batch_tokens} -> {embedder.engine.batch_tokens // 2}" in str(info.value)
    assert info.value.hint.startswith(f"rerun with --batch-tokens {embedder.engine.batch_tokens}")


@pytest.mark.parametrize("key, value, hint", [
    ("torch_version", "1.0.0", "library versions"), ("transformers_version", "4.0.0", "library versions"),
    ("device", "cuda:0", "rerun with --device cuda:0"),
])
def test_resume_on_other_libraries_or_another_device_is_refused(data, embedder, key, value, hint):
    _interrupted(data, embedder)
    state_path = data / ".out.npy.resume.json"
    state = json.loads(state_path.read_text())
    assert key in state["fingerprint"]  # recorded by the interrupted run
    state["fingerprint"][key] = value  # as a run with other libraries, or on a GPU, records it
    state_path.write_text(json.dumps(state))
    with pytest.raises(ResumeError) as info:
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, resume=True), embedder)
    assert f"{key}: {value!r} -> " in str(info.value) and hint in info.value.hint


@pytest.mark.parametrize("name", ["out.npy", "out.npy.json"])
def test_a_dangling_link_at_the_output_is_not_replaced_without_force(data, embedder, name):
    (data / name).symlink_to(data / "nowhere")  # exists() is False for it; it is still someone's
    with pytest.raises(OutputError, match="already exists|hfenc did not write it"):
        embed_file(_job(data / "in.txt", data / "out.npy"), embedder)
    assert (data / name).is_symlink() and os.readlink(data / name) == str(data / "nowhere")
    result = embed_file(_job(data / "in.txt", data / "out.npy", force=True), embedder)  # --force replaces the link
    assert result.rows == 50 and not (data / name).is_symlink() and not (data / "nowhere").exists()


def test_resume_progress_counts_from_the_saved_rows(data, embedder):
    _interrupted(data, embedder)
    seen: list[int] = []
    embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, resume=True), embedder,
               progress=lambda p: seen.append(p.rows_done))
    assert seen == [21, 28, 35, 42, 49, 50]


def test_rerun_without_resume_or_force_after_an_interrupt_is_refused(data, embedder):
    _interrupted(data, embedder)
    with pytest.raises(OutputError, match="can be resumed") as info:
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7), embedder)
    assert "--resume" in info.value.hint and "--force" in info.value.hint
    # --force starts over and cleans up
    result = embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, force=True), embedder)
    assert result.resumed_from == 0
    assert _names(data) == ["in.txt", "out.npy", "out.npy.json", "out.sha256.npy"]


def test_resume_refuses_a_changed_input(data, embedder, texts):
    _interrupted(data, embedder)
    _write_lines(data / "in.txt", ["something else"] + texts[1:])
    with pytest.raises(ResumeError, match=r"cannot resume: input_sha256 changed") as info:
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, resume=True), embedder)
    assert "--force" in info.value.hint
    assert not (data / "out.npy").exists()
    assert (data / ".out.npy.partial").exists()  # the saved work is still there


def test_resume_refuses_a_changed_pooler(data, embedder, bert):
    _interrupted(data, embedder)
    mean = Embedder(str(bert), device="cpu", pooler="mean")
    with pytest.raises(ResumeError, match=r"cannot resume: pooler changed.*'cls' -> 'mean'"):
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, resume=True), mean)
    assert not (data / "out.npy").exists()


def test_resume_refuses_other_weights(data, embedder, bert, tmp_path):
    _interrupted(data, embedder)
    other = tiny_models.save_tiny_model("bert", tmp_path / "other-bert", seed=1)  # same config, new weights
    with pytest.raises(ResumeError, match=r"cannot resume: weights_sha256 changed"):
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, resume=True),
                   Embedder(str(other), device="cpu"))


def test_resume_refuses_a_changed_chunk_size(data, embedder):
    _interrupted(data, embedder)
    with pytest.raises(ResumeError, match=r"chunk_size"):
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=8, resume=True), embedder)


def test_resume_with_nothing_to_resume(data, embedder):
    with pytest.raises(ResumeError, match="nothing to resume"):
        embed_file(_job(data / "in.txt", data / "out.npy", resume=True), embedder)
    assert _names(data) == ["in.txt"]


def test_resume_with_the_partial_file_gone(data, embedder):
    _interrupted(data, embedder)
    (data / ".out.npy.partial").unlink()
    with pytest.raises(ResumeError, match="partial output .* is missing"):
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, resume=True), embedder)


# ---- output errors: nothing written -----------------------------------------------------------

@pytest.mark.parametrize("code, message", [
    (errno.ENOSPC, r"disk full: .* GB are needed in"),
    (errno.EIO, r"cannot write .*Input/output error"),
])
def test_failure_to_reserve_the_output_is_an_output_error_and_leaves_nothing(data, embedder, monkeypatch,
                                                                             code, message):
    def fail(fd, offset, length):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", fail, raising=False)
    with pytest.raises(OutputError, match=message):
        embed_file(_job(data / "in.txt", data / "out.npy"), embedder)
    assert _names(data) == ["in.txt"]


def test_output_directory_that_does_not_exist(data, embedder):
    out = data / "missing" / "out.npy"
    with pytest.raises(OutputError, match=r"output directory .*missing does not exist"):
        embed_file(_job(data / "in.txt", out), embedder)
    assert _names(data) == ["in.txt"]


def test_output_directory_not_writable_by_os_access(data, embedder, monkeypatch):
    target = data / "locked"
    target.mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path) == target and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(OutputError, match=r"output directory .*locked is not writable"):
        embed_file(_job(data / "in.txt", target / "out.npy"), embedder)
    assert _names(target) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through permission bits; covered by the os.access test")
def test_output_directory_mode_0o500(data, embedder):
    target = data / "locked"
    target.mkdir(mode=0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            embed_file(_job(data / "in.txt", target / "out.npy"), embedder)
    finally:
        target.chmod(0o700)
    assert _names(target) == []


def test_output_path_that_is_a_directory(data, embedder):
    (data / "out.npy").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        embed_file(_job(data / "in.txt", data / "out.npy", force=True), embedder)


def test_bad_input_fails_before_the_model_is_loaded(tmp_path, embedder):
    calls = []

    def load() -> Embedder:
        calls.append(1)
        return embedder

    (tmp_path / "in.txt").write_bytes(b"fine\nbad \xff\n")
    with pytest.raises(InputError, match=r"line 2, byte \d+: invalid UTF-8 \(file byte offset 9\)"):
        embed_file(_job(tmp_path / "in.txt", tmp_path / "out.npy"), load)
    assert calls == []
    assert _names(tmp_path) == ["in.txt"]


def test_stdin_needs_an_output_path(embedder):
    with pytest.raises(ConfigError, match="standard input needs an output path"):
        embed_file(_job("-", None), embedder)


def test_chunk_size_must_be_positive(data, embedder):
    with pytest.raises(ConfigError, match="chunk size must be positive"):
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=0), embedder)


# ---- the real command, killed mid-run ---------------------------------------------------------

SUB_LINES, SUB_CHUNK = 3000, 100  # 30 chunks; each one is flushed and fsynced


def _hfenc_command() -> list[str]:
    """The installed console script next to this interpreter, else on PATH, else python -m hfenc."""
    local = Path(sys.executable).parent / "hfenc"
    if local.is_file() and os.access(local, os.X_OK):
        return [str(local)]
    found = shutil.which("hfenc")
    return [found] if found else [sys.executable, "-m", "hfenc"]


def _sub_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HFENC_DEBUG"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    return env


def _embed_args(input_path: Path, output: Path, model: Path) -> list[str]:
    return ["embed", str(input_path), "-o", str(output), "-m", str(model), "--device", "cpu",
            "--chunk-size", str(SUB_CHUNK)]


@pytest.fixture(scope="module")
def sub_input(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sub_input")
    return _write_lines(folder / "in.txt", _sentences(SUB_LINES, seed=3, max_words=8))


class _Reference:
    """An uninterrupted run of the real command, started at once and awaited when needed (it runs
    beside the interrupted runs of the tests below, which saves a process start-up)."""

    def __init__(self, args: list[str], out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(_hfenc_command() + args, env=_sub_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.array: np.ndarray | None = None

    def get(self) -> np.ndarray:
        if self.array is None:
            _, err = self.proc.communicate(timeout=300)
            assert self.proc.returncode == 0, err
            self.array = np.load(self.out)
            assert self.array.shape == (SUB_LINES, WIDTH)
        return self.array


@pytest.fixture(scope="module")
def sub_reference(tmp_path_factory, sub_input, bert):
    out = tmp_path_factory.mktemp("sub_reference") / "ref.npy"
    reference = _Reference(_embed_args(sub_input, out, bert), out)
    yield reference
    if reference.proc.poll() is None:
        reference.proc.kill()
        reference.proc.communicate()


def _read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):  # not yet written (it is replaced atomically)
        return None


def _start_and_wait(args: list[str], state_path: Path, rows: int) -> subprocess.Popen:
    """Start the command; return once its resume state says at least `rows` rows are saved."""
    proc = subprocess.Popen(_hfenc_command() + args, env=_sub_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while True:
        state = _read_state(state_path)
        if state is not None and state["rows_done"] >= rows:
            return proc
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"hfenc ended (rc {proc.returncode}) before {rows} rows were saved; "
                        f"use more lines or a smaller chunk size. stderr: {err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail("hfenc did not reach the kill point in time")
        time.sleep(0.005)


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path, sub_input, sub_reference, bert):
    out = tmp_path / "out.npy"
    state_path = tmp_path / ".out.npy.resume.json"
    args = _embed_args(sub_input, out, bert)
    proc = _start_and_wait(args, state_path, 400)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    saved = json.loads(state_path.read_text())["rows_done"]
    assert 400 <= saved < SUB_LINES and saved % SUB_CHUNK == 0
    assert not out.exists() and not (tmp_path / "out.npy.json").exists()
    assert (tmp_path / ".out.npy.partial").is_file()

    done = subprocess.run(_hfenc_command() + args + ["--resume", "--json"], env=_sub_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["resumed_from"] == saved and summary["rows"] == SUB_LINES
    assert np.array_equal(np.load(out), sub_reference.get())
    meta = json.loads((tmp_path / "out.npy.json").read_text())
    assert meta["complete"] is True and meta["resumed_from_row"] == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy", "out.npy.json", "out.sha256.npy"]


def test_sigterm_exits_143_says_rows_saved_and_prints_the_resume_command(tmp_path, sub_input, bert):
    out = tmp_path / "out.npy"
    args = _embed_args(sub_input, out, bert)
    proc = _start_and_wait(args, tmp_path / ".out.npy.resume.json", 200)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 20  # prompt: at most the chunk in flight
    assert proc.returncode == 143, err  # 128 + SIGTERM, as a shell reports a terminated job
    assert "Traceback" not in err
    saved = json.loads((tmp_path / ".out.npy.resume.json").read_text())["rows_done"]
    assert f"Interrupted: {saved:,} of {SUB_LINES:,} rows are saved" in err and "Error" not in err
    assert not out.exists() and (tmp_path / ".out.npy.partial").is_file()
    # The hint repeats the command with --resume (running it is what the SIGKILL test does).
    hint = next(line for line in err.splitlines() if line.startswith("Hint: resume with: "))
    assert shlex.split(hint.removeprefix("Hint: resume with: ")) == ["hfenc", *args, "--resume"]


# ---- found in review: resume after --force, policies and weights in the fingerprint ----------

def test_an_interrupted_force_run_resumes_over_the_old_output(data, embedder, tmp_path):
    embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7), embedder)  # a finished output
    with pytest.raises(Interrupted):
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, force=True), embedder,
                   progress=stop_after(14))
    # The printed hint drops --force; resuming must not be refused because out.npy exists.
    result = embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, resume=True), embedder)
    assert result.resumed_from == 14
    reference = tmp_path / "reference.npy"
    embed_file(_job(data / "in.txt", reference, chunk_size=7), embedder)
    assert np.array_equal(np.load(data / "out.npy"), np.load(reference))


def test_resume_refuses_a_changed_overflow_policy_and_keeps_saved_rows(data, embedder):
    _interrupted(data, embedder)
    with pytest.raises(ResumeError, match="on_overflow changed"):
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, resume=True, on_overflow="error"),
                   embedder)
    assert (data / ".out.npy.partial").exists() and (data / ".out.npy.resume.json").exists()


def test_resume_refuses_changed_projection_weights(data, bert, tmp_path):
    weights = tmp_path / "proj.pt"
    torch.save({"weight": torch.zeros(8, WIDTH)}, weights)
    emb = Embedder(str(bert), device="cpu", proj="linear", dim=8, proj_weights=weights)
    with pytest.raises(Interrupted):
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7), emb, progress=stop_after(14))
    torch.save({"weight": torch.ones(8, WIDTH)}, weights)  # retrained at the same path
    retrained = Embedder(str(bert), device="cpu", proj="linear", dim=8, proj_weights=weights)
    with pytest.raises(ResumeError, match="weights_sha256 changed"):
        embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, resume=True), retrained)


def test_force_removes_side_files_this_run_does_not_write(tmp_path, embedder):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "alpha beta", "id": "a"}\n{"text": "gamma", "id": "b"}\n', encoding="utf-8")
    embed_file(_job(src, tmp_path / "out.npy", id_field="id"), embedder)
    assert (tmp_path / "out.ids.txt").read_text() == "a\nb\n"
    embed_file(_job(src, tmp_path / "out.npy", force=True), embedder)
    assert not (tmp_path / "out.ids.txt").exists()  # it would describe an output that is gone


def test_resume_progress_reports_this_runs_work_apart_from_saved_rows(data, embedder, texts):
    _interrupted(data, embedder)  # 14 rows saved
    seen = []
    embed_file(_job(data / "in.txt", data / "out.npy", chunk_size=7, resume=True), embedder,
               progress=seen.append)
    last = seen[-1]
    assert last.rows_done == 50 and last.resumed == 14
    # Each tiny word is one token, plus [CLS] and [SEP]: only rows 14..49 were tokenized now.
    assert last.tokens_done == sum(len(t.split()) + 2 for t in texts[14:])
