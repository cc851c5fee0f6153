"""The batching engine: token-budget batches, vectorised padding, dtype choice on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tiny_models
from hfenc.compute import engine
from hfenc.compute.embedder import Embedder
from hfenc.compute.engine import Tokenized, pad_rows, plan_batches


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=0, max_size=200), st.integers(1, 5000))
def test_batches_cover_every_row_once_in_order_within_budget(lengths, budget):
    sorted_lengths = np.array(sorted(lengths, reverse=True), dtype=np.int64)
    batches = plan_batches(sorted_lengths, budget)
    covered = [i for start, end in batches for i in range(start, end)]
    assert covered == list(range(len(lengths)))
    for start, end in batches:
        rows, longest = end - start, max(int(sorted_lengths[start:end].max()), 1)
        assert rows >= 1
        assert rows * longest <= budget or rows == 1  # one over-long row still gets its batch


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(1, 999), min_size=0, max_size=12), min_size=1, max_size=20),
       st.data())
def test_pad_rows_equals_naive_right_padding(rows, data):
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    flat = np.array([t for r in rows for t in r], dtype=np.int64)
    tok = Tokenized(flat, lengths, np.zeros(len(rows), bool))
    pick = np.array(data.draw(st.permutations(range(len(rows)))), dtype=np.int64)
    ids, mask = pad_rows(tok, pick, pad_id=-1)
    width = max(max((len(rows[i]) for i in pick), default=0), 1)
    for out_row, i in enumerate(pick):
        expected = rows[i] + [-1] * (width - len(rows[i]))
        assert ids[out_row].tolist() == expected
        assert mask[out_row].tolist() == [True] * len(rows[i]) + [False] * (width - len(rows[i]))


@pytest.fixture(scope="module")
def bert(tiny_model_dir):
    return tiny_model_dir("bert")


def _texts(n: int) -> list[str]:
    words = tiny_models.WORDS
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + i % 23)) for i in range(n)]


def test_bfloat16_on_a_cpu_without_native_support_computes_in_float32(bert, monkeypatch):
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr("hfenc.compute.embedder.cpu_has_native_bf16", lambda: False)
    emb = Embedder(str(bert), device="cpu", dtype="bfloat16")
    assert emb.settings.dtype == "float32"
    assert any("no native bfloat16" in note for note in emb.notes)
    reference = Embedder(str(bert), device="cpu", dtype="float32").encode(_texts(30))
    np.testing.assert_array_equal(emb.encode(_texts(30)), reference)


def test_bfloat16_where_supported_runs_in_bf16_and_returns_float32(bert, monkeypatch):
    monkeypatch.setattr("hfenc.compute.embedder.cpu_has_native_bf16", lambda: True)
    emb = Embedder(str(bert), device="cpu", dtype="bfloat16")
    assert emb.settings.dtype == "bfloat16" and not emb.notes
    # mixed bf16 (issue 14): Linear weights in bf16, embeddings and norms kept in float32
    assert emb.encoder.transformer.encoder.layer[0].intermediate.dense.weight.dtype == torch.bfloat16
    got = emb.encode(_texts(30))
    assert got.dtype == np.float32
    reference = Embedder(str(bert), device="cpu").encode(_texts(30))
    cos = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() > 0.99  # bf16 keeps ~3 significant digits


@pytest.mark.parametrize("switch, native, expected", [
    (None, False, torch.float32), (None, True, torch.bfloat16), ("0", True, torch.float32), ("1", True, torch.bfloat16)])
def test_auto_dtype_on_cpu_is_bf16_only_with_native_bf16_and_not_switched_off(switch, native, expected, monkeypatch):
    monkeypatch.delenv(engine.AUTO_BF16_ENV, raising=False)
    if switch is not None:
        monkeypatch.setenv(engine.AUTO_BF16_ENV, switch)
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: native)
    assert engine.resolve_dtype("auto", torch.device("cpu")) == expected
    assert engine.resolve_dtype("float32", torch.device("cpu")) == torch.float32  # explicit: as asked


def test_budget_does_not_change_results_beyond_float_tolerance(bert):
    texts = _texts(120)
    small = Embedder(str(bert), device="cpu", batch_tokens=8).encode(texts)
    large = Embedder(str(bert), device="cpu", batch_tokens=1_000_000).encode(texts)
    np.testing.assert_allclose(small, large, atol=1e-5)


def test_progress_comes_per_batch_with_a_finite_eta(bert):
    """Issue 11: progress between chunks, not only at their end."""
    emb = Embedder(str(bert), device="cpu", batch_tokens=40)  # a few rows per batch
    texts = _texts(60)
    tok = emb.tokenizer(texts)
    batches = len(engine.plan_batches(np.sort(tok.lengths)[::-1], 40))
    seen = []
    emb.encode(texts, progress=seen.append, chunk_size=1000)  # one chunk, many batches
    assert batches >= 10 and len(seen) == batches
    assert [p.rows_done for p in seen] == sorted(p.rows_done for p in seen) and seen[-1].rows_done == 60
    assert all(p.rows_total == 60 for p in seen)
    assert seen[0].eta is not None and np.isfinite(seen[0].eta) and seen[-1].eta == 0
