"""HFTextEncoder and Embedder end to end on a tiny model of every family, and one test per seed
defect of SPEC.md section 2 (each would fail on the seed's behaviour).

Expected values come from plain transformers calls and plain loops, never from hfenc."""

from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from torch import nn

import tiny_models
from hfenc import Embedder, HFTextEncoder
from hfenc.errors import ConfigError, HfencError, ModelLoadError, UnknownChoiceError
from hfenc.model.poolers import get_pooler_class, pooler_names

TYPES = tiny_models.MODEL_TYPES
POOLERS = pooler_names()
DENSE_POOLERS = [p for p in POOLERS if not get_pooler_class(p).sparse]  # splade_*: tests/test_sparse.py
WIDTH = tiny_models.HIDDEN


def _texts(n: int = 20, seed: int = 0) -> list[str]:
    """`n` texts of 1 to ~45 words of WORDS (all in every tiny vocabulary), some capitalised."""
    rng = random.Random(seed)
    lengths = [1, 2, 45, 3, 30, 7, 12, 1, 20, 5] + [rng.randint(1, 40) for _ in range(n - 10)]
    out = []
    for k in lengths[:n]:
        words = [rng.choice(tiny_models.WORDS) for _ in range(k)]
        words[0] = words[0].capitalize()
        out.append(" ".join(words))
    return out


TEXTS = _texts()

_embedders: dict[tuple, Embedder] = {}


def _embedder(directory: Path, **options) -> Embedder:
    """Embedders are read-only once built; share them across tests."""
    key = (str(directory), tuple(sorted(options.items())))
    if key not in _embedders:
        _embedders[key] = Embedder(str(directory), device="cpu", **options)
    return _embedders[key]


def _hf_model(directory: Path, model_type: str) -> nn.Module:
    """The reference module straight from transformers: the encoder stack or the base model."""
    if model_type in tiny_models.ENC_DEC:
        full = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(directory), local_files_only=True)
        return full.get_encoder().eval()
    return transformers.AutoModel.from_pretrained(str(directory), local_files_only=True).eval()


def _hf_batch(directory: Path, texts: list[str], max_length: int = 64) -> dict[str, torch.Tensor]:
    tok = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    return dict(tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))


# ---- every family: shape, order, batching, padding ---------------------------------------------

@pytest.mark.parametrize("model_type", TYPES)
def test_encode_shape_dtype_and_finite(tiny_model_dir, model_type):
    out = _embedder(tiny_model_dir(model_type)).encode(TEXTS)
    assert isinstance(out, np.ndarray)
    assert out.shape == (len(TEXTS), WIDTH) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert len({row.tobytes() for row in out}) == len(set(TEXTS))  # distinct texts, distinct rows


