"""Sparse (SPLADE) outputs end to end (issue 25): `hfenc embed` to .npz and Parquet, read back by
SciPy and pyarrow (not hfenc's readers); resume after an interruption and after SIGKILL, to the bits
of an uninterrupted run; every dense-only option refused in one line with nothing written; `hfenc
info` and lock plans of a sparse model; the splade_* poolers on a plain fill-mask model folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import torch
from typer.testing import CliRunner

from hfenc.cli import app
from hfenc.compute.embedder import Embedder
from hfenc.errors import Interrupted
from hfenc.io.inputs import InputSpec
from hfenc.jobs.local import JobOptions, embed_file
from hfenc.model.encoder import HFTextEncoder
from sparse_models import TEXTS, save_tiny_mlm, st_reference

ROWS = 120
CHUNK = 16  # rows per saved chunk: a run has several


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sparse_corpus") / "docs.txt"
    texts = [TEXTS[i % len(TEXTS)] + (f" {TEXTS[(i * 7) % len(TEXTS)]}" if i % 3 else "") for i in range(ROWS)]
    path.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _embed(args: list[str]) -> object:
    return CliRunner().invoke(app, ["embed", *args, "--device", "cpu", "-q"])


def _parquet_csr(path: Path, dim: int) -> sp.csr_matrix:
    """The embedding column read with pyarrow alone."""
    rows = pq.read_table(path).column("embedding").to_pylist()
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = [e["index"] for r in rows for e in r]
    values = [e["value"] for r in rows for e in r]
    return sp.csr_matrix((np.array(values, np.float32), np.array(indices, np.int32), indptr), shape=(len(rows), dim))


def _same(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return a.shape == b.shape and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices) \
        and np.array_equal(a.data, b.data)


@pytest.mark.parametrize("name, side", [("splade_max", None), ("inference_free", "query"),
                                        ("inference_free", "document")])
def test_npz_and_parquet_hold_the_rows_of_sentence_transformers(sparse_models, corpus, tmp_path, name, side):
    model = sparse_models[name]
    flag = [f"--{side}"] if side else []
    for out in ("out.npz", "out.parquet"):
        result = _embed([str(corpus), "-m", str(model), "-o", str(tmp_path / out), "--chunk-size", str(CHUNK), *flag])
        assert result.exit_code == 0, result.output
    want = st_reference(model, _lines(corpus), side)  # dense (n, V), computed by sentence-transformers
    npz = sp.load_npz(tmp_path / "out.npz")
    assert npz.shape == want.shape and npz.indices.dtype == np.int32 and npz.data.dtype == np.float32
    assert (np.diff(npz.indptr) == (want != 0).sum(1)).all()  # the same active dimensions
    np.testing.assert_allclose(npz.toarray(), want, atol=1e-5, rtol=0)
    assert _same(_parquet_csr(tmp_path / "out.parquet", want.shape[1]), npz)  # the same rows, bit for bit
    sidecar = json.loads((tmp_path / "out.npz.json").read_text())
    assert sidecar["dim"] == want.shape[1] and sidecar["sparse"]["vocab_size"] == want.shape[1]
    assert sidecar["side"] == side and sidecar["sparse"]["route"] == ("static" if side == "query" and name ==
                                                                      "inference_free" else "splade")
    assert set(sidecar["files"]) == {"out.npz", "out.sha256.npy"}
    meta = json.loads(pq.read_schema(tmp_path / "out.parquet").metadata[b"hfenc"])
    assert meta["sparse"]["vocab_size"] == want.shape[1]


def test_a_sparse_model_writes_npz_by_default(sparse_models, corpus, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("the cat\nthe dog\n", encoding="utf-8")
    assert _embed([str(src), "-m", str(sparse_models["splade_max"])]).exit_code == 0
    assert sp.load_npz(tmp_path / "in.npz").shape[0] == 2 and not (tmp_path / "in.npy").exists()


def _job(corpus: Path, out: Path, resume: bool = False) -> JobOptions:
    return JobOptions(InputSpec(str(corpus)), out, resume=resume, chunk_size=CHUNK, sparse=True)


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_an_interrupted_sparse_run_resumes_to_the_bits_of_an_uninterrupted_one(sparse_models, corpus, tmp_path,
                                                                                 suffix):
    embedder = Embedder(str(sparse_models["splade_sum"]), device="cpu")
    whole = tmp_path / f"whole{suffix}"
    embed_file(_job(corpus, whole), embedder)
    cut = tmp_path / f"cut{suffix}"

    def stop(p) -> None:
        if p.rows_done > ROWS // 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as info:
        embed_file(_job(corpus, cut), embedder, progress=stop)
    assert 0 < info.value.rows_done < ROWS and not cut.exists()
    result = embed_file(_job(corpus, cut, resume=True), embedder)
    assert result.resumed_from == info.value.rows_done
    read = sp.load_npz if suffix == ".npz" else (lambda p: _parquet_csr(p, embedder.dim))
    assert _same(read(cut), read(whole))


def test_a_sparse_run_killed_mid_job_resumes_to_the_same_bits(sparse_models, corpus, tmp_path):
    model = str(sparse_models["splade_max"])
    whole, cut = tmp_path / "whole.npz", tmp_path / "cut.npz"
    base = [sys.executable, "-m", "hfenc", "embed", str(corpus), "-m", model, "--chunk-size", str(CHUNK),
            "--device", "cpu", "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    assert subprocess.run([*base, "-o", str(whole)], env=env).returncode == 0
    for point in ("chunk-saved:3", "finish-flushed", "publishing"):
        killed = subprocess.run([*base, "-o", str(cut)], env={**env, "HFENC_FAULT_AT": point})
        assert killed.returncode == -9 and not cut.exists(), point
        assert subprocess.run([*base, "-o", str(cut), "--resume"], env=env).returncode == 0, point
        assert _same(sp.load_npz(cut), sp.load_npz(whole)), point
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], point
        for p in (cut, cut.with_name("cut.npz.json"), cut.with_name("cut.sha256.npy")):
            p.unlink()


REFUSALS = [
    (["--quantize", "int8"], "--quantize int8 is for dense embeddings"),
    (["--out-dtype", "float16"], "a sparse output stores float32 values"),
    (["--dim", "8"], "dim is for dense embeddings"),
    (["--truncate-dim", "8"], "truncate_dim is for dense embeddings"),
    (["--normalize"], "normalize is for dense embeddings"),
    (["--proj", "linear", "--dim", "8", "--seed", "1"], "linear is for dense embeddings"),
    (["--backend", "openvino"], "openvino is for dense embeddings"),
    (["--pooler", "mean"], "pooler 'mean' makes dense vectors"),
    (["--max-active-dims", "0"], "max-active-dims 0 must be a positive number"),
    (["--chunk-tokens", "16", "--late-chunking"], "--late-chunking is for dense models"),
    (["--chunk-tokens", "16", "--doc-vectors"], "--doc-vectors is for dense models"),
    (["--reuse", "old.npz"], "--reuse is for dense outputs"),
]


@pytest.mark.parametrize("args, needle", REFUSALS, ids=[a[0] for a, _ in REFUSALS])
def test_dense_only_options_are_refused_for_a_sparse_model(sparse_models, tmp_path, args, needle):
    src = tmp_path / "in.txt"
    src.write_text("the cat\n", encoding="utf-8")
    (tmp_path / "old.npz").write_bytes(b"")
    result = _embed([str(src), "-m", str(sparse_models["splade_max"]), "-o", str(tmp_path / "out.npz"), *args])
    assert result.exit_code == 1, result.output
    assert needle in result.stderr and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "old.npz"]  # nothing written


@pytest.mark.parametrize("model, args, needle", [
    ("splade_max", ["-o", "out.npy"], "rows go to .npz (SciPy CSR) or .parquet, not .npy"),
    ("inference_free", ["-o", "out.npz"], "embeds queries and documents differently: choose a side"),
    ("dense", ["-o", "out.npz"], "a .npz output holds sparse rows; this model makes dense embeddings"),
    ("dense", ["-o", "out.npy", "--query"], "side and max_active_dims are for sparse (SPLADE) models"),
])
def test_format_and_side_mismatches_are_refused(sparse_models, tiny_model_dir, tmp_path, model, args, needle):
    src = tmp_path / "in.txt"
    src.write_text("the cat\n", encoding="utf-8")
    folder = tiny_model_dir("bert") if model == "dense" else sparse_models[model]
    args = [a if not a.startswith("out.") else str(tmp_path / a) for a in args]
    result = _embed([str(src), "-m", str(folder), *args])
    assert result.exit_code == 1 and needle in result.stderr, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_both_sides_at_once_is_a_usage_error(sparse_models, tmp_path):
    result = _embed(["-t", "x", "-m", str(sparse_models["splade_max"]), "-o", str(tmp_path / "o.npz"),
                     "--query", "--document"])
    assert result.exit_code == 2 and "not both" in result.output


def test_info_shows_the_vocabulary_pooling_and_sides(sparse_models):
    result = CliRunner().invoke(app, ["info", str(sparse_models["inference_free"]), "--json"])
    assert result.exit_code == 0, result.output
    sparse = json.loads(result.stdout)["sparse"]
    assert sparse["vocabulary"] > 0 and sparse["asymmetric"] is True and sparse["similarity"] == "dot"
    assert "SparseStaticEmbedding" in sparse["query_side"]
    assert "SPLADE max, relu over" in sparse["document_side"]


def test_the_lock_plan_of_a_sparse_tower_covers_every_parameter_once(sparse_models):
    encoder = HFTextEncoder(str(sparse_models["splade_max"]))
    plan = encoder.lock(1)
    names = [p for g in plan.groups for p in g.params]
    assert sorted(names) == sorted(n for n, _ in encoder.named_parameters())
    assert len(names) == len(set(names))
    head = next(g for g in plan.groups if g.name == "mlm_head")
    assert all(encoder.get_parameter(p).requires_grad for p in head.params)  # the head trains
    blocks = [g for g in plan.groups if g.kind == "block"]
    assert [plan.state(g) for g in blocks] == ["frozen"] * (len(blocks) - 1) + ["trainable"]
    assert plan == encoder.lock(1)  # a value: applying again changes nothing


def test_a_splade_pooler_on_a_plain_fill_mask_folder_is_sentence_transformers_splade(sparse_models, tmp_path):
    mlm = save_tiny_mlm(tmp_path / "mlm")
    rows = Embedder(str(mlm), pooler="splade_max", device="cpu").encode(TEXTS).to_dense()
    np.testing.assert_allclose(rows, st_reference(sparse_models["splade_max"], TEXTS, None), atol=1e-5, rtol=0)
    tower = HFTextEncoder(str(mlm), pooler_type="splade_sum")
    assert tower.sparse and tower.output_dim == tower.config.vocab_size


def test_sparse_rows_do_not_depend_on_the_batch_they_run_in(sparse_models):
    folder = str(sparse_models["splade_sum"])
    small = Embedder(folder, device="cpu", batch_tokens=40).encode(TEXTS).to_dense()
    large = Embedder(folder, device="cpu", batch_tokens=100_000).encode(TEXTS).to_dense()
    np.testing.assert_allclose(small, large, atol=1e-5, rtol=0)
    assert ((small != 0) == (large != 0)).all()


def test_max_active_dims_keeps_the_largest_values(sparse_models):
    full = Embedder(str(sparse_models["splade_max"]), device="cpu").encode(TEXTS).to_dense()
    pruned = Embedder(str(sparse_models["splade_max"]), device="cpu", max_active_dims=5).encode(TEXTS)
    assert (pruned.counts() <= 5).all()
    for row, (indices, values) in zip(full, (pruned.row(i) for i in range(len(pruned)))):
        assert np.array_equal(values, row[indices])  # kept values unchanged
        if len(indices):
            assert values.min() >= np.sort(row)[::-1][min(5, (row != 0).sum()) - 1]
    assert torch.__version__  # torch.topk is the rule: tests/test_sparse_parity.py compares with ST
