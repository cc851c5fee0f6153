"""Parity with sentence-transformers' SparseEncoder on every sparse (SPLADE) layout hfenc claims.

Each layout of tests/sparse_models.py (max / sum pooling, the double-log1p activation, a saved
max_active_dims, prompts, a null embedding_dimension, the 5.x format, and an inference-free Router
with a SparseStaticEmbedding query side) is built and saved by sentence-transformers 6.3 itself, and
hfenc's Embedder must give the rows of ``encode`` / ``encode_query`` / ``encode_document`` on the same
folder: the same active dimensions in every row and values within TOLERANCE (float32).  The texts
include an empty one, repeated words, unknown words and rows longer than the 64-token limit.

A per-call ``max_active_dims`` must prune as ``encode(..., max_active_dims=K)`` does, and folders hfenc
cannot reproduce (a SparseAutoEncoder after the pooling, an unknown SpladePooling config key) must be
refused with a ModelLoadError naming the module.  The tests marked "fixture" check the folders
themselves against sentence-transformers (they need nothing from hfenc's sparse support).
"""

from __future__ import annotations

import numpy as np
import pytest

from hfenc.errors import ModelLoadError
from hfenc.model.sparse import SparseRows
from sparse_models import (PRUNE_K, QUERY_MAX_LENGTH, SPARSE_LAYOUTS, SPARSE_REFUSALS, TEXTS, kth_margin, load_st,
                           sides, st_reference)

TOLERANCE = 1e-5  # max |hfenc - sentence-transformers| over every element, float32
ACTIVE = 1e-6  # a value above this is an active dimension, on either side
GUARD = 1e-5  # no reference value lies in (0, GUARD]: the active sets are comparable exactly
MARGIN = 1e-4  # the gap between the K-th and (K+1)-th value: pruning picks the same dimensions