@pytest.mark.parametrize("model_type", TYPES)
def test_order_is_preserved(tiny_model_dir, model_type):
    embedder = _embedder(tiny_model_dir(model_type))
    forward = embedder.encode(TEXTS)
    backward = embedder.encode(TEXTS[::-1])
    np.testing.assert_allclose(backward, forward[::-1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_type", TYPES)
def test_batch_size_invariance(tiny_model_dir, model_type):
    small = Embedder(str(tiny_model_dir(model_type)), device="cpu", batch_tokens=16).encode(TEXTS)
    large = Embedder(str(tiny_model_dir(model_type)), device="cpu", batch_tokens=100_000).encode(TEXTS)
    assert np.abs(small - large).max() <= 1e-5


@pytest.mark.parametrize("model_type", TYPES)
def test_batch_equals_each_text_alone(tiny_model_dir, model_type):
    embedder = _embedder(tiny_model_dir(model_type))
    batch = embedder.encode(TEXTS)
    alone = np.concatenate([embedder.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(batch, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooler", [p for p in POOLERS if p not in DENSE_POOLERS])
def test_a_sparse_pooler_on_a_checkpoint_without_its_masked_language_head_is_refused(tiny_model_dir, pooler):
    with pytest.raises(ModelLoadError, match="cls.predictions"):
        Embedder(str(tiny_model_dir("bert")), device="cpu", pooler=pooler)


@pytest.mark.parametrize("pooler", DENSE_POOLERS)
@pytest.mark.parametrize("model_type", TYPES)
def test_padding_invariance_end_to_end_for_every_pooler(tiny_model_dir, model_type, pooler):
    embedder = _embedder(tiny_model_dir(model_type), pooler=pooler, batch_tokens=100_000)
    short = ["Hello world", "the cat"]
    long = [" ".join(tiny_models.WORDS[i : i + 40]) for i in (0, 10, 20)]
    alone = np.concatenate([embedder.encode([s]) for s in short])
    mixed = embedder.encode([long[0], short[0], long[1], short[1], long[2]])
    assert np.isfinite(mixed).all()
    np.testing.assert_allclose(mixed[[1, 3]], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", TYPES)
def test_mean_pooling_matches_a_plain_transformers_forward(tiny_model_dir, model_type):
    directory = tiny_model_dir(model_type)
    got = _embedder(directory, pooler="mean").encode(TEXTS)
    batch = _hf_batch(directory, TEXTS)
    batch.pop("token_type_ids", None)  # all zeros: what the model uses when it gets none
    with torch.no_grad():
        hidden = _hf_model(directory, model_type)(**batch).last_hidden_state
    mask = batch["attention_mask"].tolist()
    for b in range(len(TEXTS)):
        real = [hidden[b, t].tolist() for t, m in enumerate(mask[b]) if m]
        expected = [sum(v[d] for v in real) / len(real) for d in range(WIDTH)]
        np.testing.assert_allclose(got[b], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", TYPES)
def test_full_tokenizer_length_is_usable(tiny_model_dir, model_type):
    directory = tiny_model_dir(model_type)
    embedder = Embedder(str(directory), device="cpu", max_length=tiny_models.MAX_LEN)
    assert _embedder(directory).max_length == tiny_models.MAX_LEN  # the tokenizer's limit
    long_text = " ".join(tiny_models.WORDS[:100])  # > 64 tokens in every tiny vocabulary
    out = embedder.encode([long_text, "hello"])
    assert np.isfinite(out).all()


# ---- SPEC.md defect 2: the attention mask comes from the tokenizer ------------------------------

def _no_pad_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["pad_token_id"] = None
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_model_without_pad_id_needs_the_tokenizers_mask(tiny_model_dir, tmp_path):
    directory = _no_pad_copy(tiny_model_dir("llama"), tmp_path / "llama-no-pad")
    encoder = HFTextEncoder(str(directory)).eval()
    assert encoder.config.pad_token_id is None
    batch = _hf_batch(tiny_model_dir("llama"), ["hello world", "the big red dog and a small cat"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert not mask.all()  # the first row is padded
    with torch.no_grad():
        with pytest.raises(ConfigError, match="attention_mask"):
            encoder(ids)
        padded = encoder(ids, mask)
        n = int(mask[0].sum())
        alone = encoder(ids[:1, :n], mask[:1, :n])
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=0)
    # And through the Embedder, which always passes the tokenizer's mask.
    out = Embedder(str(directory), device="cpu").encode(["hello world", "the big red dog and a small cat"])
    single = Embedder(str(directory), device="cpu").encode(["hello world"])
    np.testing.assert_allclose(out[0], single[0], atol=1e-5, rtol=0)


def test_last_token_with_pad_equal_to_eos_reads_the_final_eos(tiny_model_dir):
    directory = tiny_model_dir("llama")
    texts = ["hello world", "the big red dog and a small cat read a long book", "good day"]
    batch = _hf_batch(directory, texts)
    tok = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    assert tok.pad_token_id == tok.eos_token_id is not None
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        hidden = _hf_model(directory, "llama")(input_ids=ids, attention_mask=mask).last_hidden_state
    expected, before_eos = [], []
    for b in range(len(texts)):
        last = max(t for t in range(ids.shape[1]) if mask[b, t])
        assert ids[b, last] == tok.eos_token_id  # every text ends in eos, which is also the pad id
        expected.append(hidden[b, last].numpy())
        before_eos.append(hidden[b, last - 1].numpy())
    got = _embedder(directory, pooler="last_token").encode(texts)
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5, rtol=0)
    # The seed's `input_ids != pad_id` mask would have dropped the eos and read the token before.
    assert np.abs(got - np.stack(before_eos)).max() > 1e-3


def test_forward_without_a_mask_never_drops_a_real_eos_that_shares_the_pad_id(tiny_model_dir):
    directory = tiny_model_dir("llama")
    encoder = HFTextEncoder(str(directory)).eval()
    assert encoder.config.pad_token_id == encoder.config.eos_token_id
    batch = _hf_batch(directory, ["hello world", "the big red dog and a small cat"])
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    with torch.no_grad():
        right = encoder(ids, mask)
        try:
            derived = encoder(ids)
        except ConfigError:  # refusing to guess is a correct answer too
            return
    torch.testing.assert_close(derived, right, atol=1e-5, rtol=0)


# ---- SPEC.md defect 3 ------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", ["bert", "t5", "llama"])
def test_mean_pooling_of_an_all_padding_row_is_finite(tiny_model_dir, model_type):
    encoder = HFTextEncoder(str(tiny_model_dir(model_type)), pooler_type="mean").eval()
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = encoder(ids, mask)
    assert torch.isfinite(out).all()


# ---- SPEC.md defect 6: model types missing from the table ----------------------------------------

_UNKNOWN_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "xlnet": lambda: transformers.XLNetConfig(vocab_size=100, d_model=32, n_layer=2, n_head=4, d_inner=37),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64),
}


@pytest.mark.parametrize("model_type", sorted(_UNKNOWN_CONFIGS))
def test_unknown_model_type_is_discovered(model_type):
    from hfenc.model.archs import ARCHS

    assert model_type not in ARCHS
    config = _UNKNOWN_CONFIGS[model_type]()
    torch.manual_seed(0)
    encoder = HFTextEncoder(f"tiny-{model_type}", config=config, pretrained=False).eval()
    assert encoder.arch.discovered is True
    assert encoder.arch.model_type == model_type
    assert encoder.width == 32 and encoder.vocab_size == 100
    blocks = encoder.transformer.get_submodule(encoder.arch.blocks)
    assert isinstance(blocks, nn.ModuleList) and len(blocks) == 2
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = encoder(ids, mask)
        alone = encoder(ids[1:, :3], mask[1:, :3])
    assert out.shape == (2, 32) and torch.isfinite(out).all()
    torch.testing.assert_close(out[1], alone[0], atol=1e-5, rtol=0)


def test_unknown_model_type_works_through_the_embedder_from_disk(tmp_path):
    directory = tmp_path / "tiny-gpt2"
    tok = tiny_models.make_tokenizer("llama")  # any tokenizer whose ids fit the vocabulary
    config = transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    transformers.GPT2Model(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    embedder = Embedder(str(directory), device="cpu")
    assert embedder.encoder.arch.discovered is True
    assert embedder.describe()["architecture_discovered"] is True
    out = embedder.encode(TEXTS[:5])
    assert out.shape == (5, 32) and np.isfinite(out).all()


def test_unknown_model_type_without_a_plausible_layout_is_a_clear_hfenc_error():
    # ALBERT shares one layer group across all its layers: no list of `num_hidden_layers` blocks.
    config = transformers.AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32,
                                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    with pytest.raises(HfencError, match="albert"):
        HFTextEncoder("tiny-albert", config=config, pretrained=False)


def test_unknown_encoder_decoder_type_pools_the_encoder(tmp_path):
    config = transformers.BartConfig(
        vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BartForConditionalGeneration(config).save_pretrained(tmp_path)
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    reference = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path)).get_encoder().eval()
    with torch.no_grad():
        hidden = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        encoder = HFTextEncoder(str(tmp_path), pooler_type="mean").eval()
        got = encoder(ids, mask.bool())
    expected = torch.stack([hidden[b, mask[b].bool()].mean(0) for b in range(2)])
    assert not [n for n, _ in encoder.transformer.named_parameters() if "decoder" in n]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# ---- SPEC.md defect 7: projections and gradient checkpointing ------------------------------------

def test_unknown_proj_type_lists_the_choices(tiny_model_dir):
    with pytest.raises(UnknownChoiceError) as info:
        HFTextEncoder(str(tiny_model_dir("bert")), output_dim=16, proj_type="conv")
    assert isinstance(info.value, LookupError)
    for choice in ("linear", "mlp"):
        assert choice in str(info.value)
    assert "'conv'" in str(info.value)


def test_no_projection_with_a_different_output_dim_is_a_config_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="16"):
        HFTextEncoder(str(tiny_model_dir("bert")), output_dim=16, proj_type=None)
    encoder = HFTextEncoder(str(tiny_model_dir("bert")), output_dim=WIDTH, proj_type=None)
    assert isinstance(encoder.proj, nn.Identity)


def _checkpointing(model: nn.Module) -> bool:
    # transformers 5 renamed is_gradient_checkpointing (deprecated, removed in v6).
    if hasattr(model, "is_activation_checkpointing"):
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing


@pytest.mark.parametrize("model_type", [t for t in TYPES if t != "mpnet"])  # MPNet: no HF support
def test_set_grad_checkpointing_follows_enable(tiny_model_dir, model_type):
    encoder = HFTextEncoder(str(tiny_model_dir(model_type)))
    assert _checkpointing(encoder.transformer) is False
    encoder.set_grad_checkpointing(False)  # the seed turned it on here
    assert _checkpointing(encoder.transformer) is False
    encoder.set_grad_checkpointing(True)
    assert _checkpointing(encoder.transformer) is True
    encoder.set_grad_checkpointing()  # enable defaults to True
    assert _checkpointing(encoder.transformer) is True
    encoder.set_grad_checkpointing(False)
    assert _checkpointing(encoder.transformer) is False


def test_linear_projection_has_the_seeds_shape(tiny_model_dir):
    encoder = HFTextEncoder(str(tiny_model_dir("roberta")), output_dim=16, proj_type="linear")
    proj = {k: v.shape for k, v in encoder.state_dict().items() if k.startswith("proj.")}
    assert proj == {"proj.weight": torch.Size([16, WIDTH])}  # bias-free
    assert isinstance(encoder.proj, nn.Linear) and encoder.proj.bias is None
    ids = torch.tensor([[0, 5, 6, 2]])
    with torch.no_grad():
        assert encoder(ids, torch.ones_like(ids, dtype=torch.bool)).shape == (1, 16)


def test_mlp_projection_has_the_seeds_shape(tiny_model_dir):
    encoder = HFTextEncoder(str(tiny_model_dir("roberta")), output_dim=16, proj_type="mlp")
    hidden = (WIDTH + 16) // 2
    proj = {k: v.shape for k, v in encoder.state_dict().items() if k.startswith("proj.")}
    assert proj == {"proj.0.weight": torch.Size([hidden, WIDTH]), "proj.2.weight": torch.Size([16, hidden])}
    assert isinstance(encoder.proj[1], nn.GELU)
    ids = torch.tensor([[0, 5, 6, 2]])
    with torch.no_grad():
        pooled = encoder.pool(ids, torch.ones_like(ids, dtype=torch.bool))[0]
        got = encoder(ids, torch.ones_like(ids, dtype=torch.bool))
    w0, w2 = encoder.proj[0].weight, encoder.proj[2].weight
    expected = torch.nn.functional.gelu(pooled @ w0.T) @ w2.T
    torch.testing.assert_close(got, expected)


# ---- state dict and outputs --------------------------------------------------------------------

@pytest.mark.parametrize("model_type", TYPES)
def test_state_dict_layout_and_round_trip(tiny_model_dir, model_type):
    directory = tiny_model_dir(model_type)
    trained = HFTextEncoder(str(directory), output_dim=16, proj_type="linear").eval()
    keys = list(trained.state_dict())
    assert keys and all(k.startswith(("transformer.", "proj.")) for k in keys), keys
    assert "proj.weight" in keys
    # A trained tower's weights load into a freshly built (random) one, as open_clip does it.
    fresh = HFTextEncoder(str(directory), output_dim=16, proj_type="linear", pretrained=False).eval()
    fresh.load_state_dict(trained.state_dict(), strict=True)
    batch = _hf_batch(directory, TEXTS[:4])
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(fresh(batch["input_ids"], mask), trained(batch["input_ids"], mask))


@pytest.mark.parametrize("pooler", ["mean", "cls", "cls_last_hidden_state", "last_token"])
def test_output_tokens_returns_projection_and_tokens(tiny_model_dir, pooler):
    directory = tiny_model_dir("bert")
    encoder = HFTextEncoder(str(directory), pooler_type=pooler, output_tokens=True).eval()
    batch = _hf_batch(directory, TEXTS[:3])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        result = encoder(ids, mask.bool())
        hidden = encoder.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        encoder.output_tokens = False
        projected_only = encoder(ids, mask.bool())
    assert isinstance(result, tuple) and len(result) == 2
    projected, tokens = result
    torch.testing.assert_close(projected, projected_only)
    skip = 1 if pooler == "cls" else 0  # open_clip drops the cls position for its ClsPooler only
    assert tokens.shape == (3, ids.shape[1] - skip, WIDTH)
    torch.testing.assert_close(tokens, hidden[:, skip:])


# ---- SPEC.md defect 8: encoder-decoder families keep the encoder only -----------------------------

@pytest.mark.parametrize("model_type", ["t5", "mt5", "umt5", "m2m_100"])
def test_encoder_decoder_loads_only_the_encoder_with_the_checkpoints_weights(tiny_model_dir, model_type):
    directory = tiny_model_dir(model_type)
    encoder = HFTextEncoder(str(directory))
    names = [n for n, _ in encoder.transformer.named_parameters()]
    assert not [n for n in names if "decoder" in n or n.startswith("lm_head")]

    full = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(directory), local_files_only=True)
    reference = full.get_encoder()
    ours = {id(p) for p in encoder.transformer.parameters()}
    assert sum(p.numel() for p in encoder.transformer.parameters()) == sum(
        p.numel() for p in reference.parameters())
    assert len(ours) == len({id(p) for p in reference.parameters()})
    torch.testing.assert_close(
        encoder.transformer.get_input_embeddings().weight, full.get_input_embeddings().weight, atol=0, rtol=0)
    blocks_name = encoder.arch.blocks.rpartition(".")[2]  # the stack's own path: block, layers
    ours_blocks = dict(encoder.transformer.get_submodule(encoder.arch.blocks).named_parameters())
    ref_blocks = dict(reference.get_submodule(blocks_name).named_parameters())
    assert ours_blocks.keys() == ref_blocks.keys()
    for name, tensor in ref_blocks.items():
        torch.testing.assert_close(ours_blocks[name], tensor, atol=0, rtol=0, msg=name)
    norm_name = encoder.arch.final_norm.rpartition(".")[2]
    torch.testing.assert_close(encoder.transformer.get_submodule(encoder.arch.final_norm).weight,
                               reference.get_submodule(norm_name).weight, atol=0, rtol=0)


# ---- SPEC.md defect 9: cls pooling without a trained pooling layer -------------------------------

def test_cls_pooler_without_trained_pooling_weights_warns(tmp_path, tiny_model_dir):
    config = tiny_models.tiny_config("roberta")
    torch.manual_seed(0)
    transformers.RobertaModel(config, add_pooling_layer=False).save_pretrained(tmp_path)
    tiny_models.make_tokenizer("roberta").save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="pooling layer"):
        HFTextEncoder(str(tmp_path), pooler_type="cls")
    # With a trained pooling layer in the checkpoint there is nothing to warn about.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        encoder = HFTextEncoder(str(tiny_model_dir("roberta")), pooler_type="cls")
    assert encoder.uses_pooling_layer


# ---- issue 9: building from a config never takes the config's dtype --------------------------------

@pytest.mark.parametrize("attr,dtype", [("dtype", torch.bfloat16), ("dtype", "float16"), ("torch_dtype", torch.float16)])
@pytest.mark.parametrize("model_type", TYPES)
def test_build_from_a_half_precision_config_stays_float32(model_type, attr, dtype):
    config = tiny_models.tiny_config(model_type)
    setattr(config, attr, dtype)
    assert config.dtype in (torch.bfloat16, torch.float16, "float16")  # really set (torch_dtype: an alias)
    torch.manual_seed(0)
    encoder = HFTextEncoder("tiny", output_dim=16, config=config, proj_type="linear", pretrained=False).eval()
    assert {p.dtype for p in encoder.parameters()} == {torch.float32}
    torch.manual_seed(0)  # the same tower from a config that states no dtype
    plain = HFTextEncoder("tiny", output_dim=16, config=tiny_models.tiny_config(model_type), proj_type="linear",
                          pretrained=False).eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        got = encoder(ids, mask)
        expected = plain(ids, mask)
    assert got.dtype == torch.float32 and got.shape == (2, 16)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
