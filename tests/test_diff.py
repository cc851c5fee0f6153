"""`hfenc diff A B` and hfenc.compare.diff: per-row cosine, neighbour overlap, Spearman and the
rows that moved, against references written out here (full numpy matrices in float64, scipy's
spearmanr, sentence-transformers' dequantization, np.unpackbits), never hfenc.compare's code;
and the refusals of outputs that are not of one input, in one line.

Real outputs come from the tiny BERT (float32 and bfloat16 compute, .npy and .parquet, int8 and
binary, chunked); synthetic ones (written by hand with their sidecars) cover what embed cannot
make on demand: other block structures, ties, per-row text hashes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr  # an independent reference (the test extra installs scipy)
from sentence_transformers.util.quantization import _dequantize_embeddings
from typer.testing import CliRunner

from handmade import write_output

import hfenc.compare
from hfenc import Embedder
from hfenc.cli import app
from hfenc.compare import diff, draws
from hfenc.compute.chunking import ChunkOptions
from hfenc.errors import InputError
from hfenc.io.inputs import InputSpec
from hfenc.jobs.local import JobOptions, embed_file

runner = CliRunner()
N = 300
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("HFENC_DEBUG", raising=False)


@pytest.fixture(scope="module")
def outs(tmp_path_factory, minilm_dir, real_sentences) -> Path:
    """300 real texts (JSONL, with ids) embedded by the real MiniLM in float32 and bfloat16, to
    .npy and .parquet, int8 and binary; and 50 other texts. (The tiny models' rows are nearly
    parallel, cosines ~0.99999: their neighbours and bits say little.)"""
    folder = tmp_path_factory.mktemp("diff")
    for name, texts, prefix in (("in", real_sentences[:N], "doc"), ("other", real_sentences[N:N + 50], "o")):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"text": t, "id": f"{prefix}{i}"}) + "\n"
                                                      for i, t in enumerate(texts)))
    # by name (the packaged copy, minilm_dir), so the sidecars record a name, not a long path;
    # max_length 64 keeps the six jobs quick
    f32 = Embedder(MINILM, device="cpu", max_length=64)
    bf16 = Embedder(MINILM, device="cpu", max_length=64, dtype="bfloat16")
    spec = InputSpec(str(folder / "in.jsonl"), id_field="id")
    for name, model, job in (("f32.npy", f32, {}), ("bf16.npy", bf16, {}), ("bf16.parquet", bf16, {}),
                             ("int8.npy", f32, {"quantize": "int8"}), ("binary.parquet", f32, {"quantize": "binary"})):
        embed_file(JobOptions(spec, folder / name, **job), model)
    embed_file(JobOptions(InputSpec(str(folder / "other.jsonl"), id_field="id"), folder / "other.npy"), f32)
    (folder / "bf16_is_bf16").write_text(str(bf16.settings.dtype == "bfloat16"))
    return folder


def _rows(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    column = pq.read_table(path).column("embedding").combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), -1)


def _cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = x.astype(np.float64), y.astype(np.float64)
    return (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def _all_cosines(x: np.ndarray) -> np.ndarray:
    """Every pair's cosine, in float64; rows of -1/+1 give whole-number products, so that equal
    Hamming distances stay exact ties."""
    x = x.astype(np.float64)
    norm = np.sqrt((x * x).sum(1))
    return (x @ x.T) / np.outer(norm, norm)


def _reference(x: np.ndarray, y: np.ndarray, sample: int, k: int, pairs: int, seed: int = 0) -> dict:
    """Overlap@k and Spearman from full float64 matrices, on the rows and pairs diff draws."""
    queries, first, other = draws(len(x), sample, pairs, seed)
    cos = [_all_cosines(v) for v in (x, y)]
    shared = []
    for q in queries:
        tops = []
        for c in cos:
            scores = c[q].copy()
            scores[q] = -np.inf
            tops.append(set(np.lexsort((np.arange(len(scores)), -scores))[:k].tolist()))  # ties: the lower row
        shared.append(len(tops[0] & tops[1]) / k)
    i = queries[first]
    rho = spearmanr(cos[0][i, other], cos[1][i, other]).statistic
    return {"mean": np.mean(shared), "min": np.min(shared), "spearman": rho}


# ---- the numbers ----------------------------------------------------------------------------

@pytest.mark.parametrize("a,b", [("f32.npy", "bf16.npy"), ("f32.npy", "bf16.parquet")])
def test_float32_vs_bf16_cosines_equal_numpy(outs, a, b):
    x, y = _rows(outs / a), _rows(outs / b)
    cos = _cosines(x, y)
    result = diff(outs / a, outs / b)
    assert result.rows == N and result.a.dim == result.b.dim == x.shape[1]
    assert result.a.stored == result.b.stored == "float32"
    assert result.cosine["min"] == pytest.approx(cos.min(), abs=1e-6)
    assert result.cosine["p1"] == pytest.approx(np.percentile(cos, 1), abs=1e-6)
    assert result.cosine["median"] == pytest.approx(np.median(cos), abs=1e-6)
    assert result.cosine["mean"] == pytest.approx(cos.mean(), abs=1e-6)
    if (outs / "bf16_is_bf16").read_text() == "True":  # a CPU without bf16 computes float32 (a warning)
        assert result.b.dtype == "bfloat16" and cos.min() < 1 - 1e-5
    ref = _reference(x, y, 1000, 10, 20000)
    assert result.overlap["mean"] == pytest.approx(ref["mean"], abs=1e-12)
    assert result.overlap["min"] == pytest.approx(ref["min"], abs=1e-12)
    assert result.spearman == pytest.approx(ref["spearman"], abs=1e-5)


def test_moved_rows_are_the_lowest_cosines_with_their_ids(outs):
    cos = _cosines(_rows(outs / "f32.npy"), _rows(outs / "bf16.npy"))
    result = diff(outs / "f32.npy", outs / "bf16.npy", top=7)
    want = np.lexsort((np.arange(N), cos))[:7]
    assert [m.row for m in result.moved] == want.tolist()
    assert [m.id for m in result.moved] == [f"doc{r}" for r in want]
    np.testing.assert_allclose([m.cosine for m in result.moved], cos[want], atol=1e-6)


def test_an_output_against_itself_is_identical(outs):
    result = diff(outs / "bf16.parquet", outs / "bf16.parquet", sample=50, pairs=500)
    assert result.cosine["min"] == pytest.approx(1.0, abs=1e-6)
    assert result.overlap == {"mean": 1.0, "min": 1.0}
    assert result.spearman == pytest.approx(1.0, abs=1e-12)
    assert result.sample == 50 and result.pairs == 500


@pytest.mark.parametrize("quantized", ["int8.npy", "binary.parquet"])
def test_a_quantized_output_against_float(outs, quantized):
    x = _rows(outs / "f32.npy")
    side = json.loads(pq.read_schema(outs / quantized).metadata[b"hfenc"]) if quantized.endswith("parquet") else \
        json.loads((outs / (quantized + ".json")).read_text())
    codes = _rows(outs / quantized)
    if quantized.startswith("int8"):
        ranges = np.asarray(side["quantization"]["ranges"])
        y = _dequantize_embeddings(codes.astype(int), "int8", ranges)
    else:  # binary: packbits(x > 0) - 128, bits read back as -1/+1
        y = np.unpackbits((codes.astype(np.int16) + 128).astype(np.uint8), axis=1)[:, :x.shape[1]] * 2.0 - 1
    cos = _cosines(x, y)
    result = diff(outs / "f32.npy", outs / quantized)
    assert result.b.stored == quantized.split(".")[0]
    assert result.cosine["min"] == pytest.approx(cos.min(), abs=1e-6)
    assert result.cosine["median"] == pytest.approx(np.median(cos), abs=1e-6)
    ref = _reference(x, y, 1000, 10, 20000)
    assert result.overlap["mean"] == pytest.approx(ref["mean"], abs=1e-12)
    assert result.spearman == pytest.approx(ref["spearman"], abs=1e-5)


def test_two_models_of_two_widths_have_no_row_cosine_but_neighbours(outs, bert, tmp_path):
    spec = InputSpec(str(outs / "in.jsonl"), id_field="id")
    embed_file(JobOptions(spec, tmp_path / "bert.npy"), Embedder(str(bert), device="cpu", truncate_dim=16))
    x, y = _rows(outs / "f32.npy"), _rows(tmp_path / "bert.npy")
    result = diff(outs / "f32.npy", tmp_path / "bert.npy", sample=80, k=5, pairs=3000)
    assert result.cosine is None and result.moved == [] and (result.a.dim, result.b.dim) == (x.shape[1], 16)
    assert result.a.model != result.b.model
    ref = _reference(x, y, 80, 5, 3000)
    assert result.overlap["mean"] == pytest.approx(ref["mean"], abs=1e-12)
    assert result.spearman == pytest.approx(ref["spearman"], abs=1e-5)


def _synthetic(path: Path, vectors: np.ndarray, row_group: int = 1000, **sidecar) -> Path:
    """An output written by hand, with a sidecar recording one input (as embed records it)."""
    n, dim = vectors.shape
    side = {"format": "hfenc-embeddings/1", "complete": True, "rows": n, "dim": dim, "normalize": True,
            "model": "made-by-hand", "input": {"path": "in.txt", "format": "txt", "sha256": "ab" * 32,
                                               "encoding_errors": "strict"}, **sidecar}
    return write_output(path, vectors, side, row_group)


def test_pieces_across_blocks_of_every_size_and_ties(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2500, 24)).astype(np.float32)
    x[100:130] = x[7]  # exact ties among the neighbours: the lower rows win in both
    y = (x + rng.normal(scale=0.3, size=x.shape)).astype(np.float32)
    y[100:130] = y[7]
    a, b = _synthetic(tmp_path / "a.npy", x), _synthetic(tmp_path / "b.parquet", y, row_group=333)
    ref, cos = _reference(x, y, 400, 10, 5000, seed=4), _cosines(x, y)
    for rows in (4096, 1000, 97, 16):  # one piece, or many cut across the Parquet row groups
        monkeypatch.setattr(hfenc.compare, "PIECE_ROWS", rows)
        result = diff(a, b, sample=400, pairs=5000, seed=4)
        assert result.overlap["mean"] == pytest.approx(ref["mean"], abs=1e-12)
        assert result.overlap["min"] == pytest.approx(ref["min"], abs=1e-12)
        assert result.spearman == pytest.approx(ref["spearman"], abs=1e-5)
        assert result.cosine["min"] == pytest.approx(cos.min(), abs=1e-6)
        assert [m.row for m in result.moved] == np.lexsort((np.arange(len(x)), cos))[:10].tolist()


def test_spearman_averages_the_ranks_of_ties():
    x = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.5])
    y = np.array([2.0, 1.0, 4.0, 4.0, 9.0, 7.0, 7.0, 0.0])
    assert hfenc.compare.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert hfenc.compare.spearman(x, np.ones(8)) is None


def test_chunked_outputs_compare_with_records_and_chunks(outs, bert, tmp_path):
    spec = InputSpec(str(outs / "in.jsonl"), id_field="id")
    f32, bf16 = Embedder(str(bert), device="cpu"), Embedder(str(bert), device="cpu", dtype="bfloat16")
    embed_file(JobOptions(spec, tmp_path / "a.npy", chunking=ChunkOptions(8, 2)), f32)
    embed_file(JobOptions(spec, tmp_path / "b.parquet", chunking=ChunkOptions(8, 2)), bf16)
    embed_file(JobOptions(spec, tmp_path / "c.npy", chunking=ChunkOptions(12, 2)), bf16)
    cos = _cosines(_rows(tmp_path / "a.npy"), _rows(tmp_path / "b.parquet"))
    result = diff(tmp_path / "a.npy", tmp_path / "b.parquet", top=3)
    assert result.rows == len(cos) > N and result.cosine["min"] == pytest.approx(cos.min(), abs=1e-6)
    provenance = pq.read_table(tmp_path / "b.parquet", columns=["doc_row", "chunk", "doc_id"]).to_pylist()
    for m in result.moved:
        assert (m.doc_row, m.chunk, m.id) == tuple(provenance[m.row].values())
    with pytest.raises(InputError, match="not outputs of the same input"):
        diff(tmp_path / "a.npy", tmp_path / "c.npy")
    with pytest.raises(InputError, match="is chunked"):
        diff(tmp_path / "a.npy", outs / "f32.npy")


# ---- refusals -------------------------------------------------------------------------------

def _diff_cli(*args: object, columns: int = 80):
    return runner.invoke(app, ["diff", *map(str, args)], env={"COLUMNS": str(columns)})


def _one_error(result) -> str:
    assert result.exit_code == 1 and result.stdout == "", (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_cli_refuses_outputs_of_different_inputs_in_one_line(outs):
    line = _one_error(_diff_cli(outs / "f32.npy", outs / "other.npy"))
    assert "not outputs of the same input" in line and "sha256 differs" in line
    assert "Hint: " in _diff_cli(outs / "f32.npy", outs / "other.npy").stderr


def test_reading_settings_and_row_counts_are_compared(tmp_path):
    x = np.ones((5, 4), np.float32)
    a = _synthetic(tmp_path / "a.npy", x)
    b = _synthetic(tmp_path / "b.npy", x, input={"format": "txt", "sha256": "ab" * 32, "skip_blank": True,
                                                   "encoding_errors": "strict"})
    c = _synthetic(tmp_path / "c.npy", x[:4])
    with pytest.raises(InputError, match="read with skip_blank None vs True"):
        diff(a, b)
    with pytest.raises(InputError, match="5 rows vs 4"):
        diff(a, c)
    line = _one_error(_diff_cli(a, tmp_path / "missing.npy"))
    assert "missing.npy does not exist" in line


def test_text_hashes_that_differ_in_a_row_are_refused_naming_it(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    hashes = np.random.default_rng(1).integers(0, 256, size=(40, 32), dtype=np.uint8)
    changed = hashes.copy()
    changed[17, 5] ^= 1
    np.save(tmp_path / "a.hashes.npy", hashes)
    np.save(tmp_path / "b.hashes.npy", changed)
    a = _synthetic(tmp_path / "a.npy", x, hashes_file="a.hashes.npy")
    b = _synthetic(tmp_path / "b.npy", x, hashes_file="b.hashes.npy")
    line = _one_error(_diff_cli(a, b))
    assert "row 17 is another text" in line
    # the same hashes (here one in a Parquet column) pass; an output without any skips the check
    column = pa.array([bytes(h).hex() for h in hashes])
    p = _synthetic(tmp_path / "p.parquet", x)
    pq.write_table(pq.read_table(p).append_column("text_sha256", column)
                   .replace_schema_metadata(pq.read_schema(p).metadata), p)
    assert diff(a, p).cosine["min"] == pytest.approx(1.0, abs=1e-6)
    assert diff(b, _synthetic(tmp_path / "old.npy", x)).rows == 40
    with pytest.raises(InputError, match="row 17 is another text"):
        diff(p, b)


# ---- the report -----------------------------------------------------------------------------

def test_cli_report_fits_80_columns_and_json(outs, monkeypatch):
    monkeypatch.chdir(outs)  # short paths: a path is never cut, so a long one could not fit
    result = _diff_cli("f32.npy", "bf16.npy", "--top", "3")
    assert result.exit_code == 0, result.stderr
    assert all(len(line) <= 80 for line in result.stdout.splitlines()), result.stdout
    for needle in ("cosine min", "overlap@10 mean", "spearman", "doc", MINILM, "(float32)"):
        assert needle in result.stdout, result.stdout
    parsed = json.loads(_diff_cli(outs / "f32.npy", outs / "bf16.npy", "--json", "--sample", "20",
                                  "--pairs", "100").stdout)
    cos = _cosines(_rows(outs / "f32.npy"), _rows(outs / "bf16.npy"))
    assert parsed["cosine"]["min"] == pytest.approx(cos.min(), abs=1e-6)
    assert parsed["sample"] == 20 and parsed["pairs"] == 100 and len(parsed["moved"]) == 10
    assert parsed["moved"][0]["id"].startswith("doc")
