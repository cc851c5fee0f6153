"""`--backend openvino` (issue 14): the transformer converted to OpenVINO, the rest of the pipeline
torch's. Parity against torch (transformers) for every architecture and pooler, against
sentence-transformers on the real MiniLM, the load-time guards, and the refusals."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import tiny_models
from hfenc import Embedder
from hfenc.compute import openvino as openvino_backend
from hfenc.compute import precision
from hfenc.cli import app
from hfenc.compute.embedder import EmbedOptions
from hfenc.errors import ConfigError, ModelLoadError, UnknownChoiceError
from hfenc.model.poolers import get_pooler, get_pooler_class, pooler_names

runner = CliRunner()
# varied lengths, so every batch pads, and one row past the tiny models' 64 positions (truncated)
TEXTS = [" ".join(tiny_models.WORDS[i : i + n]) for i, n in [(0, 3), (5, 20), (30, 1), (40, 90), (7, 9), (60, 2)]]


def _pair(folder, **options):
    """(torch float32 rows, OpenVINO rows, the OpenVINO Embedder) for TEXTS."""
    want = Embedder(str(folder), device="cpu", dtype="float32", **options).encode(TEXTS)
    ov = Embedder(str(folder), device="cpu", backend="openvino", **{"dtype": "float32", **options})
    return want, ov.encode(TEXTS), ov


@pytest.mark.parametrize("model_type", tiny_models.MODEL_TYPES)
def test_every_architecture_runs_on_openvino_as_on_torch(tiny_model_dir, model_type):
    want, got, ov = _pair(tiny_model_dir(model_type))
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert ov.settings.backend == "openvino" and ov.describe()["conversion_min_cosine"] >= 0.99999
    assert isinstance(ov.encoder.transformer, openvino_backend.OpenVINOTransformer)


@pytest.mark.parametrize("pooler", [p for p in pooler_names() if not get_pooler_class(p).sparse])
def test_every_pooler_runs_on_openvino_as_on_torch(tiny_model_dir, pooler):
    """The pooler stays torch's; `cls` (BERT's pooling layer) needs the converted pooler_output."""
    want, got, ov = _pair(tiny_model_dir("bert"), pooler=pooler)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert ov.encoder.transformer.pooler_output == get_pooler(pooler).uses_pooler_output


@pytest.fixture(scope="module")
def st_minilm(minilm_dir, real_sentences):
    from sentence_transformers import SentenceTransformer

    texts = real_sentences[:400]
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    return texts, model.encode(texts, batch_size=32, convert_to_numpy=True).astype(np.float64)


def _cosines(rows: np.ndarray, want: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    return (rows * want).sum(1) / (np.linalg.norm(rows, axis=1) * np.linalg.norm(want, axis=1))


def test_minilm_float32_on_openvino_matches_sentence_transformers(minilm_dir, st_minilm, report):
    texts, want = st_minilm
    emb = Embedder(str(minilm_dir), device="cpu", dtype="float32", backend="openvino")
    cos = _cosines(emb.encode(texts), want)
    report(f"openvino float32 vs sentence-transformers, {len(texts)} real texts: min cosine {cos.min():.7f}")
    assert cos.min() >= 0.99999


def test_minilm_int8_keeps_every_row_close(minilm_dir, st_minilm, report):
    """int8 weights + per-token dynamic activations: min cosine >= 0.99 to sentence-transformers'
    float32 on real texts, and the guard's own figure is recorded."""
    texts, want = st_minilm
    emb = Embedder(str(minilm_dir), device="cpu", dtype="int8", backend="openvino")
    cos = _cosines(emb.encode(texts), want)
    report(f"openvino int8 vs sentence-transformers float32, {len(texts)} real texts: min cosine {cos.min():.5f}, "
           f"probe {emb.probe_min_cosine:.5f}")
    assert cos.min() >= precision.INT8_MIN_COSINE
    assert emb.settings.dtype == "int8" and emb.describe()["probe_min_cosine"] >= precision.INT8_MIN_COSINE
    assert emb.describe()["int8_group_size"] in openvino_backend.INT8_GROUPS
    assert emb.settings.batch_tokens == openvino_backend.BATCH_TOKENS[torch.int8]
    assert not emb.notes


