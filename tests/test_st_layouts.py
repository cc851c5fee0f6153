"""Parity with sentence-transformers on every sentence-transformers folder layout hfenc claims.

Each layout of tests/st_layouts.py (tiny versions of bge, e5, gte, mxbai, arctic, nomic, Qwen3-Embedding,
EmbeddingGemma, sentence-t5; every Pooling mode and concatenation; include_prompt=False; legacy
configs and the old 0_Transformer/ folder; Dense, LayerNorm and WeightedLayerPooling modules) is built
and saved by sentence-transformers 6.2 itself, and `hfenc.encode` must give the numbers of
`SentenceTransformer.encode` on the same folder, within TOLERANCE, for the model's default and for each
prompt, explicit prompt and Matryoshka truncation it offers.  The texts include an empty one, mixed
case and rows longer than the Transformer's max_seq_length.

Folders hfenc cannot reproduce (CNN, LSTM, bag-of-words, foreign module classes, unknown config keys
or activations, a SparseEncoder, a module path outside the folder) must be refused with an hfenc error
naming the problem, in the library and on the command line; a separate test pins down what
sentence-transformers itself does with each of them.

Finally, bfloat16 on the RoPE families beyond 2,048 positions stays close to float32.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from typer.testing import CliRunner

import hfenc
import st_layouts
import tiny_models
from hfenc.cli import app
from hfenc.errors import HfencError
from st_layouts import LAYOUTS, MAX_SEQ_LENGTH, REFUSALS, TEXTS, WORD_PROMPT

TOLERANCE = 1e-5  # max |hfenc - sentence-transformers| over every element, float32
ST_BATCH_SIZE = 4  # several padded batches on the reference side
EXPLICIT_PROMPT = "the text: "  # a `prompt=` string, different from every saved prompt


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("HFENC_DEBUG", raising=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def st_folder(tmp_path_factory):
    """`st_folder(name)` -> the folder of layout or refusal `name`, built once per session."""
    builder = st_layouts.FolderBuilder(tmp_path_factory.mktemp("st_layouts"))
    lock = threading.Lock()

    def get(name: str) -> Path:
        with lock:
            return builder.get(name)

    return get


@pytest.fixture(scope="session")
def st_model(st_folder):
    """`st_model(name)` -> SentenceTransformer loaded from that folder (the reference), once."""
    from sentence_transformers import SentenceTransformer

    models: dict[str, SentenceTransformer] = {}

    def get(name: str) -> SentenceTransformer:
        if name not in models:
            models[name] = SentenceTransformer(str(st_folder(name)), device="cpu")
        return models[name]

    return get


def _st_encode(model, texts=TEXTS, **kwargs) -> np.ndarray:
    return model.encode(texts, batch_size=ST_BATCH_SIZE, convert_to_numpy=True, **kwargs)


def _normalizes(model) -> bool:
    from sentence_transformers.sentence_transformer.modules import Normalize

    return isinstance(model[len(model) - 1], Normalize)


def _variants(layout: st_layouts.Layout, model) -> list[dict]:
    """hfenc.encode options to compare: the default, each non-empty prompt by name, an explicit
    prompt, the ways to switch a default prompt off, and the layout's Matryoshka truncation."""
    variants: list[dict] = [{}]
    prompts = model.prompts  # ST's: saved prompts plus empty "query"/"document" placeholders
    variants += [{"prompt_name": name} for name, text in prompts.items() if text]
    if any(prompts.values()):
        variants.append({"prompt": EXPLICIT_PROMPT})
    if model.default_prompt_name is not None:
        # An empty prompt, by name or as text, overrides the default prompt (ST's _resolve_prompt).
        variants += [{"prompt_name": name} for name, text in prompts.items() if not text][:1]
        variants.append({"prompt": ""})
    if layout.truncate_dim is not None:
        variants.append({"truncate_dim": layout.truncate_dim})
        if not _normalizes(model):
            variants.append({"truncate_dim": layout.truncate_dim, "normalize": True})
    return variants


def _reference(model, variant: dict) -> np.ndarray:
    """What sentence-transformers gives for the hfenc options `variant`: a model ending in Normalize
    normalizes before truncating, so hfenc re-normalizes after truncating (= normalize_embeddings)."""
    kwargs = {k: v for k, v in variant.items() if k in ("prompt_name", "prompt", "truncate_dim")}
    renormalize = variant.get("normalize", False) or ("truncate_dim" in variant and _normalizes(model))
    return _st_encode(model, normalize_embeddings=renormalize, **kwargs)


