"""hfenc embed --ray with a sparse (SPLADE) model (issue 25 on hfenc.jobs.ray_runner): a shard
directory whose `embedding` column is the local Parquet output's list<struct<index, value>>, or one
assembled CSR .npz, each row equal to the single-process run's (same active indices, values within
1e-6); what the local path refuses for a sparse model refused in one line, writing nothing; an
interrupted job resumed (the fingerprint holds max_active_dims).

Ray runs are costly on 2 cores, so the module holds few: one runtime (tests/ray_runtime.py), two
jobs of the symmetric tiny SPLADE (a shard directory, stopped before its publication and resumed;
a .npz), one of the inference-free model's query side. The refusals start no Ray job (the CLI's
before the runtime is asked for anything; a library call that does not say the model is sparse
after the driver's probe).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import sparse
from typer.testing import CliRunner

import ray_runtime as ray_runtime_module
import tiny_models
from hfenc.cli import app
from hfenc.errors import ConfigError, Interrupted, ResumeError
from hfenc.io.inputs import InputSpec
from hfenc.io.parquet import sparse_rows, sparse_type
from hfenc.jobs import ray_runner
from hfenc.jobs.local import JobOptions
from hfenc.jobs.ray_runner import MANIFEST, RayOptions, embed_ray

TOL = 1e-6
ROWS = 90
CHUNK = 30  # rows per batch and per shard: a few of each, for both workers
RAY = ["--ray", "--workers", "2", "--chunk-size", str(CHUNK)]


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    yield from ray_runtime_module.for_module()


@pytest.fixture(scope="module")
def case(sparse_models, tmp_path_factory) -> dict:  # noqa: F811
    """A JSONL input with ids (one empty text), and the single-process outputs to match."""
    where = tmp_path_factory.mktemp("ray_sparse")
    rng = random.Random(25)
    texts = [" ".join(rng.choice(tiny_models.WORDS) for _ in range(rng.randint(1, 18))) for _ in range(ROWS)]
    texts[5] = ""
    src = where / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i:03d}", "text": t}) + "\n" for i, t in enumerate(texts)),
                   encoding="utf-8")
    models = {"splade": sparse_models["splade_max"], "free": sparse_models["inference_free"]}
    local = {}
    for name, model, out, extra in (("parquet", "splade", "local.parquet", []), ("npz", "splade", "local.npz", []),
                                    ("query", "free", "query.parquet", ["--query"])):
        _cli(src, models[model], where / out, "-q", *extra, ray=False)
        local[name] = where / out
    return {"src": src, "models": models, "local": local, "dir": where}


def _cli(src: Path, model: Path, out: Path, *extra: str, ray: bool = True):
    result = CliRunner().invoke(app, ["embed", str(src), "--id-field", "id", "-m", str(model), "--device", "cpu",
                                      "-o", str(out), *(RAY if ray else []), *extra])
    assert result.exit_code == 0, result.output
    return result


def _table(path: Path) -> tuple[pa.Table, dict]:
    """A Parquet output (a file or a shard directory) in row order, with its sidecar."""
    table = pq.read_table(path).sort_by("row")
    sidecar = json.loads((path / MANIFEST if path.is_dir() else path.with_name(path.name + ".json")).read_text())
    return table, sidecar


def _csr(rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, values) of SparseRows or a scipy CSR matrix."""
    values = rows.values if hasattr(rows, "values") else rows.data
    return np.asarray(rows.indptr, np.int64), np.asarray(rows.indices), np.asarray(values)


def _same_rows(ray_rows, local_rows) -> None:
    """The same active indices per row, float32 values within TOL."""
    assert ray_rows.shape == local_rows.shape
    (ray_ptr, ray_idx, ray_val), (ptr, idx, val) = _csr(ray_rows), _csr(local_rows)
    assert np.array_equal(ray_ptr, ptr) and np.array_equal(ray_idx, idx)
    assert ray_val.dtype == val.dtype == np.float32 and np.abs(ray_val - val).max() <= TOL


def _same_dataset(directory: Path, local: Path) -> dict:
    """A shard directory holds the local Parquet output's rows, ids and row hashes; its manifest."""
    (ray, manifest), (ref, sidecar) = _table(directory), _table(local)
    dim = sidecar["dim"]
    assert ray.schema.field("embedding").type == sparse_type(pa) == ref.schema.field("embedding").type
    assert ray.column("row").to_pylist() == list(range(ROWS))
    for column in ("id", "tokens", "truncated", "text_sha256"):
        assert ray.column(column).to_pylist() == ref.column(column).to_pylist(), column
    _same_rows(sparse_rows(ray.column("embedding"), dim), sparse_rows(ref.column("embedding"), dim))
    assert manifest["dim"] == dim == manifest["sparse"]["vocab_size"] and manifest["out_format"] == "parquet-dataset"
    assert manifest["sparse"] == sidecar["sparse"] and manifest["out_dtype"] == "float32"
    for key in ("side", "max_active_dims", "pooler", "weights_sha256"):
        assert manifest[key] == sidecar[key], key
    return manifest