def test_minilm_bfloat16_where_the_cpu_has_it(minilm_dir, st_minilm):
    texts, want = st_minilm
    emb = Embedder(str(minilm_dir), device="cpu", dtype="bfloat16", backend="openvino")
    if openvino_backend.native(torch.bfloat16):
        assert emb.settings.dtype == "bfloat16" and not emb.notes
        assert _cosines(emb.encode(texts), want).min() >= 0.9999
    else:  # computed in float32, and said so
        assert emb.settings.dtype == "float32" and "no native bfloat16" in emb.notes[0]
        assert _cosines(emb.encode(texts), want).min() >= 0.99999


def test_int8_takes_the_largest_group_that_keeps_the_guard(minilm_dir, monkeypatch):
    """Groups of channels per activation scale are tried largest (fastest) first: when the first
    misses the guard, a smaller one that holds it is used, and the sidecar says which."""
    monkeypatch.setattr(openvino_backend, "INT8_GROUPS", (128,))
    first = Embedder(str(minilm_dir), device="cpu", dtype="int8", backend="openvino")
    assert first.describe()["int8_group_size"] == 128
    monkeypatch.setattr(openvino_backend, "INT8_GROUPS", (128, 64, 32))
    monkeypatch.setattr(precision, "INT8_MIN_COSINE", first.probe_min_cosine + 1e-6)  # 128 just misses
    again = Embedder(str(minilm_dir), device="cpu", dtype="int8", backend="openvino")
    assert again.settings.int8_group_size in (64, 32) and again.probe_min_cosine >= precision.INT8_MIN_COSINE


def test_an_int8_group_size_is_checked_and_kept(tiny_model_dir):
    """What a resumed job, a Ray replica or a search passes: the recorded group, not a new choice."""
    folder = str(tiny_model_dir("bert"))
    assert Embedder(folder, device="cpu", dtype="int8", backend="openvino", int8_group_size=32).settings.int8_group_size == 32
    with pytest.raises(UnknownChoiceError, match="unknown int8 group size '100'; choose one of: 128, 32, 64"):
        EmbedOptions(dtype="int8", backend="openvino", int8_group_size=100).check()
    with pytest.raises(ConfigError, match="int8_group_size is for dtype=int8 on backend=openvino"):
        EmbedOptions(dtype="float32", backend="openvino", int8_group_size=64).check()


def test_auto_on_openvino_falls_back_to_float32_when_the_probe_misses(tiny_model_dir, monkeypatch):
    from hfenc.compute import engine

    monkeypatch.setenv(engine.AUTO_BF16_ENV, "1")
    monkeypatch.setattr(precision, "AUTO_BF16_MIN_COSINE", 1.01)  # no bf16 keeps it
    emb = Embedder(str(tiny_model_dir("bert")), device="cpu", backend="openvino")
    assert emb.settings.dtype == "float32"
    assert emb.settings.batch_tokens == openvino_backend.BATCH_TOKENS[torch.float32]
    if engine.cpu_has_native_bf16() and openvino_backend.native(torch.bfloat16):  # bf16 was tried and measured
        assert emb.probe_min_cosine is not None and emb.probe_min_cosine < 1.01
    want = Embedder(str(tiny_model_dir("bert")), device="cpu", dtype="float32").encode(TEXTS)
    np.testing.assert_allclose(emb.encode(TEXTS), want, atol=1e-5, rtol=0)