# ---- the parity matrix --------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(LAYOUTS))
def test_hfenc_matches_sentence_transformers(name, st_folder, st_model):
    layout, folder, model = LAYOUTS[name], st_folder(name), st_model(name)
    assert model.max_seq_length == MAX_SEQ_LENGTH  # so the long texts are truncated
    failures = []
    for variant in _variants(layout, model):
        expected = _reference(model, variant)
        got = hfenc.encode(TEXTS, model=str(folder), device="cpu", **variant)
        assert isinstance(got, np.ndarray) and got.dtype == np.float32, (variant, type(got))
        assert got.shape == expected.shape, (variant, got.shape, expected.shape)
        error = np.abs(got.astype(np.float64) - expected).max(axis=1)
        if error.max() > TOLERANCE:
            row = int(error.argmax())
            failures.append(f"{variant}: max error {error.max():.2e} in row {row} ({TEXTS[row][:40]!r})")
    assert not failures, f"{layout.doc}\n" + "\n".join(failures)


def test_texts_cover_empty_mixed_case_and_truncated_rows(st_model):
    tokenizer = st_model("bge").tokenizer
    lengths = [len(ids) for ids in tokenizer(TEXTS, truncation=False)["input_ids"]]
    assert "" in TEXTS and any(t != t.lower() for t in TEXTS)
    assert sum(n > MAX_SEQ_LENGTH for n in lengths) >= 3 and min(lengths) <= 3


@pytest.mark.parametrize("name", ["bge", "qwen3", "embeddinggemma_default_prompt", "mxbai"])
def test_a_single_string_gives_one_vector(name, st_folder, st_model):
    text = TEXTS[4]
    expected = st_model(name).encode(text, convert_to_numpy=True)  # default prompt included
    got = hfenc.encode(text, model=str(st_folder(name)), device="cpu")
    assert expected.ndim == 1 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_st_placeholder_prompt_names_are_accepted(st_folder, st_model):
    # sentence-transformers gives every model empty "query" and "document" prompts (and saves them).
    model = st_model("bge")
    assert model.prompts == {"query": "", "document": ""}
    for prompt_name in model.prompts:
        got = hfenc.encode(TEXTS, model=str(st_folder("bge")), device="cpu", prompt_name=prompt_name)
        np.testing.assert_allclose(got, _st_encode(model, prompt_name=prompt_name), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("name", ["e5", "nomic", "embeddinggemma"])
def test_unknown_prompt_name_is_refused_with_the_models_names(name, st_folder, st_model):
    model = st_model(name)
    with pytest.raises(ValueError, match="not found"):
        model.encode(TEXTS[:2], prompt_name="nope")  # the reference refuses it too
    with pytest.raises(HfencError, match="query") as info:
        hfenc.encode(TEXTS[:2], model=str(st_folder(name)), device="cpu", prompt_name="nope")
    message = str(info.value)
    assert "nope" in message
    missing = [n for n, text in model.prompts.items() if text and n not in message]
    assert not missing, (missing, message)


# ---- what the folders are: the matrix would prove nothing if a builder were wrong ---------------

def test_layout_folders_are_what_they_claim(st_folder, st_model):
    from sentence_transformers.sentence_transformer import modules as m

    qwen3 = st_model("qwen3")
    assert transformers.AutoTokenizer.from_pretrained(st_folder("qwen3")).padding_side == "left"
    assert qwen3.tokenizer.padding_side == "left" and qwen3[0].transformer_task == "feature-extraction"
    assert qwen3[1].pooling_mode == "lasttoken" and qwen3.tokenizer.chat_template is None
    assert st_model("exclude_prompt_weightedmean_qwen3").tokenizer.padding_side == "left"

    gemma = st_model("embeddinggemma")
    assert gemma[0].auto_model.config.model_type == "gemma3_text"
    assert gemma[0].auto_model.config.use_bidirectional_attention is True
    assert [type(x).__name__ for x in gemma] == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]
    assert [(d.in_features, d.out_features, type(d.activation_function).__name__) for d in (gemma[2], gemma[3])] \
        == [(32, 64, "Identity"), (64, 32, "Identity")]
    assert st_model("embeddinggemma_default_prompt").default_prompt_name == "query"
    assert st_model("arctic").default_prompt_name is None

    assert type(st_model("sentence_t5")[0].auto_model).__name__ == "T5EncoderModel"
    assert type(st_model("nomic")[0].auto_model).__name__ == "ModernBertModel"

    old = st_folder("legacy_0_transformer")
    assert not (old / "config.json").exists() and (old / "0_Transformer" / "config.json").is_file()
    assert st_model("legacy_0_transformer")[0].do_lower_case is True
    assert st_model("legacy_0_transformer_cased")[0].do_lower_case is False

    dense_config = json.loads((st_layouts.module_path(st_folder("dense_default_tanh"), "Dense") / "config.json").read_text())
    assert "activation_function" not in dense_config
    assert isinstance(st_model("dense_default_tanh")[2].activation_function, torch.nn.Tanh)
    assert st_model("dense_residual_proj")[2].use_residual and hasattr(st_model("dense_residual_proj")[2], "residual")

    assert st_model("weighted_layer_pooling")[0].auto_model.config.output_hidden_states is True
    assert not st_model("weighted_layer_pooling_inactive")[0].auto_model.config.output_hidden_states
    assert isinstance(st_model("layer_norm")[2], m.LayerNorm)
    for name in ("exclude_prompt_mean", "exclude_prompt_weightedmean", "exclude_prompt_cls"):
        assert st_model(name)[1].include_prompt is False
    assert st_model("pool_cls_mean_max")[1].pooling_mode == ("cls", "mean", "max")
    assert st_model("legacy_pool_mean_cls")[1].pooling_mode == ("cls", "mean")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float(np.abs(a - b).max()) <= 1e-6


