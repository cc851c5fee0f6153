"""hfenc embed --chunk-tokens N --ray (hfenc.jobs.ray_chunks) against the single-process chunked job.

The reference of every comparison is the single-process job on the same input (hfenc.jobs.local,
whose chunks tests/test_chunked.py checks against the model's own tokenizer): the --ray run must
have the same rows in the same numbering, the same provenance (OUT.chunks.tsv, Parquet columns),
ids and sidecar keys, vectors within test_ray's 1e-6 and document vectors within float32 rounding.
The input is two files, so a file's first chunk row comes from the other file's chunk count.

One Ray runtime of 2 CPUs serves the module (starting one costs ~20 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest

import ray  # a test dependency (pyproject's `test` extra): fail, never skip
import pyarrow.parquet as pq
from typer.testing import CliRunner

import ray_runtime as ray_runtime_module
import tiny_models
from refusals import refused_embed
from hfenc.cli import app
from hfenc.compute.chunking import ChunkOptions
from hfenc.compute.embedder import Embedder
from hfenc.errors import Interrupted, ResumeError
from hfenc.io.inputs import InputSpec
from hfenc.io.parquet import PROVENANCE
from hfenc.jobs import ray_pipeline
from hfenc.jobs.local import JobOptions, embed_file
from hfenc.jobs.ray_runner import MANIFEST, RayOptions, embed_ray

TOL = 1e-6  # as tests/test_ray.py: the engine's numbers move by an ulp with batch composition
WORKERS = RayOptions(workers=2)


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    yield from ray_runtime_module.for_module()


def _document(rng: random.Random) -> str:
    """Sentences of the tiny vocabulary, some paragraphs: 1 to ~120 tokens (chunks of 24 hold 22)."""
    sentences = [" ".join(rng.choice(tiny_models.WORDS) for _ in range(rng.randint(2, 12))) + "."
                 for _ in range(rng.randint(1, 10))]
    return "".join(s + ("\n\n" if rng.random() < 0.2 else " ") for s in sentences).strip()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two JSONL files of 70 and 50 records with ids (one empty record, one of a single word)."""
    root = tmp_path_factory.mktemp("ray_chunked")
    rng = random.Random(23)
    for name, n in (("a.jsonl", 70), ("b.jsonl", 50)):
        docs = [_document(rng) for _ in range(n)]
        if name == "a.jsonl":
            docs[3], docs[9] = "", tiny_models.WORDS[0]
        with open(root / name, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"id": f"{name[0]}-{i}", "text": t}) + "\n" for i, t in enumerate(docs))
    return root


def _spec(corpus: Path) -> InputSpec:
    return InputSpec(str(corpus / "a.jsonl"), more=(str(corpus / "b.jsonl"),), id_field="id")


def _local(bert: Path, corpus: Path, out: Path, chunking: ChunkOptions, **options):
    job = JobOptions(_spec(corpus), out, chunk_size=64, chunking=chunking, **options)
    return embed_file(job, lambda: Embedder(str(bert), device="cpu"))


def _ray(bert: Path, corpus: Path, out: Path, chunking: ChunkOptions, *, progress=None, **options):
    job = JobOptions(_spec(corpus), out, chunk_size=options.pop("chunk_size", 50), chunking=chunking, **options)
    return embed_ray(job, str(bert), {"device": "cpu"}, WORKERS, progress=progress)