def test_the_int8_guard_refuses_with_the_measured_figure(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(precision, "INT8_MIN_COSINE", 1.01)  # nothing can keep it
    with pytest.raises(ConfigError, match=r"int8 keeps only min cosine \d\.\d{4} to float32 .* \(needs 1.01\)"):
        Embedder(str(tiny_model_dir("bert")), device="cpu", dtype="int8", backend="openvino")


def test_search_embeds_queries_on_the_index_backend(tmp_path, bert):
    from hfenc.io.sidecar import recorded_embedder

    index = Embedder(str(bert), device="cpu", dtype="float32", backend="openvino")
    again = recorded_embedder({**index.describe(), "model": str(bert)}, tmp_path)
    assert again.settings == index.settings
    assert isinstance(again.encoder.transformer, openvino_backend.OpenVINOTransformer)


def test_a_conversion_that_does_not_reproduce_torch_is_refused(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(openvino_backend, "CONVERSION_MIN_COSINE", 1.01)
    with pytest.raises(ModelLoadError, match="OpenVINO's conversion of this bert model does not reproduce torch") as info:
        Embedder(str(tiny_model_dir("bert")), device="cpu", backend="openvino")
    assert info.value.hint == "use backend=torch"


def test_a_model_openvino_cannot_trace_is_refused_by_name(tmp_path):
    folder = tiny_models.save_tiny_model("gemma3_text", tmp_path / "gemma")
    try:
        emb = Embedder(str(folder), device="cpu", dtype="float32", backend="openvino")
    except ModelLoadError as exc:  # OpenVINO 2026.4 cannot trace Gemma 3
        assert str(exc).startswith("OpenVINO cannot convert this gemma3_text model: ")
    else:  # a later OpenVINO that can must reproduce torch
        want = Embedder(str(folder), device="cpu", dtype="float32").encode(TEXTS)
        np.testing.assert_allclose(emb.encode(TEXTS), want, atol=1e-5, rtol=0)


def test_auto_on_openvino_is_float32_when_auto_bf16_is_off(tiny_model_dir):
    emb = Embedder(str(tiny_model_dir("bert")), device="auto", backend="openvino")  # HFENC_AUTO_BF16=0 here
    assert emb.settings.dtype == "float32" and emb.device.type == "cpu"
    assert emb.settings.batch_tokens == openvino_backend.BATCH_TOKENS[torch.float32]


def test_a_missing_extra_fails_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    with pytest.raises(ConfigError, match="backend=openvino needs OpenVINO") as info:
        EmbedOptions(backend="openvino").check()
    assert info.value.hint == "pip install 'hfenc[openvino]'"


def test_a_missing_nncf_fails_for_int8_only(monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)
    EmbedOptions(backend="openvino", dtype="float32").check()
    with pytest.raises(ConfigError, match="dtype=int8 needs NNCF"):
        EmbedOptions(backend="openvino", dtype="int8").check()


def test_int8_without_the_openvino_backend_is_refused():
    with pytest.raises(ConfigError, match="dtype=int8 runs on the OpenVINO backend only") as info:
        EmbedOptions(dtype="int8").check()
    assert "backend=openvino" in info.value.hint


def test_an_unknown_backend_lists_the_choices():
    with pytest.raises(UnknownChoiceError, match="unknown backend 'onnx'; choose one of: openvino, torch"):
        EmbedOptions(backend="onnx").check()


def test_openvino_refuses_a_gpu_device(monkeypatch):
    from hfenc.compute import embedder

    monkeypatch.setattr(embedder, "resolve_device", lambda name: torch.device("cuda"))
    with pytest.raises(ConfigError, match="backend=openvino runs on the CPU, not on cuda"):
        EmbedOptions(backend="openvino", device="cuda").check()


def _embed(*args: str):
    return runner.invoke(app, ["embed", *args])


def test_cli_int8_job_records_the_backend_and_prints_only_its_json(tmp_path, minilm_dir, real_sentences):
    """stdout is the summary alone (NNCF's tables and progress bars are kept off it); the sidecar
    records backend, dtype, OpenVINO's version and the guard's figure; the rows are the
    library's."""
    texts = real_sentences[:40]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "out.npy"
    result = _embed(str(tmp_path / "in.txt"), "-o", str(out), "--model", str(minilm_dir), "--backend", "openvino",
                    "--dtype", "int8", "--device", "cpu", "--json", "-q")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    summary = json.loads(result.stdout)
    assert summary["rows"] == 40
    assert "Weight compression" not in result.stderr and "nncf" not in result.stderr.lower()
    side = json.loads(out.with_name("out.npy.json").read_text())
    assert (side["backend"], side["dtype"], side["versions"]["openvino"]) == ("openvino", "int8", openvino_backend.version())
    assert side["probe_min_cosine"] >= precision.INT8_MIN_COSINE and side["conversion_min_cosine"] >= 0.99999
    want = Embedder(str(minilm_dir), device="cpu", dtype="int8", backend="openvino").encode(texts)
    np.testing.assert_allclose(np.load(out), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("options, needle, hint", [
    (["--dtype", "int8"], "--dtype int8 runs on the OpenVINO backend only", "--backend openvino"),
    (["--backend", "onnx"], "unknown backend 'onnx'; choose one of: openvino, torch", None),
])
def test_cli_refusals_are_one_line(tmp_path, bert, options, needle, hint):
    (tmp_path / "in.txt").write_text("the cat\nthe dog\n")
    out = tmp_path / "out.npy"
    result = _embed(str(tmp_path / "in.txt"), "-o", str(out), "--model", str(bert), *options)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    if hint:
        assert hint in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_resume_with_another_backend_is_refused(tmp_path, bert):
    from interrupts import stop_after
    from hfenc.errors import Interrupted, ResumeError
    from hfenc.io.inputs import InputSpec
    from hfenc.jobs.local import JobOptions, embed_file

    (tmp_path / "in.txt").write_text("\n".join(TEXTS * 5) + "\n")
    job = JobOptions(InputSpec(str(tmp_path / "in.txt")), tmp_path / "out.npy", chunk_size=7)
    with pytest.raises(Interrupted):
        embed_file(job, Embedder(str(bert), device="cpu"), progress=stop_after(14))
    resumed = JobOptions(InputSpec(str(tmp_path / "in.txt")), tmp_path / "out.npy", chunk_size=7, resume=True)
    with pytest.raises(ResumeError, match="backend: 'torch' -> 'openvino'"):
        embed_file(resumed, Embedder(str(bert), device="cpu", dtype="float32", backend="openvino"))


def test_an_interrupted_int8_job_resumes_to_the_rows_of_a_fresh_one(tmp_path, minilm_dir, real_sentences):
    """int8 rows depend a little on the batch a text is in, but chunks and batches are the same
    on resume: the resumed output equals a fresh run bit for bit."""
    from interrupts import stop_after
    from hfenc.errors import Interrupted, ResumeError
    from hfenc.io.inputs import InputSpec
    from hfenc.jobs.local import JobOptions, embed_file

    (tmp_path / "in.txt").write_text("\n".join(real_sentences[:60]) + "\n")
    emb = Embedder(str(minilm_dir), device="cpu", dtype="int8", backend="openvino")
    job = JobOptions(InputSpec(str(tmp_path / "in.txt")), tmp_path / "out.npy", chunk_size=20)
    with pytest.raises(Interrupted):
        embed_file(job, emb, progress=stop_after(20))
    # int8 rows follow the batch shape, so another token budget may not continue the job
    other = Embedder(str(minilm_dir), device="cpu", dtype="int8", backend="openvino", batch_tokens=512)
    with pytest.raises(ResumeError, match="batch_tokens"):
        embed_file(JobOptions(InputSpec(str(tmp_path / "in.txt")), tmp_path / "out.npy", chunk_size=20,
                              resume=True), other)
    result = embed_file(JobOptions(InputSpec(str(tmp_path / "in.txt")), tmp_path / "out.npy", chunk_size=20,
                                   resume=True), emb)
    assert result.resumed_from == 20
    embed_file(JobOptions(InputSpec(str(tmp_path / "in.txt")), tmp_path / "fresh.npy", chunk_size=20), emb)
    assert np.array_equal(np.load(tmp_path / "out.npy"), np.load(tmp_path / "fresh.npy"))


def test_a_sidecar_from_before_backends_reads_as_torch(bert):
    from dataclasses import asdict

    from hfenc.io.sidecar import recorded_settings

    settings = asdict(Embedder(str(bert), device="cpu").settings)
    del settings["backend"]
    assert recorded_settings(settings).backend == "torch"