def test_st_reads_legacy_configs_as_documented(st_model):
    enc = lambda name: _st_encode(st_model(name))  # noqa: E731
    # Several true flags concatenate in ST's fixed order (cls, max, mean, ...), not the file's.
    assert _same(enc("legacy_pool_mean_cls"), enc("pool_cls_mean_max")[:, :64])
    assert _same(enc("legacy_pool_all_false"), enc("pool_mean"))  # no flag set: mean
    assert _same(enc("legacy_pool_mean"), enc("pool_mean"))
    assert _same(enc("legacy_pool_lasttoken"), enc("pool_lasttoken"))
    assert _same(enc("dense_default_tanh"), enc("dense_tanh"))  # no activation_function: Tanh
    # do_lower_case lowercases before a cased tokenizer; lowercase texts are unaffected.
    lower = [i for i, t in enumerate(TEXTS) if t == t.lower()]
    cased, lowered = enc("legacy_0_transformer_cased"), enc("legacy_0_transformer")
    assert _same(cased[lower], lowered[lower]) and not _same(cased, lowered)
    assert _same(lowered, enc("gte"))  # the same weights as gte, in the old folder layout


def test_modules_that_can_be_no_ops_really_act(st_model):
    enc = lambda name, **kw: _st_encode(st_model(name), **kw)  # noqa: E731
    assert not _same(enc("weighted_layer_pooling"), enc("weighted_layer_pooling_inactive"))
    assert _same(enc("weighted_layer_pooling_inactive"), enc("pool_mean"))  # no hidden states: no-op
    for mode in ("mean", "weightedmean", "cls"):
        excluded = enc(f"exclude_prompt_{mode}", prompt_name="query")
        assert not _same(excluded, enc(f"pool_{mode}", prompt=WORD_PROMPT)), mode
        assert _same(enc(f"exclude_prompt_{mode}"), enc(f"pool_{mode}")), mode  # no prompt: no change
    default = enc("default_prompt")
    assert _same(default, enc("default_prompt", prompt_name="query"))
    assert not _same(default, enc("default_prompt", prompt=""))
    assert _same(enc("default_prompt", prompt=""), enc("gte"))


def test_st_prompt_length_is_the_prompt_tokenized_alone(st_model):
    # ST excludes len(tokenize(prompt)) tokens (minus a trailing special token).  With a byte-level
    # BPE, the prompt's trailing space is its own token alone but merges into the text's first word
    # ("Ġhello") in the real input, so ST also drops the first word of every text from the pooling.
    model = st_model("exclude_prompt_weightedmean_qwen3")
    tokenizer = model.tokenizer
    assert model[0]._get_prompt_length(WORD_PROMPT) == len(tokenizer(WORD_PROMPT)["input_ids"]) - 1 == 7
    together = tokenizer(WORD_PROMPT + "hello world")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(together)[6] == "Ġhello"  # position 6 < prompt_length