def _tsv(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _same_keys(ray_meta: dict, local_meta: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        assert ray_meta.get(key) == local_meta.get(key), key


def test_npy_output_equals_the_local_chunked_run(bert, corpus, tmp_path):
    """Rows, their numbering and provenance (OUT.chunks.tsv), a chunk's id (its record's), the
    documents' vectors and the sidecar's chunking keys: the local path's."""
    chunking = ChunkOptions(24, 4, doc_vectors=True)
    local = _local(bert, corpus, tmp_path / "local.npy", chunking)
    result = _ray(bert, corpus, tmp_path / "ray.npy", chunking)
    assert result.rows == local.rows > 2 * local.documents and result.documents == local.documents == 120
    rows, expected = np.load(tmp_path / "ray.npy"), np.load(tmp_path / "local.npy")
    assert rows.shape == expected.shape and np.abs(rows - expected).max() <= TOL
    assert _tsv(tmp_path / "ray.chunks.tsv") == _tsv(tmp_path / "local.chunks.tsv")
    assert _tsv(tmp_path / "ray.ids.txt") == _tsv(tmp_path / "local.ids.txt")
    docs, local_docs = np.load(tmp_path / "ray.docs.npy"), np.load(tmp_path / "local.docs.npy")
    assert docs.shape == local_docs.shape == (120, tiny_models.HIDDEN) and docs.dtype == np.float32
    assert np.abs(docs - local_docs).max() <= 1e-5
    meta = json.loads((tmp_path / "ray.npy.json").read_text())
    _same_keys(meta, local.metadata, ("rows", "documents", "chunking", "truncated_rows"))
    assert (meta["chunks_file"], meta["docs_file"], meta["ids_file"]) == \
        ("ray.chunks.tsv", "ray.docs.npy", "ray.ids.txt")
    assert set(meta["files"]) == {"ray.npy", "ray.chunks.tsv", "ray.docs.npy", "ray.ids.txt", "ray.sha256.npy"}
    # the first file's chunks come first, then the second's, numbered on from them
    lines = [line.split("\t") for line in _tsv(tmp_path / "ray.chunks.tsv")[1:]]
    assert [int(f[0]) for f in lines] == list(range(result.rows)) and int(lines[-1][1]) == 119
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing hidden left


def test_a_shard_directory_equals_the_local_parquet_output(bert, corpus, tmp_path):
    """By sentences, ubinary codes with --keep-text: the shards hold the local Parquet output's
    columns (doc_id, the provenance, the chunk's text) and codes; _docs.parquet is its
    OUT.docs.parquet, made from the float32 rows although codes are stored."""
    chunking = ChunkOptions(24, 0, "sentences", doc_vectors=True)
    local = _local(bert, corpus, tmp_path / "local.parquet", chunking, keep_text=True, quantize="ubinary")
    result = _ray(bert, corpus, tmp_path / "shards", chunking, keep_text=True, quantize="ubinary")
    expected = pq.read_table(tmp_path / "local.parquet")
    table = pq.read_table(tmp_path / "shards")  # pyarrow skips _hfenc_manifest.json and _docs.parquet
    table = table.take(np.argsort(table.column("row").to_numpy(), kind="stable"))
    assert table.column_names == expected.column_names == ["row", "doc_id", *PROVENANCE, "text", "tokens", "truncated",
                                                                          "text_sha256", "embedding"]
    for name in ("row", "doc_id", *PROVENANCE, "text", "tokens", "truncated", "text_sha256", "embedding"):
        assert table.column(name).to_pylist() == expected.column(name).to_pylist(), name
    manifest = json.loads((tmp_path / "shards" / MANIFEST).read_text())
    _same_keys(manifest, local.metadata, ("rows", "documents", "chunking", "columns", "out_dtype", "quantization"))
    assert manifest["docs_file"] == "_docs.parquet" and "_docs.parquet" in manifest["files"]
    docs = pq.read_table(tmp_path / "shards" / "_docs.parquet")
    local_docs = pq.read_table(tmp_path / "local.docs.parquet")
    assert docs.schema.equals(local_docs.schema)
    for name in ("doc_row", "doc_id", "chunks"):
        assert docs.column(name).to_pylist() == local_docs.column(name).to_pylist(), name
    vectors = [t.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, tiny_models.HIDDEN)
               for t in (docs, local_docs)]
    assert np.abs(vectors[0] - vectors[1]).max() <= 1e-5
    assert result.rows == local.rows and result.documents == 120
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".", "shards"))) == ["shards"]