CASES = [pytest.param(name, side, id=f"{name}-{side}") for name in SPARSE_LAYOUTS for side in sides(name)]
PRUNE_CASES = [pytest.param(name, side, id=f"{name}-{side}")
               for name in ("splade_max", "inference_free") for side in sides(name)]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("HFENC_DEBUG", raising=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hfenc(folder, side, texts=TEXTS, **options) -> SparseRows:
    from hfenc.compute.embedder import Embedder

    emb = Embedder(str(folder), side=side, device="cpu", dtype="float32", **options)
    assert emb.sparse is True
    rows = emb.encode(texts)
    assert isinstance(rows, SparseRows), type(rows)
    _check_csr(rows, len(texts))
    return rows


def _check_csr(rows: SparseRows, n: int) -> None:
    """Well-formed CSR: n rows, sorted in-range indices per row, only non-zero finite float32 values."""
    assert len(rows) == n and rows.indptr.shape == (n + 1,) and rows.indptr[0] == 0
    assert rows.indptr.dtype == np.int64 and rows.indices.dtype == np.int32 and rows.values.dtype == np.float32
    assert (np.diff(rows.indptr) >= 0).all() and len(rows.indices) == len(rows.values) == rows.indptr[-1]
    for i in range(n):
        idx, val = rows.row(i)
        assert (np.diff(idx) > 0).all() and (idx >= 0).all() and (idx < rows.dim).all(), i
        assert np.isfinite(val).all() and (val != 0).all(), i


def _compare(got: SparseRows, expected: np.ndarray, label: str) -> None:
    dense = got.to_dense()
    assert dense.dtype == np.float32 and dense.shape == expected.shape, (label, dense.shape, expected.shape)
    assert got.dim == expected.shape[1]
    assert not ((expected > 0) & (expected <= GUARD)).any(), f"{label}: the reference has near-zero values"
    failures = []
    for i, text in enumerate(TEXTS):
        ours, theirs = np.flatnonzero(dense[i] > ACTIVE), np.flatnonzero(expected[i] > ACTIVE)
        if not np.array_equal(ours, theirs):
            failures.append(f"row {i} ({text[:30]!r}): active dims differ, only hfenc "
                            f"{sorted(set(ours) - set(theirs))}, only sentence-transformers "
                            f"{sorted(set(theirs) - set(ours))}")
    assert not failures, f"{label}\n" + "\n".join(failures)
    np.testing.assert_allclose(dense, expected, atol=TOLERANCE, rtol=0, err_msg=label)


# ---- the parity matrix --------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "side"), CASES)
def test_hfenc_matches_sparse_encoder(name, side, sparse_models):  # noqa: F811
    folder = sparse_models[name]
    expected = st_reference(folder, TEXTS, side)
    got = _hfenc(folder, side)
    _compare(got, expected, f"{name} side={side}: {SPARSE_LAYOUTS[name].__doc__.splitlines()[0]}")
    if name == "splade_pruned":  # max_active_dims from config_sentence_transformers.json
        assert got.counts().max() <= PRUNE_K, got.counts()


@pytest.mark.parametrize(("name", "side"), PRUNE_CASES)
def test_max_active_dims_matches_sparse_encoder(name, side, sparse_models):  # noqa: F811
    folder = sparse_models[name]
    assert kth_margin(st_reference(folder, TEXTS, side), PRUNE_K) > MARGIN  # no tie at the K-th place
    expected = st_reference(folder, TEXTS, side, max_active_dims=PRUNE_K)
    got = _hfenc(folder, side, max_active_dims=PRUNE_K)
    assert got.counts().max() <= PRUNE_K, got.counts()
    _compare(got, expected, f"{name} side={side} max_active_dims={PRUNE_K}")


@pytest.mark.parametrize("name", list(SPARSE_REFUSALS))
def test_refuses_what_it_cannot_reproduce(name, sparse_models):  # noqa: F811
    folder = sparse_models[name]
    needles = SPARSE_REFUSALS[name][1]
    from hfenc.compute.embedder import Embedder

    with pytest.raises(ModelLoadError) as info:
        Embedder(str(folder), device="cpu", dtype="float32")
    message = str(info.value)
    assert all(needle in message for needle in needles), (needles, message)


# ---- the fixture itself, against sentence-transformers (independent of hfenc) -------------------

@pytest.mark.parametrize("name", list(SPARSE_LAYOUTS))
def test_fixture_loads_in_sentence_transformers(name, sparse_models):  # noqa: F811
    folder = sparse_models[name]
    vocab = len(load_st(folder).tokenizer.get_vocab())
    for side in sides(name):
        rows = st_reference(folder, TEXTS, side)
        active = (rows > 0).sum(axis=1)
        assert rows.shape == (len(TEXTS), vocab) and rows.dtype == np.float32
        assert (rows >= 0).all() and np.isfinite(rows).all()
        limit = PRUNE_K if name == "splade_pruned" else vocab // 2  # really sparse
        assert active.max() <= limit, (side, active)


def test_fixture_texts_are_truncated_and_varied(sparse_models):  # noqa: F811
    tokenizer = load_st(sparse_models["splade_max"]).tokenizer
    assert tokenizer.model_max_length == 64
    lengths = [len(ids) for ids in tokenizer(TEXTS, truncation=False)["input_ids"]]
    assert "" in TEXTS and any(t != t.lower() for t in TEXTS)
    assert sum(n > 64 for n in lengths) >= 3 and 64 in lengths and min(lengths) == 2
    assert any(len(set(t.split())) < len(t.split()) for t in TEXTS)  # repeated words
    assert any(tokenizer.unk_token_id in ids for ids in tokenizer(TEXTS)["input_ids"])


def test_fixture_legacy_5x_gives_splade_max_numbers(sparse_models):  # noqa: F811
    legacy, modern = load_st(sparse_models["legacy_5x"]), load_st(sparse_models["splade_max"])
    assert type(legacy[0]).__name__ == "MLMTransformer" and legacy.max_seq_length == 64
    assert legacy[1].embedding_dimension == modern[1].embedding_dimension == len(modern.tokenizer.get_vocab())
    for side in (None, "query", "document"):
        np.testing.assert_array_equal(st_reference(sparse_models["legacy_5x"], TEXTS, side),
                                      st_reference(sparse_models["splade_max"], TEXTS, side))


def test_fixture_prompts_and_routes(sparse_models):  # noqa: F811
    plain = st_reference(sparse_models["splade_max"], TEXTS, None)
    # "query: " and "passage: " are both [UNK] [UNK]: different from no prompt, same as each other
    query = st_reference(sparse_models["splade_prompts"], TEXTS, "query")
    assert not np.array_equal(query, plain)
    np.testing.assert_array_equal(query, st_reference(sparse_models["splade_prompts"], TEXTS, "document"))
    np.testing.assert_array_equal(st_reference(sparse_models["splade_prompts"], TEXTS, None), plain)
    # word prompts: query != document, and encode() uses default_prompt_name "query"
    words = sparse_models["splade_word_prompts"]
    query = st_reference(words, TEXTS, "query")
    assert not np.allclose(query, st_reference(words, TEXTS, "document"))
    np.testing.assert_array_equal(st_reference(words, TEXTS, None), query)
    # inference-free: plain encode() is the document route; the query route gives static weights
    free = sparse_models["inference_free"]
    np.testing.assert_array_equal(st_reference(free, TEXTS, None), st_reference(free, TEXTS, "document"))
    model = load_st(free)
    static = model[0].sub_modules["query"][0]
    weight = static.weight.detach().numpy()
    assert static.tokenizer.model_max_length == QUERY_MAX_LENGTH != model.max_seq_length

    def presence(special_tokens: bool) -> np.ndarray:
        ids = static.tokenizer(TEXTS, add_special_tokens=special_tokens, truncation=True)["input_ids"]
        out = np.zeros((len(TEXTS), len(weight)), np.float32)
        for i, row in enumerate(ids):
            out[i, row] = weight[row]  # presence, not counts
        return out

    # no [CLS]/[SEP], QUERY_MAX_LENGTH tokens at most; special tokens weigh 0 but would shift the
    # truncation, and the texts make that visible
    query = st_reference(free, TEXTS, "query")
    np.testing.assert_array_equal(query, presence(special_tokens=False))
    assert not np.array_equal(query, presence(special_tokens=True))


def test_fixture_pruning_has_no_ties(sparse_models):  # noqa: F811
    for name in ("splade_max", "splade_pruned", "inference_free"):
        for side in sides(name):
            unpruned = st_reference(sparse_models["splade_max" if name == "splade_pruned" else name], TEXTS, side)
            assert kth_margin(unpruned, PRUNE_K) > MARGIN, (name, side)
            pruned = st_reference(sparse_models[name], TEXTS, side, max_active_dims=PRUNE_K)
            assert ((pruned > 0).sum(axis=1) == np.minimum(PRUNE_K, (unpruned > 0).sum(axis=1))).all()


def test_fixture_refusals_in_sentence_transformers(sparse_models):  # noqa: F811
    # sentence-transformers runs the SparseAutoEncoder (a random projection, top-k) ...
    model = load_st(sparse_models["sparse_auto_encoder"])
    assert type(model[2]).__name__ == "SparseAutoEncoder"
    assert st_reference(sparse_models["sparse_auto_encoder"], TEXTS[:3], None).shape[0] == 3
    # ... and SpladePooling(**config) rejects the unknown key
    with pytest.raises(TypeError, match="foo"):
        load_st(sparse_models["pooling_unknown_key"])