# ---- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(REFUSALS))
def test_refused_by_the_library(name, st_folder):
    refusal = REFUSALS[name]
    with pytest.raises(HfencError, match=re.escape(refusal.needle)):
        hfenc.Embedder(str(st_folder(name)), device="cpu")


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refused_by_the_cli(name, st_folder, tmp_path):
    refusal = REFUSALS[name]
    source = tmp_path / "in.txt"
    source.write_text("hello world\nthe cat\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    result = CliRunner().invoke(app, ["embed", str(source), "-m", str(st_folder(name)), "-o", str(out),
                                      "--device", "cpu"])
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("Error: ") and refusal.needle in lines[0], result.stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("Hint: ")), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]  # no output, sidecar or partial file


@pytest.mark.parametrize("name", list(REFUSALS))
def test_what_sentence_transformers_does_with_refused_folders(name, st_folder):
    from sentence_transformers import SentenceTransformer

    refusal = REFUSALS[name]
    try:
        embeddings = SentenceTransformer(str(st_folder(name)), device="cpu").encode(TEXTS[:3])
    except Exception as exc:  # at load, or at encode for the LSTM
        assert type(exc).__name__ == refusal.st_error, (refusal.doc, exc)
    else:
        assert refusal.st_error is None, refusal.doc
        assert embeddings.shape[0] == 3 and np.isfinite(embeddings).all()


def test_sentence_transformers_substitutes_silently_where_hfenc_refuses(st_model):
    enc = lambda name: _st_encode(st_model(name))  # noqa: E731
    # An untrusted activation class becomes Tanh; a SparseEncoder becomes Transformer + mean pooling.
    assert _same(enc("dense_unknown_activation"), enc("dense_tanh"))
    assert _same(enc("sparse_encoder"), enc("pool_mean"))


# ---- bfloat16 on RoPE families beyond 2,048 positions ------------------------------------------

ROPE_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "modernbert")
LONG_POSITIONS = 4096
MIN_BF16_COSINE = 0.999


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@pytest.mark.parametrize("model_type", ROPE_FAMILIES)
def test_bfloat16_stays_close_to_float32_beyond_2048_positions(model_type, tiny_model_dir, tmp_path):
    folder = tmp_path / model_type
    shutil.copytree(tiny_model_dir(model_type), folder)
    for file, key in (("config.json", "max_position_embeddings"), ("tokenizer_config.json", "model_max_length")):
        data = json.loads((folder / file).read_text())
        data[key] = LONG_POSITIONS
        (folder / file).write_text(json.dumps(data))
    words = tiny_models.WORDS
    text = " ".join(words[i % len(words)] for i in range(2100))
    n_tokens = len(transformers.AutoTokenizer.from_pretrained(folder)(text)["input_ids"])
    assert 2048 < n_tokens < LONG_POSITIONS

    # Without native bf16 (AVX512-BF16 / AMX) hfenc computes in float32 on the CPU and says so.
    embedder = hfenc.Embedder(str(folder), device="cpu", dtype="bfloat16", max_length=LONG_POSITIONS)
    assert embedder.settings.dtype == ("bfloat16" if _cpu_has_native_bf16() else "float32")
    assert embedder.settings.max_length == LONG_POSITIONS
    # The rotary frequencies stay float32 and exact, as transformers keeps them (issue 9): a
    # bf16 cast of inv_freq skews the angle at position p by ~p * 2**-8 rad. Random tiny weights
    # attend almost uniformly, so the cosine below barely sees it; the buffers show it exactly.
    reference = transformers.AutoModel.from_pretrained(str(folder), dtype=torch.float32)
    want = {n: b for n, b in reference.named_buffers() if n.endswith("inv_freq")}
    got = {n.removeprefix("model."): b for n, b in embedder.pipeline.encoder.transformer.named_buffers()
           if n.endswith("inv_freq")}
    assert want and got.keys() == want.keys()
    for name, buffer in got.items():
        assert buffer.dtype == torch.float32 and torch.equal(buffer, want[name]), name
    del embedder

    f32 = hfenc.encode([text], model=str(folder), device="cpu", dtype="float32", max_length=LONG_POSITIONS)
    bf16 = hfenc.encode([text], model=str(folder), device="cpu", dtype="bfloat16", max_length=LONG_POSITIONS)
    assert f32.shape == bf16.shape == (1, tiny_models.HIDDEN) and bf16.dtype == np.float32
    a, b = f32[0].astype(np.float64), bf16[0].astype(np.float64)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert cosine >= MIN_BF16_COSINE, cosine
