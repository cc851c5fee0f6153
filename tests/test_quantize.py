"""Quantized embeddings (issue 12): hfenc.io.quantize against sentence-transformers'
`quantize_embeddings` (the reference), `embed --quantize` against quantize_embeddings of the same
job's float output with the recorded ranges, calibration from a sample of the corpus (never one
batch), --ranges FILE, Matryoshka truncation before quantization, --resume with the saved ranges,
and the retrieval quality kept: Spearman correlation on STS-B-like pairs (tests/data) with the real
all-MiniLM-L6-v2, int8 within 1% of float32 (figures printed in the run's summary).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr
from sentence_transformers.util.quantization import quantize_embeddings
from typer.testing import CliRunner

import tiny_models
from interrupts import stop_after
from hfenc import Embedder
from hfenc.cli import app
from hfenc.errors import ConfigError, ResumeError
from hfenc.io.inputs import InputSpec
from hfenc.jobs.local import JobOptions, embed_file
from hfenc.io.quantize import (PRECISIONS, dequantize, load_ranges, quantize, ranges_from, sample_rows, stored_width,
                            unpack_bits)

WIDTH = tiny_models.HIDDEN
STS = Path(__file__).with_name("data") / "sts_pairs.tsv"
runner = CliRunner()


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(tiny_models.WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def _job(src: Path, out: Path, **kw) -> JobOptions:
    return JobOptions(InputSpec(str(src)), out, **kw)


def _rows(path: Path) -> np.ndarray:
    if path.suffix == ".parquet":
        column = pq.read_table(path).column("embedding").combine_chunks()
        return column.flatten().to_numpy().reshape(-1, column.type.list_size)
    return np.load(path)








@pytest.fixture()
def data(tmp_path) -> Path:
    (tmp_path / "in.txt").write_text("".join(t + "\n" for t in _texts(50)), encoding="utf-8")
    return tmp_path


# ---- the arithmetic, against sentence-transformers -------------------------------------------

@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("dim", [37, 64])  # 37: packbits pads the last byte
def test_codes_equal_quantize_embeddings(precision, dim):
    rng = np.random.default_rng(dim)
    x = rng.normal(size=(300, dim)).astype(np.float32)
    calibration = rng.normal(size=(500, dim)).astype(np.float32) * 0.8  # some of x falls outside: clipped
    calibration[:, 3] = 0.25  # a dimension with max == min: step 1, as sentence-transformers does
    ranges = ranges_from(calibration)
    want = quantize_embeddings(x, precision, ranges=ranges if precision.endswith("int8") else None)
    got = quantize(x, precision, ranges)
    assert got.dtype == want.dtype and got.shape == want.shape == (300, stored_width(precision, dim))
    assert np.array_equal(got, want)
    if precision.endswith("int8"):
        # the ranges are what sentence-transformers computes from the same calibration set
        assert np.array_equal(quantize(x, precision, ranges),
                              quantize_embeddings(x, precision, calibration_embeddings=calibration))


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_dequantize_gives_the_bottom_of_each_bucket(precision):
    from sentence_transformers.util.quantization import _dequantize_embeddings

    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 16)).astype(np.float32)
    ranges = ranges_from(x)
    codes = quantize(x, precision, ranges)
    np.testing.assert_allclose(dequantize(codes, precision, ranges),
                               _dequantize_embeddings(codes.astype(int), precision, ranges), rtol=1e-6, atol=1e-6)
    step = (ranges[1] - ranges[0]) / 255
    assert np.all(dequantize(codes, precision, ranges) <= x + 1e-6)
    assert np.all(x - dequantize(codes, precision, ranges) <= step + 1e-6)


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_unpacked_bits_are_the_signs(precision):
    x = np.random.default_rng(2).normal(size=(20, 37)).astype(np.float32)
    assert np.array_equal(unpack_bits(quantize(x, precision), precision, 37), (x > 0).astype(np.uint8))


def test_sample_rule_is_every_row_up_to_10000_then_a_seeded_sample():
    assert sample_rows(7).tolist() == list(range(7))
    assert len(sample_rows(10_000)) == 10_000
    picks = sample_rows(1_000_000)
    assert len(picks) == 10_000 == len(set(picks.tolist())) and np.all(np.diff(picks) > 0)
    assert np.array_equal(picks, sample_rows(1_000_000))  # deterministic
    assert picks[-1] > 900_000  # spread over the whole input, not its first rows
    with pytest.raises(ConfigError, match="at least 2 rows"):
        ranges_from(np.zeros((1, 4), np.float32))


def test_ranges_files(tmp_path):
    r = np.array([[-1, -2, 0], [1, 2, 0.5]], np.float32)
    np.save(tmp_path / "r.npy", r)
    (tmp_path / "r.json").write_text(json.dumps(r.tolist()))
    (tmp_path / "side.json").write_text(json.dumps({"quantization": {"precision": "int8", "ranges": r.tolist()}}))
    for name in ("r.npy", "r.json", "side.json"):
        assert np.array_equal(load_ranges(tmp_path / name, 3), r)
    bad = {"shape.json": [[1, 2, 3]], "order.json": [[1, 0, 0], [0, 1, 1]], "nan.json": [[0, 0, 0], [1, "x", 1]]}
    for name, value in bad.items():
        (tmp_path / name).write_text(json.dumps(value))
        with pytest.raises(ConfigError):
            load_ranges(tmp_path / name, 3)
    with pytest.raises(ConfigError, match="3 wide; the embeddings are 4 wide"):
        load_ranges(tmp_path / "r.npy", 4)
    (tmp_path / "nothing.json").write_text("{}")
    with pytest.raises(ConfigError, match="no quantization.ranges"):
        load_ranges(tmp_path / "nothing.json", 3)


# ---- embed --quantize -------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_quantized_outputs_equal_quantize_embeddings_of_the_float_output(data, embedder, suffix):
    float_out = data / f"float{suffix}"
    embed_file(_job(data / "in.txt", float_out, chunk_size=16), embedder)
    floats = _rows(float_out)
    for precision in PRECISIONS:
        out = data / f"{precision}{suffix}"
        result = embed_file(_job(data / "in.txt", out, chunk_size=16, quantize=precision), embedder)
        q = result.metadata["quantization"]
        ranges = None if q["ranges"] is None else np.asarray(q["ranges"], np.float32)
        assert (ranges is not None) == precision.endswith("int8")
        got = _rows(out)
        want = quantize_embeddings(floats, precision, ranges=ranges)
        assert got.dtype == want.dtype and np.array_equal(got, want), precision
        assert result.metadata["out_dtype"] == str(want.dtype) and result.metadata["dim"] == WIDTH
        assert q["stored_width"] == got.shape[1] == (WIDTH if precision.endswith("int8") else WIDTH // 8)
        if ranges is not None:  # calibrated on all 50 rows (<= 10,000), embedded in a pass of their own
            assert q["calibration"] == {"method": "sample", "rows": 50, "of_rows": 50, "max_rows": 10_000, "seed": 0}
            np.testing.assert_allclose(ranges, np.vstack((floats.min(0), floats.max(0))), rtol=0, atol=1e-6)
            assert any("calibrated on only 50 rows" in w for w in result.warnings)


def test_calibration_uses_the_sample_not_a_batch(data, embedder, monkeypatch):
    import hfenc.io.writers

    real = hfenc.io.writers.sample_rows
    monkeypatch.setattr(hfenc.io.writers, "sample_rows", lambda n: real(n, size=20))
    embed_file(_job(data / "in.txt", data / "float.npy", chunk_size=8), embedder)
    result = embed_file(_job(data / "in.txt", data / "q.npy", chunk_size=8, quantize="uint8"), embedder)
    calibration = result.metadata["quantization"]["calibration"]
    assert (calibration["rows"], calibration["of_rows"]) == (20, 50)
    picks = real(50, size=20)
    floats = np.load(data / "float.npy")
    ranges = np.asarray(result.metadata["quantization"]["ranges"], np.float32)
    np.testing.assert_allclose(ranges, np.vstack((floats[picks].min(0), floats[picks].max(0))), rtol=0, atol=1e-6)
    first_batch = floats[:8]
    assert not np.allclose(ranges, np.vstack((first_batch.min(0), first_batch.max(0))), atol=1e-4)
    assert np.array_equal(np.load(data / "q.npy"), quantize_embeddings(floats, "uint8", ranges=ranges))


def test_given_ranges_are_used_exactly_and_a_changed_file_refuses_resume(data, embedder):
    embed_file(_job(data / "in.txt", data / "float.npy", chunk_size=7), embedder)
    floats = np.load(data / "float.npy")
    ranges = np.vstack((floats.min(0) - 0.1, floats.max(0) + 0.1)).astype(np.float32)
    np.save(data / "ranges.npy", ranges)
    result = embed_file(_job(data / "in.txt", data / "q.npy", chunk_size=7, quantize="int8",
                             ranges=data / "ranges.npy"), embedder)
    assert np.array_equal(np.load(data / "q.npy"), quantize_embeddings(floats, "int8", ranges=ranges))
    q = result.metadata["quantization"]
    assert q["calibration"]["method"] == "file" and np.array_equal(np.asarray(q["ranges"], np.float32), ranges)
    assert result.warnings == []
    # the sidecar is itself a ranges file: another corpus quantized the same way
    again = embed_file(_job(data / "in.txt", data / "q2.npy", chunk_size=7, quantize="int8",
                            ranges=data / "q.npy.json"), embedder)
    assert np.array_equal(np.load(data / "q2.npy"), np.load(data / "q.npy"))
    assert again.metadata["quantization"]["ranges"] == q["ranges"]
    with pytest.raises(Exception, match="rows are saved"):
        embed_file(_job(data / "in.txt", data / "r.npy", chunk_size=7, quantize="int8", ranges=data / "ranges.npy"),
                   embedder, progress=stop_after(7))
    np.save(data / "ranges.npy", ranges * 2)
    with pytest.raises(ResumeError, match="calibration changed"):
        embed_file(_job(data / "in.txt", data / "r.npy", chunk_size=7, quantize="int8", ranges=data / "ranges.npy",
                        resume=True), embedder)


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_resume_quantizes_with_the_saved_ranges_bit_for_bit(data, embedder, monkeypatch, suffix):
    import hfenc.io.writers

    embed_file(_job(data / "in.txt", data / f"full{suffix}", chunk_size=7, quantize="int8"), embedder)
    out = data / f"out{suffix}"
    with pytest.raises(Exception, match="rows are saved"):
        embed_file(_job(data / "in.txt", out, chunk_size=7, quantize="int8"), embedder, progress=stop_after(14))

    def no_second_calibration(*args):
        raise AssertionError("a resumed run must reuse the saved ranges")

    monkeypatch.setattr(hfenc.io.writers, "calibrate", no_second_calibration)
    result = embed_file(_job(data / "in.txt", out, chunk_size=7, quantize="int8", resume=True), embedder)
    assert result.resumed_from == 14
    assert np.array_equal(_rows(out), _rows(data / f"full{suffix}"))
    full = json.loads((data / f"full{suffix}.json").read_text())["quantization"]
    assert result.metadata["quantization"] == full


def test_matryoshka_truncation_happens_before_quantization(data, bert):
    short = Embedder(str(bert), device="cpu", truncate_dim=13, normalize=True)
    embed_file(_job(data / "in.txt", data / "float.npy"), short)
    floats = np.load(data / "float.npy")
    assert floats.shape == (50, 13)
    for precision in ("int8", "binary"):
        result = embed_file(_job(data / "in.txt", data / f"{precision}.npy", quantize=precision), short)
        ranges = result.metadata["quantization"]["ranges"]
        got = np.load(data / f"{precision}.npy")
        assert got.shape == (50, 13 if precision == "int8" else 2)
        assert np.array_equal(got, quantize_embeddings(floats, precision,
                                                       ranges=None if ranges is None else np.asarray(ranges, np.float32)))


@pytest.mark.parametrize("args, needle", [
    (["--quantize", "int8", "--out-dtype", "float16"], "--out-dtype float16 has no meaning"),
    (["--quantize", "binary", "--ranges", "in.txt"], "--ranges is for --quantize int8 or uint8"),
    (["--quantize", "int8", "--ranges", "missing.npy"], "ranges file missing.npy does not exist"),
    (["--quantize", "int4"], "unknown quantization 'int4'; choose one of: binary, int8, ubinary, uint8"),
    (["--quantize", "int8", "--ranges", "in.txt"], "cannot read ranges from in.txt"),
])
def test_bad_quantization_options_are_one_line(data, bert, args, needle, monkeypatch):
    monkeypatch.chdir(data)
    result = runner.invoke(app, ["embed", "in.txt", "-o", "out.npy", "-m", str(bert), "--device", "cpu", *args])
    assert result.exit_code == 1, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert sorted(p.name for p in data.iterdir()) == ["in.txt"]


def test_one_row_cannot_calibrate_but_can_be_binary(tmp_path, embedder):
    (tmp_path / "one.txt").write_text("the cat\n")
    with pytest.raises(ConfigError, match="calibration ranges need at least 2 rows"):
        embed_file(_job(tmp_path / "one.txt", tmp_path / "q.npy", quantize="int8"), embedder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.txt"]
    embed_file(_job(tmp_path / "one.txt", tmp_path / "b.npy", quantize="ubinary"), embedder)
    assert np.load(tmp_path / "b.npy").shape == (1, WIDTH // 8)


# ---- quality: STS-B-like pairs with all-MiniLM-L6-v2 ------------------------------------------

def _pairs() -> tuple[np.ndarray, list[str], list[str]]:
    rows = [line.split("\t") for line in STS.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return np.array([float(r[0]) for r in rows]), [r[1] for r in rows], [r[2] for r in rows]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_int8_keeps_spearman_within_one_percent_of_float32(minilm_dir, tmp_path, report):
    gold, first, second = _pairs()
    assert len(gold) >= 100
    sentences = sorted(set(first) | set(second))
    where = {s: i for i, s in enumerate(sentences)}
    a, b = [where[s] for s in first], [where[s] for s in second]
    (tmp_path / "sts.txt").write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    model = Embedder(str(minilm_dir), device="cpu")
    rho = {}
    embed_file(_job(tmp_path / "sts.txt", tmp_path / "float32.npy"), model)
    floats = np.load(tmp_path / "float32.npy")
    rho["float32"] = spearmanr(_cosine(floats[a], floats[b]), gold).statistic
    for precision in ("int8", "binary"):
        result = embed_file(_job(tmp_path / "sts.txt", tmp_path / f"{precision}.npy", quantize=precision), model)
        codes = np.load(tmp_path / f"{precision}.npy")
        if precision == "int8":
            ranges = np.asarray(result.metadata["quantization"]["ranges"], np.float32)
            assert np.array_equal(codes, quantize_embeddings(floats, "int8", ranges=ranges))
            values = dequantize(codes, "int8", ranges)  # what `hfenc search` scores an int8 index with
            rho["int8"] = spearmanr(_cosine(values[a], values[b]), gold).statistic
            rho["int8 codes"] = spearmanr(_cosine(codes[a], codes[b]), gold).statistic  # raw codes, symmetric
        else:
            bits = unpack_bits(codes, "binary", floats.shape[1])
            hamming = (bits[a] != bits[b]).sum(1)
            rho["binary"] = spearmanr(-hamming, gold).statistic
    report(f"STS-like pairs ({len(gold)}, all-MiniLM-L6-v2), Spearman: "
           + ", ".join(f"{k} {v:.4f}" for k, v in rho.items())
           + f"; int8 / float32 = {rho['int8'] / rho['float32']:.4f}")
    assert rho["float32"] > 0.8  # the pairs are graded sensibly: the float model agrees with them
    assert abs(rho["int8"] - rho["float32"]) <= 0.01 * rho["float32"]
    assert abs(rho["int8 codes"] - rho["float32"]) <= 0.01 * rho["float32"]
    assert rho["binary"] > 0.9 * rho["float32"]
