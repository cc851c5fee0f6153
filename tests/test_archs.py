"""Architecture table and layout discovery, checked against real (tiny) models of every family."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import tiny_models
from hfenc import HFTextEncoder
from hfenc.model.archs import ARCHS, Arch, discover_arch
from hfenc.errors import HfencError, ModelLoadError
from hfenc.model.poolers import pooler_names

FAMILIES = sorted(ARCHS)

_encoders: dict[str, HFTextEncoder] = {}


@pytest.fixture
def encoder(tiny_model_dir, request) -> HFTextEncoder:
    """The tiny model of `request.param`'s family, loaded through hfenc (shared, read-only)."""
    model_type = request.param
    if model_type not in _encoders:
        _encoders[model_type] = HFTextEncoder(str(tiny_model_dir(model_type)))
    return _encoders[model_type]


def test_table_covers_every_tiny_family_and_every_entry_has_a_tiny_model():
    assert set(ARCHS) >= set(tiny_models.MODEL_TYPES)
    # Contract tests loop over the table: each entry needs a tiny model to be tested against.
    assert set(ARCHS) <= set(tiny_models.MODEL_TYPES)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_entries_are_frozen_dataclasses_keyed_by_their_model_type(model_type):
    arch = ARCHS[model_type]
    assert isinstance(arch, Arch) and dataclasses.is_dataclass(arch)
    assert arch.model_type == model_type
    assert arch.discovered is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        arch.blocks = "elsewhere"  # type: ignore[misc]
    assert arch.default_pooler in pooler_names()


@pytest.mark.parametrize("encoder", FAMILIES, indirect=True)
def test_table_paths_exist_in_the_built_model(encoder):
    arch, model, config = encoder.arch, encoder.transformer, encoder.config
    assert arch is ARCHS[config.model_type]
    blocks = model.get_submodule(arch.blocks)
    assert isinstance(blocks, nn.ModuleList)
    assert len(blocks) == arch.num_layers(config) == tiny_models.LAYERS
    assert len({type(b) for b in blocks}) == 1

    embeddings = model.get_submodule(arch.embeddings)
    input_embeddings = model.get_input_embeddings()
    assert any(m is input_embeddings for m in embeddings.modules()), arch.embeddings
    # The embeddings come before the blocks: no block lives inside the embeddings module.
    assert not any(m is blocks[0] for m in embeddings.modules())

    if arch.final_norm is not None:
        norm = model.get_submodule(arch.final_norm)
        assert "norm" in type(norm).__name__.lower()
        assert tuple(norm.weight.shape) == (arch.width(config),)
        assert not any(m is norm for b in blocks for m in b.modules())

    assert arch.width(config) == encoder.width == tiny_models.HIDDEN
    assert encoder.vocab_size == config.vocab_size > len(tiny_models.WORDS)


@pytest.mark.parametrize("encoder", FAMILIES, indirect=True)
def test_encoder_decoder_families_keep_no_decoder(encoder):
    names = [n for n, _ in encoder.transformer.named_parameters()]
    names += [n for n, _ in encoder.transformer.named_buffers()]
    assert not [n for n in names if "decoder" in n]
    assert not [n for n in names if n.startswith("lm_head")]
    assert encoder.arch.encoder_decoder == (encoder.config.model_type in tiny_models.ENC_DEC)


@pytest.mark.parametrize(
    "encoder",
    FAMILIES,
    indirect=True,
)
def test_discovery_finds_the_tables_layout(encoder):
    model, config = encoder.transformer, encoder.config
    found = discover_arch(model, config)  # as if the model type were not in the table
    table = ARCHS[config.model_type]
    assert found.discovered is True
    assert found.blocks == table.blocks
    assert found.final_norm == table.final_norm
    assert found.width(config) == table.width(config)
    assert found.num_layers(config) == table.num_layers(config)
    if found.embeddings != table.embeddings:
        emb = model.get_submodule(found.embeddings)
        assert any(m is model.get_input_embeddings() for m in emb.modules())


@pytest.mark.parametrize("encoder", FAMILIES, indirect=True)
def test_discovered_embeddings_hold_the_input_embeddings(encoder):
    model = encoder.transformer
    found = discover_arch(model, encoder.config)
    assert any(m is model.get_input_embeddings() for m in model.get_submodule(found.embeddings).modules())


@pytest.mark.parametrize("encoder", ["llama", "qwen2", "mistral", "qwen3"], indirect=True)
def test_discovery_picks_last_token_pooling_for_causal_lm_checkpoints(encoder):
    # The tiny decoders are saved as *ForCausalLM, as published checkpoints are.
    assert any(a.endswith("ForCausalLM") for a in encoder.config.architectures)
    assert discover_arch(encoder.transformer, encoder.config).default_pooler == "last_token"


class _NoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.mix = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))

    def get_input_embeddings(self) -> nn.Module:
        return self.embed


def test_discovery_without_a_block_list_raises_a_clear_model_load_error():
    config = SimpleNamespace(model_type="toy", hidden_size=4, num_hidden_layers=2)
    with pytest.raises(ModelLoadError) as info:
        discover_arch(_NoBlocks(), config)
    assert isinstance(info.value, HfencError)
    message = str(info.value)
    assert "'toy'" in message and "block" in message
    assert info.value.hint and "bert" in info.value.hint  # lists the supported architectures


def test_discovery_with_a_depth_the_config_does_not_state_raises_model_load_error():
    model = nn.Module()
    model.embed = nn.Embedding(10, 4)
    model.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
    model.get_input_embeddings = lambda: model.embed
    config = SimpleNamespace(model_type="toy", hidden_size=4, num_hidden_layers=2)
    with pytest.raises(ModelLoadError, match="'toy'"):
        discover_arch(model, config)


def test_discovery_works_on_the_meta_device():
    import transformers

    config = transformers.GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=100, n_positions=64)
    with torch.device("meta"):
        model = transformers.GPT2Model(config)
    found = discover_arch(model, config)
    assert (found.blocks, found.embeddings, found.final_norm) == ("h", "wte", "ln_f")
    assert found.num_layers(config) == 3 and found.width(config) == 32
    assert found.context_length(config) == 64


@pytest.mark.parametrize("encoder", FAMILIES, indirect=True)
def test_context_length_is_the_number_of_positions_the_model_embeds(encoder, tiny_model_dir):
    # Every tiny family is configured for MAX_LEN (64) real positions, as its tokenizer says
    # (RoBERTa-likes with 64 + 2 position rows, as published checkpoints have 512 + 2).
    config = encoder.config
    if config.model_type in tiny_models.T5_LIKE:
        assert encoder.context_length is None  # relative positions: no fixed limit
        return
    assert encoder.context_length == tiny_models.MAX_LEN
    n = encoder.context_length
    specials = {getattr(config, f"{k}_token_id", None) for k in ("pad", "bos", "eos", "cls", "sep")}
    word_id = next(i for i in range(10, config.vocab_size) if i not in specials)
    ids = torch.full((1, n), word_id)
    with torch.no_grad():
        hidden = encoder.transformer(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert hidden.shape == (1, n, encoder.width) and torch.isfinite(hidden).all()
