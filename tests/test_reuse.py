"""`embed --reuse OLD` (issue 24) and the per-row provenance every output now records.

Expected values are computed independently: hashes with hashlib, token counts with the model's
own Hugging Face tokenizer, reused rows compared with OLD's stored rows located by their text
(a dict built here), counts of reused / embedded / dropped rows from the two texts lists.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import transformers
from typer.testing import CliRunner

import tiny_models
from interrupts import stop_after
from hfenc import Embedder
from hfenc.cli import app
from hfenc.compute.chunking import ChunkOptions
from hfenc.errors import ConfigError, InputError, Interrupted
from hfenc.io.inputs import InputSpec
from hfenc.jobs.local import JobOptions, embed_file

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(tiny_models.WORDS) for _ in range(rng.randint(2, 14))) for _ in range(n)]


def _edit(old: list[str], seed: int = 1) -> list[str]:
    """About 10% of the lines changed, 5 deleted, 6 added (a few of them in the middle)."""
    rng = random.Random(seed)
    new = [t + " new" if rng.random() < 0.1 else t for t in old]
    del new[3:8]
    return new[:20] + ["brand new text one", "brand new text two", "brand new text one"] + new[20:] + \
        ["added at the end %s" % w for w in ("red", "blue", "green")]


def _write(path: Path, texts: list[str], ids: bool = False) -> Path:
    if ids:
        path.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    else:
        path.write_text("".join(t + "\n" for t in texts))
    return path


def _job(src: Path, out: Path, **kw) -> JobOptions:
    spec = kw.pop("spec", {})
    return JobOptions(InputSpec(str(src), **spec), out, **kw)


def _stored(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    column = pq.read_table(path).column("embedding").combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)


def _check_reuse(old_texts, new_texts, old_rows, new_rows, record, *, ids=None) -> None:
    """Every new row whose text OLD has is OLD's row for that text, bit for bit; the counts
    and the dropped rows are what the two text lists say."""
    first = {}
    for i, t in enumerate(old_texts):
        first.setdefault(t, i)
    reused = [i for i, t in enumerate(new_texts) if t in first]
    for i in reused:
        assert np.array_equal(new_rows[i], old_rows[first[new_texts[i]]]), i
    dropped = [i for i, t in enumerate(old_texts) if t not in set(new_texts)]
    assert record["reused"] == len(reused) and record["embedded"] == len(new_texts) - len(reused)
    assert record["dropped"] == len(dropped) and [d["row"] for d in record["dropped_rows"]] == dropped
    if ids is not None:
        assert [d["id"] for d in record["dropped_rows"]] == [ids[i] for i in dropped]


@pytest.fixture(scope="module")
def tiny(bert) -> Embedder:
    return Embedder(bert, pooler="mean", device="cpu", dtype="float32")


@pytest.fixture()
def pair(tmp_path):
    old = _texts(60)
    new = _edit(old)
    return tmp_path, old, new


@pytest.mark.parametrize("old_fmt,new_fmt", [("npy", "npy"), ("parquet", "parquet"), ("npy", "parquet"),
                                             ("parquet", "npy")])
def test_reused_rows_are_old_rows_bit_for_bit_and_the_rest_agree_with_a_fresh_run(pair, tiny, old_fmt, new_fmt):
    tmp, old, new = pair
    _write(tmp / "old.txt", old)
    _write(tmp / "new.txt", new)
    embed_file(_job(tmp / "old.txt", tmp / f"old.{old_fmt}", chunk_size=16), tiny)
    result = embed_file(_job(tmp / "new.txt", tmp / f"new.{new_fmt}", reuse=tmp / f"old.{old_fmt}", chunk_size=16),
                        tiny)
    fresh = embed_file(_job(tmp / "new.txt", tmp / "fresh.npy"), tiny)
    got = _stored(tmp / f"new.{new_fmt}")
    _check_reuse(old, new, _stored(tmp / f"old.{old_fmt}"), got, result.reuse)
    assert result.metadata["reuse"] == result.reuse and result.reuse["from"] == str(tmp / f"old.{old_fmt}")
    want = np.load(fresh.output)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99999


def test_parquet_rows_record_their_tokens_truncation_and_text_hash(tmp_path, bert):
    texts = _texts(30) + [" ".join(["word"] * 200)]  # the last is longer than the tiny model's 64 tokens
    _write(tmp_path / "in.txt", texts)
    embed_file(_job(tmp_path / "in.txt", tmp_path / "out.parquet"), Embedder(bert, device="cpu"))
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("text_sha256").to_pylist() == [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert)
    full = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    assert table.column("tokens").to_pylist() == [min(n, tiny_models.MAX_LEN) for n in full]
    assert table.column("truncated").to_pylist() == [n > tiny_models.MAX_LEN for n in full]
    names = table.column_names
    assert names.index("tokens") < names.index("embedding")


def test_npy_outputs_have_their_text_hashes_beside_them(tmp_path, tiny):
    texts = _texts(20) + ["caf\u00e9 \U0001f600"]
    _write(tmp_path / "in.txt", texts)
    result = embed_file(_job(tmp_path / "in.txt", tmp_path / "out.npy"), tiny)
    assert result.metadata["hashes_file"] == "out.sha256.npy"
    hashes = np.load(tmp_path / "out.sha256.npy")
    assert [bytes(h) for h in hashes] == [hashlib.sha256(t.encode()).digest() for t in texts]
    files = result.metadata["files"]
    assert files["out.sha256.npy"]["sha256"] == "sha256:" + hashlib.sha256((tmp_path / "out.sha256.npy")
                                                                             .read_bytes()).hexdigest()
    assert files["out.npy"]["sha256"] == "sha256:" + hashlib.sha256((tmp_path / "out.npy").read_bytes()).hexdigest()


def test_dropped_rows_are_named_by_their_ids(tmp_path, tiny):
    old = _texts(40)
    new = _edit(old)
    _write(tmp_path / "old.jsonl", old, ids=True)
    _write(tmp_path / "new.jsonl", new, ids=True)
    embed_file(_job(tmp_path / "old.jsonl", tmp_path / "old.parquet", spec={"id_field": "id"}), tiny)
    result = embed_file(_job(tmp_path / "new.jsonl", tmp_path / "new.npy", spec={"id_field": "id"},
                             reuse=tmp_path / "old.parquet"), tiny)
    _check_reuse(old, new, _stored(tmp_path / "old.parquet"), np.load(tmp_path / "new.npy"), result.reuse,
                 ids=[f"doc-{i}" for i in range(len(old))])


@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_quantized_codes_are_reused_with_the_old_ranges(pair, tiny, precision):
    tmp, old, new = pair
    _write(tmp / "old.txt", old)
    _write(tmp / "new.txt", new)
    a = embed_file(_job(tmp / "old.txt", tmp / "old.npy", quantize=precision), tiny)
    b = embed_file(_job(tmp / "new.txt", tmp / "new.npy", quantize=precision, reuse=tmp / "old.npy"), tiny)
    _check_reuse(old, new, np.load(tmp / "old.npy"), np.load(tmp / "new.npy"), b.reuse)
    assert b.metadata["quantization"]["ranges"] == a.metadata["quantization"]["ranges"]
    if precision == "int8":
        assert b.metadata["quantization"]["calibration"]["method"] == "reuse"


def test_chunks_are_reused_by_their_text(tmp_path, tiny):
    old = [" ".join(_texts(8, seed=s)) for s in range(12)]  # records of several chunks each
    new = [old[0] + " the end", *old[1:10], "a short new record"]
    _write(tmp_path / "old.txt", old)
    _write(tmp_path / "new.txt", new)
    chunking = ChunkOptions(24, 4)
    embed_file(_job(tmp_path / "old.txt", tmp_path / "old.parquet", chunking=chunking, keep_text=True), tiny)
    result = embed_file(_job(tmp_path / "new.txt", tmp_path / "new.parquet", chunking=chunking, keep_text=True,
                             reuse=tmp_path / "old.parquet"), tiny)
    old_t, new_t = (pq.read_table(tmp_path / f"{n}.parquet") for n in ("old", "new"))
    _check_reuse(old_t.column("text").to_pylist(), new_t.column("text").to_pylist(),
                 _stored(tmp_path / "old.parquet"), _stored(tmp_path / "new.parquet"), result.reuse)
    assert result.reuse["reused"] > result.reuse["embedded"] > 0


def test_late_chunking_is_refused(tmp_path, tiny):
    _write(tmp_path / "in.txt", _texts(5))
    embed_file(_job(tmp_path / "in.txt", tmp_path / "old.npy"), tiny)
    with pytest.raises(ConfigError, match="late chunk"):
        embed_file(_job(tmp_path / "in.txt", tmp_path / "new.npy", chunking=ChunkOptions(16, 0, late=True),
                        reuse=tmp_path / "old.npy"), tiny)


def test_resume_with_reuse_gives_the_uninterrupted_output(pair, tiny):
    tmp, old, new = pair
    _write(tmp / "old.txt", old)
    _write(tmp / "new.txt", new)
    embed_file(_job(tmp / "old.txt", tmp / "old.npy"), tiny)
    embed_file(_job(tmp / "new.txt", tmp / "whole.npy", reuse=tmp / "old.npy", chunk_size=10), tiny)
    with pytest.raises(Interrupted):
        embed_file(_job(tmp / "new.txt", tmp / "new.npy", reuse=tmp / "old.npy", chunk_size=10), tiny,
                   progress=stop_after(25))
    result = embed_file(_job(tmp / "new.txt", tmp / "new.npy", reuse=tmp / "old.npy", chunk_size=10,
                             resume=True), tiny)
    assert result.resumed_from > 0
    assert np.array_equal(np.load(tmp / "new.npy"), np.load(tmp / "whole.npy"))
    _check_reuse(old, new, np.load(tmp / "old.npy"), np.load(tmp / "new.npy"), result.reuse)


def test_the_output_itself_is_reused_in_place_without_force(tmp_path, tiny):
    old = _texts(30)
    new = _edit(old)
    _write(tmp_path / "docs.txt", old)
    embed_file(_job(tmp_path / "docs.txt", tmp_path / "docs.npy"), tiny)
    before = np.load(tmp_path / "docs.npy")
    _write(tmp_path / "docs.txt", new)
    result = embed_file(_job(tmp_path / "docs.txt", tmp_path / "docs.npy", reuse=tmp_path / "docs.npy"), tiny)
    _check_reuse(old, new, before, np.load(tmp_path / "docs.npy"), result.reuse)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.npy", "docs.npy.json", "docs.sha256.npy", "docs.txt"]


def _refused(tmp_path: Path, model: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "new.txt"), "-m", str(model), "-o",
                                      str(tmp_path / "new.npy"), "-q", "--device", "cpu", *args])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("new.", ".new.")) and p.name != "new.txt"]
    return errors[0]


def _args(**options: str) -> list[str]:
    return [x for name, value in options.items() for x in (f"--{name.replace('_', '-')}", value)]


@pytest.mark.parametrize("old,new,named", [
    ({}, {"dtype": "bfloat16"}, "dtype"),
    ({}, {"prompt": "query: "}, "prompt"),
    ({}, {"out_dtype": "float16"}, "stored"),
    ({}, {"quantize": "ubinary"}, "stored"),
    ({}, {"max_length": "16"}, "max_length"),
    ({}, {"pooler": "cls"}, "pooler"),
    ({"quantize": "int8"}, {"quantize": "uint8"}, "stored"),
    ({}, {"backend": "openvino"}, "backend"),
])
def test_another_fingerprint_is_refused_in_one_line(tmp_path, bert, old, new, named):
    _write(tmp_path / "old.txt", _texts(6))
    _write(tmp_path / "new.txt", _texts(7))
    base = {"pooler": "mean", "dtype": "float32"}
    done = CliRunner().invoke(app, ["embed", str(tmp_path / "old.txt"), "-m", str(bert), "-o",
                                    str(tmp_path / "old.npy"), "-q", "--device", "cpu", *_args(**{**base, **old})])
    assert done.exit_code == 0, done.output
    line = _refused(tmp_path, bert, *_args(**{**base, **new}), "--reuse", str(tmp_path / "old.npy"))
    assert "nothing can be reused" in line and named in line


def test_another_model_is_refused(tmp_path, tiny_model_dir, bert):
    _write(tmp_path / "old.txt", _texts(6))
    _write(tmp_path / "new.txt", _texts(6))
    embed_file(_job(tmp_path / "old.txt", tmp_path / "old.npy"), Embedder(bert, device="cpu", dtype="float32"))
    line = _refused(tmp_path, tiny_model_dir("roberta"), "--dtype", "float32", "--reuse", str(tmp_path / "old.npy"))
    assert "config_sha256" in line or "weights_sha256" in line


def test_an_edited_old_sidecar_is_refused(tmp_path, tiny):
    _write(tmp_path / "old.txt", _texts(6))
    _write(tmp_path / "new.txt", _texts(6))
    embed_file(_job(tmp_path / "old.txt", tmp_path / "old.npy"), tiny)
    sidecar = json.loads((tmp_path / "old.npy.json").read_text())
    sidecar["prompt"] = "query: "  # its rows were not made with it
    (tmp_path / "old.npy.json").write_text(json.dumps(sidecar))
    with pytest.raises(InputError, match="edited after hfenc wrote it"):
        embed_file(_job(tmp_path / "new.txt", tmp_path / "new.npy", reuse=tmp_path / "old.npy"), tiny)


def test_an_output_without_hashes_is_refused(tmp_path, tiny):
    _write(tmp_path / "old.txt", _texts(6))
    _write(tmp_path / "new.txt", _texts(6))
    embed_file(_job(tmp_path / "old.txt", tmp_path / "old.npy"), tiny)
    (tmp_path / "old.sha256.npy").unlink()  # as an hfenc before 0.2 left it
    with pytest.raises(InputError, match="records no row hashes"):
        embed_file(_job(tmp_path / "new.txt", tmp_path / "new.npy", reuse=tmp_path / "old.npy"), tiny)
    assert not (tmp_path / "new.npy").exists()


@pytest.mark.parametrize("bad", ["missing.npy", "old.txt"])
def test_a_reuse_path_that_is_no_output_is_refused(tmp_path, bert, bad):
    _write(tmp_path / "old.txt", _texts(3))
    _write(tmp_path / "new.txt", _texts(3))
    line = _refused(tmp_path, bert, "--reuse", str(tmp_path / bad))
    assert bad in line


def test_the_summary_says_what_was_reused(pair, bert):
    tmp, old, new = pair
    _write(tmp / "old.txt", old)
    _write(tmp / "new.txt", new)
    base = ["-m", str(bert), "--device", "cpu", "--dtype", "float32"]
    assert CliRunner().invoke(app, ["embed", str(tmp / "old.txt"), "-o", str(tmp / "old.npy"), *base]).exit_code == 0
    result = CliRunner().invoke(app, ["embed", str(tmp / "new.txt"), "-o", str(tmp / "new.npy"), *base,
                                      "--reuse", str(tmp / "old.npy"), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["reuse"]
    line = next(x for x in result.stderr.splitlines() if x.startswith("Reused"))
    assert line.startswith(f"Reused {record['reused']:,} rows of {tmp / 'old.npy'}, embedded {record['embedded']:,}")
    assert f"{record['dropped']:,} rows of old.npy have no counterpart" in line


def test_a_run_killed_while_it_replaces_its_old_output_finishes_on_resume(tmp_path, bert):
    """`-o docs.npy --reuse docs.npy`, SIGKILLed after the old sidecar went and before the new files
    arrived: OLD is no longer readable, and --resume only has the publication left to do."""
    import os
    import subprocess
    import sys

    old, new = _texts(30), _edit(_texts(30))
    _write(tmp_path / "docs.txt", old)
    args = [sys.executable, "-m", "hfenc", "embed", str(tmp_path / "docs.txt"), "-o", str(tmp_path / "docs.npy"),
            "-m", str(bert), "--device", "cpu", "--dtype", "float32", "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(args, check=True, env=env)
    before = np.load(tmp_path / "docs.npy")
    kept = tmp_path / "before"  # a copy of the old output, for the uninterrupted run below
    kept.mkdir()
    for name in ("docs.npy", "docs.npy.json", "docs.sha256.npy"):
        (kept / name).write_bytes((tmp_path / name).read_bytes())
    _write(tmp_path / "docs.txt", new)
    killed = subprocess.run([*args, "--reuse", str(tmp_path / "docs.npy")],
                            env={**env, "HFENC_FAULT_AT": "old-sidecar-removed"})
    assert killed.returncode == -9
    assert not (tmp_path / "docs.npy.json").exists()  # the old metadata went first
    subprocess.run([*args, "--reuse", str(tmp_path / "docs.npy"), "--resume"], check=True, env=env)
    rows, meta = np.load(tmp_path / "docs.npy"), json.loads((tmp_path / "docs.npy.json").read_text())
    _check_reuse(old, new, before, rows, meta["reuse"])
    # the same bits as an uninterrupted run from the same old output
    whole = subprocess.run([*args[:5], "-o", str(tmp_path / "whole.npy"), *args[7:], "--reuse",
                            str(kept / "docs.npy")], env=env)
    assert whole.returncode == 0 and np.array_equal(np.load(tmp_path / "whole.npy"), rows)