@pytest.mark.xfail(strict=False, reason="order-dependent since issue 25's changes: passes alone and with its module; after the whole suite's earlier modules the job finishes before the Ctrl-C lands (DID NOT RAISE Interrupted); under investigation")
def test_an_interrupted_chunked_run_resumes_only_with_its_chunk_settings(bert, corpus, tmp_path, monkeypatch):
    """Progress counts chunk rows; a resume with other chunk settings is refused naming
    `chunking`; with the same ones it picks up the saved chunks and equals the local run."""
    chunking = ChunkOptions(16, 2)
    local = _local(bert, corpus, tmp_path / "local.npy", chunking)
    out = tmp_path / "ray.npy"
    monkeypatch.setenv(ray_pipeline.DELAY_ENV, "0.3")  # batches slow enough to interrupt in the middle
    seen: list = []

    def ctrl_c(p) -> None:
        seen.append(p)
        if p.rows_done > 0 and len([q for q in seen if q.rows_done > 0]) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as info:
        _ray(bert, corpus, out, chunking, chunk_size=40, progress=ctrl_c)
    ray.shutdown()  # as tests/test_ray.py: a replica left after Ctrl-C may hold its CPUs
    ray_runtime_module.start()
    assert seen and {p.rows_total for p in seen} == {local.rows}  # progress counts chunks
    assert 0 < info.value.rows_done < local.rows
    monkeypatch.delenv(ray_pipeline.DELAY_ENV)
    for other in (ChunkOptions(16, 3), ChunkOptions(16, 2, "sentences"), ChunkOptions(16, 2, doc_vectors=True)):
        refusal = "^cannot resume: chunking[, a-z]* changed since the interrupted run"
        with pytest.raises(ResumeError, match=refusal) as refused:
            _ray(bert, corpus, out, other, chunk_size=40, resume=True)
        assert "\n" not in str(refused.value)
    result = _ray(bert, corpus, out, chunking, chunk_size=40, resume=True)
    assert result.resumed_from >= info.value.rows_done and result.rows == local.rows
    assert np.abs(np.load(out) - np.load(tmp_path / "local.npy")).max() <= TOL
    assert _tsv(tmp_path / "ray.chunks.tsv") == _tsv(tmp_path / "local.chunks.tsv")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("args,message", [
    (["--chunk-tokens", "16", "--late-chunking"], "--late-chunking runs in the single-process engine only; drop --ray"),
    (["--chunk-tokens", "1000"], "--chunk-tokens 1000 is more than the model takes (64)"),
    (["--chunk-tokens", "2"], "leaves no room for text"),
])
def test_what_ray_cannot_chunk_is_one_line_exit_1_and_nothing_written(args, message, bert, tmp_path):
    assert message in refused_embed(tmp_path, bert, "--ray", "--workers", "2", *args)


def test_cli_chunked_ray_job_says_chunks_of_records(bert, corpus, tmp_path):
    out = tmp_path / "cli.npy"
    done = CliRunner().invoke(app, ["embed", str(corpus / "a.jsonl"), "--id-field", "id", "-m", str(bert), "-o",
                                    str(out), "--ray", "--workers", "2", "--chunk-tokens", "24"])
    assert done.exit_code == 0, done.output
    rows = len(_tsv(tmp_path / "cli.chunks.tsv")) - 1
    assert np.load(out).shape == (rows, tiny_models.HIDDEN) and rows > 70
    assert f"{rows:,} chunks of 70 records" in done.stderr, done.stderr


def test_int8_ranges_are_calibrated_on_the_same_chunks_as_the_local_run(bert, corpus, tmp_path):
    chunking = ChunkOptions(24)
    local = _local(bert, corpus, tmp_path / "local.npy", chunking, quantize="int8")
    result = _ray(bert, corpus, tmp_path / "ray.npy", chunking, quantize="int8")
    mine, theirs = result.metadata["quantization"], local.metadata["quantization"]
    assert mine["calibration"] == theirs["calibration"] and theirs["calibration"]["of_rows"] == local.rows
    assert np.abs(np.array(mine["ranges"]) - np.array(theirs["ranges"])).max() <= TOL