def test_a_shard_directory_equals_the_local_parquet_and_resumes(case, monkeypatch):
    """Stopped after every shard was committed, before publication: a plain rerun is refused, a
    resume with another --max-active-dims is refused naming it, a resume finishes the job."""
    out = case["dir"] / "shards"
    job = JobOptions(InputSpec(str(case["src"]), id_field="id"), out, chunk_size=CHUNK, sparse=True)
    cluster = RayOptions(workers=2)

    def stop(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(ray_runner, "verify", stop)
    with pytest.raises(Interrupted):
        embed_ray(job, str(case["models"]["splade"]), {"device": "cpu"}, cluster)
    monkeypatch.undo()
    assert not out.exists() and (case["dir"] / ".shards.resume.json").exists()

    again = CliRunner().invoke(app, ["embed", str(case["src"]), "--id-field", "id", "-m", str(case["models"]["splade"]),
                                     "-o", str(out), *RAY])
    assert again.exit_code == 1 and "can be resumed" in again.stderr, again.output
    resume = JobOptions(job.input, out, chunk_size=CHUNK, sparse=True, resume=True)
    with pytest.raises(ResumeError, match="max_active_dims"):
        embed_ray(resume, str(case["models"]["splade"]), {"device": "cpu", "max_active_dims": 8}, cluster)

    result = embed_ray(resume, str(case["models"]["splade"]), {"device": "cpu"}, cluster)
    assert result.rows == ROWS and result.resumed_from == ROWS
    manifest = _same_dataset(out, case["local"]["parquet"])
    assert manifest["resumed_from_row"] == ROWS and sum(s["rows"] for s in manifest["shards"]) == ROWS
    assert sorted(p.name for p in case["dir"].iterdir() if p.name.startswith((".shards", "shards"))) == ["shards"]


def test_an_npz_equals_the_local_npz_and_its_side_files(case):
    out = case["dir"] / "ray.npz"
    done = _cli(case["src"], case["models"]["splade"], out, "--json", "-q")
    assert json.loads(done.stdout)["rows"] == ROWS
    local = case["local"]["npz"]
    _same_rows(sparse.load_npz(out), sparse.load_npz(local))
    assert (case["dir"] / "ray.ids.txt").read_text() == (case["dir"] / "local.ids.txt").read_text()
    assert np.array_equal(np.load(case["dir"] / "ray.sha256.npy"), np.load(case["dir"] / "local.sha256.npy"))
    meta, ref = (json.loads(p.with_name(p.name + ".json").read_text()) for p in (out, local))
    assert meta["out_format"] == ref["out_format"] == "npz" and meta["engine"] == "ray"
    assert meta["dim"] == ref["dim"] and meta["sparse"] == ref["sparse"] and meta["rows"] == ROWS
    assert meta["ids_file"] == "ray.ids.txt" and meta["hashes_file"] == "ray.sha256.npy"
    assert not any(p.name.startswith(".ray.") for p in case["dir"].iterdir())  # nothing of the job left


def test_the_query_side_of_an_inference_free_model_equals_the_local_run(case):
    out = case["dir"] / "query"
    _cli(case["src"], case["models"]["free"], out, "--query", "-q")
    manifest = _same_dataset(out, case["local"]["query"])
    assert manifest["side"] == manifest["sparse"]["side"] == "query" and manifest["sparse"]["route"] == "static"


def test_what_a_sparse_model_cannot_do_is_refused_in_one_line_writing_nothing(case, tiny_model_dir, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello world\nthe cat\n", encoding="utf-8")
    model = str(case["models"]["splade"])
    refusals = [
        (model, ["-o", str(tmp_path / "x.npy")], "not .npy"),
        (model, ["-o", str(tmp_path / "d"), "--quantize", "int8"], "--quantize int8 is for dense"),
        (model, ["-o", str(tmp_path / "d"), "--out-dtype", "float16"], "stores float32 values"),
        (model, ["-o", str(tmp_path / "d"), "--reuse", str(case["local"]["parquet"])], "--reuse is for dense"),
        (model, ["-o", str(tmp_path / "d"), "--chunk-tokens", "8", "--doc-vectors"], "--doc-vectors is for dense"),
        (model, ["-o", str(tmp_path / "d"), "--chunk-tokens", "8", "--late-chunking"], "--late-chunking"),
        (model, ["-o", str(tmp_path / "d"), "--dim", "8"], "dim is for dense"),
        (str(tiny_model_dir("bert")), ["-o", str(tmp_path / "x.npz")], "makes dense embeddings"),
        (model, ["-o", str(tmp_path / "x.npz"), "--keep-text"], "--keep-text needs Parquet"),  # as locally
        (str(tiny_model_dir("bert")), ["-o", str(tmp_path / "x.npy"), "--keep-text"], "--keep-text needs Parquet"),
    ]
    for model_dir, extra, words in refusals:
        refused = CliRunner().invoke(app, ["embed", str(src), "-m", model_dir, *RAY, *extra])
        lines = refused.stderr.strip().splitlines()
        assert refused.exit_code == 1 and words in lines[0] and lines[0].startswith("Error: "), refused.output
        assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("Hint: ")), refused.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"], extra
    # a caller that does not say the model is sparse (JobOptions.sparse None, as for a hub model):
    # refused once the probe has loaded it, before anything is claimed
    with pytest.raises(ConfigError, match="not .npy"):
        embed_ray(JobOptions(InputSpec(str(src)), tmp_path / "x.npy"), model, {"device": "cpu"}, RayOptions(workers=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]
