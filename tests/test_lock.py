"""Lock plans (issue 4; SPEC.md section 2 defects 4 and 5), checked against references written here.

- Contract over every architecture in the table (tiny configs): the plan partitions the encoder's
  parameters into groups, `apply_lock` sets exactly `plan.trainable`, and applying is idempotent
  and can unfreeze.
- hfenc style against an independent reference built from the arch paths and hand-written norm
  names; open_clip style against a reimplementation, in this file, of the seed's `lock()` as
  SPEC.md describes it, run on the real modules; warnings exactly where the two styles differ.
- Counts against models that transformers builds from the same config (tiny and the 13 bundled
  configs, on the meta device), plus BERT-base's well-known 109,482,240.
- `HFTextEncoder.lock` and the `lock-plan` command (CliRunner: exit codes, stdout vs stderr, --json).
"""

from __future__ import annotations

import json
import time

import pytest
import safetensors
import safetensors.torch
import torch
import transformers
from torch import nn
from transformers.models.m2m_100.modeling_m2m_100 import M2M100Encoder
from typer.testing import CliRunner

import hfenc.model.encoder
import hfenc.model.resolve
import tiny_models
from hfenc.model.archs import ARCHS
from hfenc.cli import app
from hfenc.model.encoder import HFTextEncoder
from hfenc.errors import ConfigError, HfencError
from hfenc.plans.lock import LockPlan, apply_lock, plan_lock
from hfenc.model.resolve import bundled_config, bundled_st_pooler, bundled_config_names

FAMILIES = sorted(ARCHS)
L = tiny_models.LAYERS  # blocks in every tiny model
WIDTH = tiny_models.HIDDEN
DIM = 16  # output_dim of the linear projection in the "head" variant

# Families whose transformers class takes `add_pooling_layer` (BERT's dense+tanh pooler).
POOLING_LAYER_FAMILIES = {"bert", "roberta", "xlm-roberta", "camembert", "mpnet"}
# Encoder-decoder families: only the encoder stack is built (SPEC.md defect 8).
ENCODER_CLASSES = {
    "t5": transformers.T5EncoderModel,
    "mt5": transformers.MT5EncoderModel,
    "umt5": transformers.UMT5EncoderModel,
    "m2m_100": M2M100Encoder,
}
# Norm layers by the attribute names each family gives them (hand-written, independent of the
# module-type detection under test). BERT-likes call them LayerNorm; the rest do not (defect 4).
NORM_ATTRS = {
    "t5": {"layer_norm", "final_layer_norm"},
    "mt5": {"layer_norm", "final_layer_norm"},
    "umt5": {"layer_norm", "final_layer_norm"},
    "m2m_100": {"self_attn_layer_norm", "final_layer_norm", "layer_norm"},
    "modernbert": {"norm", "attn_norm", "mlp_norm", "final_norm"},
    "llama": {"input_layernorm", "post_attention_layernorm", "norm"},
    "mistral": {"input_layernorm", "post_attention_layernorm", "norm"},
    "qwen2": {"input_layernorm", "post_attention_layernorm", "norm"},
    "qwen3": {"input_layernorm", "post_attention_layernorm", "norm", "q_norm", "k_norm"},
    "distilbert": {"LayerNorm", "sa_layer_norm", "output_layer_norm"},
}
# What open_clip 3.3.0 itself can lock (issue 9; hand-written here, checked against the real
# open_clip in test_open_clip.py): the families its arch_dict has, and of those the ones whose entry
# names a layer_attr, which its lock(N != 0) reads. Elsewhere style="open_clip" refuses.
OPEN_CLIP_FAMILIES = {"bert", "roberta", "xlm-roberta", "mt5", "m2m_100"}
OPEN_CLIP_WITH_LAYER_ATTR = {"roberta", "xlm-roberta", "mt5"}


def open_clip_can(model_type: str, k: int) -> bool:
    return model_type in OPEN_CLIP_FAMILIES and (k == 0 or model_type in OPEN_CLIP_WITH_LAYER_ATTR)


def refused_in_open_clip_style(encoder: HFTextEncoder, k: int, **kwargs) -> bool:
    """True, after checking that plan_lock refuses, where open_clip 3.3.0 cannot lock with k."""
    if open_clip_can(encoder.config.model_type, k):
        return False
    with pytest.raises(ConfigError, match=r"^open_clip 3\.3\.0 (cannot lock|has no entry for)"):
        plan_lock(encoder, k, style="open_clip", **kwargs)
    return True

# ---- tiny encoders, built once per module ---------------------------------------------------

_configs: dict[str, transformers.PretrainedConfig] = {}
_encoders: dict[tuple[str, str], HFTextEncoder] = {}


def tiny_config(model_type: str) -> transformers.PretrainedConfig:
    if model_type not in _configs:
        _configs[model_type] = tiny_models.tiny_config(model_type)
    return _configs[model_type]


def tiny_encoder(model_type: str, variant: str = "plain") -> HFTextEncoder:
    """plain: the family's default pooler, no projection; head: cls pooler + linear projection."""
    key = (model_type, variant)
    if key not in _encoders:
        kwargs = {} if variant == "plain" else dict(pooler_type="cls", proj_type="linear", output_dim=DIM)
        _encoders[key] = HFTextEncoder("tiny", config=tiny_config(model_type), pretrained=False, **kwargs)
    return _encoders[key]


def grad_map(module: nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in module.named_parameters()}


def trainable_names(module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def names_in(encoder: HFTextEncoder, path: str) -> set[str]:
    """Full parameter names (as encoder.named_parameters() spells them) of a transformer submodule."""
    ids = {id(p) for p in encoder.transformer.get_submodule(path).parameters()}
    return {name for name, p in encoder.named_parameters() if id(p) in ids}


def norm_names(encoder: HFTextEncoder) -> set[str]:
    """Parameters of norm layers, by the attribute name each family uses (see NORM_ATTRS)."""
    attrs = NORM_ATTRS.get(encoder.config.model_type, {"LayerNorm"})
    return {n for n, _ in encoder.named_parameters() if n.startswith("transformer.") and n.split(".")[-2] in attrs}


def hfenc_reference(encoder: HFTextEncoder, n: int, freeze_layer_norm: bool) -> set[str]:
    """hfenc style from its definition (issue 4): the last n blocks train, a final norm goes with
    the last block, the head always trains, n = L+1 unlocks everything else too; with
    freeze_layer_norm=False every norm layer trains as well."""
    arch = ARCHS[encoder.config.model_type]
    blocks = encoder.transformer.get_submodule(arch.blocks)
    everything = {name for name, _ in encoder.named_parameters()}
    if n == len(blocks) + 1:
        return everything
    on = {name for name in everything if name.startswith("proj.") or name.startswith("transformer.pooler.")}
    for i in range(len(blocks) - n, len(blocks)):
        on |= names_in(encoder, f"{arch.blocks}.{i}")
    if arch.final_norm and n >= 1:
        on |= names_in(encoder, arch.final_norm)
    if not freeze_layer_norm:
        on |= norm_names(encoder)
    return on


def open_clip_lock(encoder: HFTextEncoder, k: int, freeze_layer_norm: bool) -> set[str]:
    """The seed's `lock()` (SPEC.md defect 5) restated and run on the real modules of an
    all-trainable tower; returns the names left trainable. Leaves the encoder all-trainable."""
    arch = ARCHS[encoder.config.model_type]
    model = encoder.transformer
    for p in encoder.parameters():
        p.requires_grad_(True)

    def freeze(named_params) -> None:  # norms recognised only by the literal name 'LayerNorm'
        for name, p in named_params:
            p.requires_grad = (not freeze_layer_norm) if "LayerNorm" in name.split(".") else False

    if not k:  # whole transformer, pooling layer included; the projection untouched
        freeze(model.named_parameters())
    else:
        modules = [model.get_submodule(arch.embeddings), *model.get_submodule(arch.blocks)][:-k]
        for module in modules:
            freeze(module.named_parameters())
    left = trainable_names(encoder)
    for p in encoder.parameters():
        p.requires_grad_(True)
    return left


def reference_numel(config, pooling_layer: bool) -> int:
    """Parameters of the bare encoder transformers builds from `config` (meta device; tied once)."""
    model_type = config.model_type
    with torch.device("meta"):
        if model_type in ENCODER_CLASSES:
            model = ENCODER_CLASSES[model_type](config)
        elif model_type in POOLING_LAYER_FAMILIES:
            model = transformers.AutoModel.from_config(config, add_pooling_layer=pooling_layer)
        else:
            model = transformers.AutoModel.from_config(config)
    return sum(p.numel() for p in model.parameters())


# ---- contract over every architecture ------------------------------------------------------

def test_tiny_models_cover_every_architecture():
    assert set(ARCHS) <= set(tiny_models.MODEL_TYPES)
    for model_type in FAMILIES:
        assert len(tiny_encoder(model_type).transformer.get_submodule(ARCHS[model_type].blocks)) == L


@pytest.mark.parametrize("variant", ["plain", "head"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_groups_partition_the_parameters_and_apply_sets_exactly_the_plan(model_type, variant):
    encoder = tiny_encoder(model_type, variant)
    params = dict(encoder.named_parameters())
    for style in ("hfenc", "open_clip"):
        for n in (0, 1, L, L + 1):
            for fln in (True, False):
                if style == "open_clip" and refused_in_open_clip_style(encoder, n, freeze_layer_norm=fln):
                    continue
                plan = plan_lock(encoder, n, freeze_layer_norm=fln, style=style)
                assert isinstance(plan, LockPlan) and plan.num_layers == L
                listed = [p for g in plan.groups for p in g.params]
                assert len(listed) == len(set(listed)), "a parameter is in two groups"
                assert set(listed) == set(params)
                for g in plan.groups:
                    assert g.params, g.name
                    assert list(g.sizes) == [params[p].numel() for p in g.params]
                    assert set(g.norms) <= set(g.params)
                assert plan.total == sum(p.numel() for p in params.values())
                assert plan.trainable <= set(params)
                assert plan.trainable_count == sum(params[p].numel() for p in plan.trainable)
                apply_lock(encoder, plan)
                assert trainable_names(encoder) == set(plan.trainable), (style, n, fln)

    names = [g.name for g in plan.groups]
    assert [f"layer.{i}" for i in range(L)] == [x for x in names if x.startswith("layer.")]
    kinds = {g.name: g.kind for g in plan.groups}
    has_pooler = variant == "head" and model_type in POOLING_LAYER_FAMILIES or (
        variant == "plain" and model_type == "bert")  # only bert defaults to the cls pooler's layer
    assert ("pooling_layer" in kinds) == has_pooler
    if has_pooler:
        assert set(next(g for g in plan.groups if g.name == "pooling_layer").params) == {
            "transformer.pooler.dense.weight", "transformer.pooler.dense.bias"}
    if variant == "head":
        assert next(g for g in plan.groups if g.kind == "projection").params == ("proj.weight",)
    else:
        assert "projection" not in kinds  # identity projection: no parameters
    assert ("final_norm" in kinds) == (ARCHS[model_type].final_norm is not None)


@pytest.mark.parametrize("variant", ["plain", "head"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_apply_is_idempotent_and_unfreezes(model_type, variant):
    encoder = tiny_encoder(model_type, variant)
    for style in ("hfenc", "open_clip"):
        for fln in (True, False):
            if style == "open_clip" and refused_in_open_clip_style(encoder, 0, freeze_layer_norm=fln):
                continue
            none = plan_lock(encoder, 0, freeze_layer_norm=fln, style=style)
            for n in (1, L, L + 1):
                if style == "open_clip" and refused_in_open_clip_style(encoder, n, freeze_layer_norm=fln):
                    continue
                wide = plan_lock(encoder, n, freeze_layer_norm=fln, style=style)
                apply_lock(encoder, wide)
                once = grad_map(encoder)
                apply_lock(encoder, none)
                assert grad_map(encoder) != once  # something really changed in between
                apply_lock(encoder, wide)
                apply_lock(encoder, wide)
                assert grad_map(encoder) == once, (style, n, fln)


@pytest.mark.parametrize("variant", ["plain", "head"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_hfenc_style_matches_its_definition(model_type, variant):
    encoder = tiny_encoder(model_type, variant)
    assert norm_names(encoder), "the hand-written norm names found nothing"
    for n in range(0, L + 2):
        for fln in (True, False):
            plan = plan_lock(encoder, n, freeze_layer_norm=fln)
            assert plan.warnings == ()
            assert set(plan.trainable) == hfenc_reference(encoder, n, fln), (n, fln)


@pytest.mark.parametrize("model_type", ["bert", "t5", "modernbert", "m2m_100"])
@pytest.mark.parametrize("n", [-1, L + 2, L + 5])
def test_hfenc_style_refuses_out_of_range(model_type, n):
    with pytest.raises(ConfigError, match=rf"0\.\.{L + 1}"):
        plan_lock(tiny_encoder(model_type), n)
    with pytest.raises(ConfigError, match=rf"0\.\.{L + 1}"):
        tiny_encoder(model_type).lock(n)


# ---- hfenc semantics, spelled out on bert (pooling layer) and families with a final norm -----

def _group(plan: LockPlan, name: str) -> set[str]:
    return set(next(g for g in plan.groups if g.name == name).params)


def test_bert_last_n_blocks_and_head_always_trainable():
    enc = tiny_encoder("bert", "head")
    all_names = {n for n, _ in enc.named_parameters()}
    head = {"transformer.pooler.dense.weight", "transformer.pooler.dense.bias", "proj.weight"}
    block = [{n for n in all_names if n.startswith(f"transformer.encoder.layer.{i}.")} for i in range(L)]
    assert all(len(b) == 16 for b in block)
    assert plan_lock(enc, 0).trainable == head
    assert plan_lock(enc, 1).trainable == head | block[1]
    assert plan_lock(enc, 2).trainable == head | block[0] | block[1]
    embeddings = {n for n in all_names if n.startswith("transformer.embeddings.")}
    assert plan_lock(enc, 2).trainable == all_names - embeddings
    assert plan_lock(enc, 3).trainable == all_names
    plan = plan_lock(enc, 1)
    assert [plan.state(g) for g in plan.groups] == ["frozen", "frozen", "trainable", "trainable", "trainable"]


@pytest.mark.parametrize("model_type,final_norm", [
    ("t5", "transformer.final_layer_norm.weight"),
    ("modernbert", "transformer.final_norm.weight"),
    ("llama", "transformer.norm.weight"),
])
def test_final_norm_trains_with_the_last_block(model_type, final_norm):
    enc = tiny_encoder(model_type, "head")
    for n in range(L + 2):
        plan = plan_lock(enc, n)
        assert (final_norm in plan.trainable) == (n >= 1), n
        assert "proj.weight" in plan.trainable  # the head trains even at n=0
    assert _group(plan_lock(enc, 1), "final_norm") == {final_norm}
    assert plan_lock(enc, 0).trainable == {"proj.weight"}


def test_mpnet_shared_relative_bias_unlocks_only_with_the_embeddings():
    enc = tiny_encoder("mpnet")
    bias = "transformer.encoder.relative_attention_bias.weight"
    assert _group(plan_lock(enc, 1), "shared") == {bias}
    for n in range(L + 2):
        plan = plan_lock(enc, n)
        assert (bias in plan.trainable) == (n == L + 1), n
        assert ("transformer.embeddings.word_embeddings.weight" in plan.trainable) == (n == L + 1), n


@pytest.mark.parametrize("model_type", ["t5", "mt5", "modernbert", "llama", "qwen3", "m2m_100", "bert"])
def test_freeze_layer_norm_false_keeps_every_norm_trainable(model_type):
    """SPEC.md defect 4: norms are found by module type, not by the literal name 'LayerNorm'."""
    enc = tiny_encoder(model_type, "head")
    norms = norm_names(enc)
    assert norms
    for n in range(L + 1):
        kept = plan_lock(enc, n, freeze_layer_norm=False).trainable
        frozen = plan_lock(enc, n, freeze_layer_norm=True).trainable
        assert kept == frozen | norms, n
    assert plan_lock(enc, 0, freeze_layer_norm=False).trainable == norms | {"proj.weight"} | (
        {"transformer.pooler.dense.weight", "transformer.pooler.dense.bias"} if model_type == "bert" else set())


# ---- open_clip style: the seed's lock(), reproduced ------------------------------------------

OPEN_CLIP_KS = (-1, 0, 1, 2, L, L + 1, L + 3)


@pytest.mark.parametrize("variant", ["plain", "head"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_open_clip_style_reproduces_the_seed(model_type, variant):
    encoder = tiny_encoder(model_type, variant)
    for k in OPEN_CLIP_KS:
        for fln in (True, False):
            if refused_in_open_clip_style(encoder, k, freeze_layer_norm=fln):
                continue
            plan = plan_lock(encoder, k, freeze_layer_norm=fln, style="open_clip")
            theirs = open_clip_lock(encoder, k, fln)
            assert set(plan.trainable) == theirs, (k, fln)
            apply_lock(encoder, plan)
            assert trainable_names(encoder) == theirs


@pytest.mark.parametrize("variant", ["plain", "head"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_open_clip_warnings_exactly_where_the_styles_differ(model_type, variant):
    encoder = tiny_encoder(model_type, variant)
    for k in OPEN_CLIP_KS:
        if k == L + 1:
            continue  # see test_open_clip_style_at_l_plus_1_agrees_and_does_not_warn
        for fln in (True, False):
            if refused_in_open_clip_style(encoder, k, freeze_layer_norm=fln):
                continue
            warnings = plan_lock(encoder, k, freeze_layer_norm=fln, style="open_clip").warnings
            text = "\n".join(warnings)
            theirs = open_clip_lock(encoder, k, fln)
            if k < 0:
                assert "negative" in text
                continue
            if k > L + 1:
                assert "freezes nothing" in text
                continue
            ours = hfenc_reference(encoder, k, fln)
            assert bool(warnings) == (ours != theirs), (k, fln, warnings)
            groups = plan_lock(encoder, k, freeze_layer_norm=fln).groups
            for g in groups:  # every group that differs is named
                if (set(g.params) & ours) != (set(g.params) & theirs):
                    assert g.name in text, (k, fln, g.name, warnings)


@pytest.mark.parametrize("model_type", ["roberta", "mt5", "bert", "t5", "mpnet"])
def test_open_clip_style_at_l_plus_1_agrees_and_does_not_warn(model_type):
    encoder = tiny_encoder(model_type)
    for fln in (True, False):
        if refused_in_open_clip_style(encoder, L + 1, freeze_layer_norm=fln):  # bert, t5, mpnet
            continue
        plan = plan_lock(encoder, L + 1, freeze_layer_norm=fln, style="open_clip")
        assert set(plan.trainable) == plan_lock(encoder, L + 1, freeze_layer_norm=fln).trainable
        assert plan.warnings == ()


def test_open_clip_warnings_examples():
    bert_cls = tiny_encoder("bert", "head")
    w = plan_lock(bert_cls, 0, style="open_clip").warnings
    assert len(w) == 1 and "pooling_layer" in w[0]
    assert {"transformer.pooler.dense.weight"}.isdisjoint(plan_lock(bert_cls, 0, style="open_clip").trainable)

    # Issue 9: open_clip 3.3.0's bert entry has no layer_attr, so its lock(1) raises: no plan.
    bert_mean = HFTextEncoder("tiny", config=tiny_config("bert"), pooler_type="mean", pretrained=False)
    with pytest.raises(ConfigError, match=r"cannot lock bert with unlocked_layers=1: its lock\(\) raises "
                                          r"KeyError\('layer_attr'\)"):
        plan_lock(bert_mean, 1, style="open_clip")
    roberta_mean = HFTextEncoder("tiny", config=tiny_config("roberta"), pooler_type="mean", pretrained=False)
    assert plan_lock(roberta_mean, 1, style="open_clip").warnings == ()
    assert plan_lock(roberta_mean, 1, freeze_layer_norm=False, style="open_clip").warnings == ()

    # mpnet (whose shared relative bias open_clip would leave trainable) is not in open_clip at all.
    with pytest.raises(ConfigError, match="has no entry for model type 'mpnet'"):
        plan_lock(tiny_encoder("mpnet"), 1, style="open_clip")

    w = plan_lock(tiny_encoder("roberta"), L + 3, style="open_clip").warnings
    assert any("freezes nothing" in x for x in w)
    assert plan_lock(tiny_encoder("roberta"), L + 3, style="open_clip").trainable == {
        n for n, _ in tiny_encoder("roberta").named_parameters()}

    with pytest.raises(ConfigError, match="has no entry for model type 't5'"):
        plan_lock(tiny_encoder("t5"), 1, style="open_clip")
    t5 = tiny_encoder("mt5")  # the T5 family open_clip knows
    assert plan_lock(t5, 1, style="open_clip").warnings == ()
    w = plan_lock(t5, 0, freeze_layer_norm=False, style="open_clip").warnings
    assert len(w) == 1 and "norm" in w[0] and "LayerNorm" in w[0]
    # open_clip cannot see T5's norms: freeze_layer_norm=False changes nothing there (defect 4)
    assert plan_lock(t5, 0, freeze_layer_norm=False, style="open_clip").trainable == \
        plan_lock(t5, 0, style="open_clip").trainable


def test_unknown_style_lists_the_choices():
    with pytest.raises(HfencError, match="hfenc.*open_clip"):
        plan_lock(tiny_encoder("bert"), 1, style="bogus")


def test_apply_refuses_a_plan_for_another_module():
    plan = plan_lock(tiny_encoder("bert", "head"), 1)
    with pytest.raises(ConfigError, match="does not fit"):
        apply_lock(tiny_encoder("bert", "plain"), plan)


# ---- parameter counts against transformers ---------------------------------------------------

@pytest.mark.parametrize("variant", ["plain", "head"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_tiny_totals_match_transformers(model_type, variant):
    has_pooler = model_type in POOLING_LAYER_FAMILIES if variant == "head" else model_type == "bert"
    proj = WIDTH * DIM if variant == "head" else 0  # Linear(width, dim, bias=False)
    plan = plan_lock(tiny_encoder(model_type, variant), 1)
    assert plan.total == reference_numel(tiny_models.tiny_config(model_type), has_pooler) + proj


def test_mlp_projection_is_counted():
    plan = plan_lock(tiny_config("bert"), 1, proj="mlp", dim=DIM, pooler="mean")
    hidden = (WIDTH + DIM) // 2
    assert _group(plan, "projection") == {"proj.0.weight", "proj.2.weight"}
    assert plan.total == reference_numel(tiny_models.tiny_config("bert"), False) + WIDTH * hidden + hidden * DIM


@pytest.fixture
def no_weights(monkeypatch):
    """Every way to read weights or find a model folder raises; records what plan_lock builds."""
    def refuse(*args, **kwargs):
        raise AssertionError("a lock plan must not read weights or resolve a model")

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", refuse)
    monkeypatch.setattr(hfenc.model.resolve, "resolve_model", refuse)
    built: list[nn.Module] = []
    for name in ("build_transformer_from_config", "build_projection"):
        original = getattr(hfenc.model.encoder, name)

        def record(*args, _original=original, **kwargs):
            module = _original(*args, **kwargs)
            built.append(module)
            return module

        monkeypatch.setattr(hfenc.model.encoder, name, record)
    return built


def test_bundled_configs_are_the_thirteen_expected():
    assert len(bundled_config_names()) == 13
    assert {"bert-base-uncased", "xlm-roberta-large", "google/mt5-xl",
            "facebook/nllb-200-distilled-600M"} <= set(bundled_config_names())


@pytest.mark.parametrize("name", bundled_config_names())
def test_bundled_totals_match_transformers_on_meta_without_weights(name, no_weights):
    plan = plan_lock(name, 1)
    transformer = no_weights[0]
    assert all(p.is_meta for p in transformer.parameters())
    config = bundled_config(name)
    has_pooler = any(g.kind == "pooling_layer" for g in plan.groups)
    # bert defaults to cls (with its pooler); a sentence-transformers model pools its own way
    assert has_pooler == (config.model_type == "bert" and bundled_st_pooler(name) is None)
    assert plan.model_type == config.model_type
    assert plan.total == reference_numel(config, has_pooler)


def test_bert_base_total_is_the_well_known_count():
    assert plan_lock("bert-base-uncased", 1).total == 109_482_240


def test_xlm_roberta_large_plans_offline_on_meta(no_weights):
    plan = plan_lock("FacebookAI/xlm-roberta-large", 2, proj="linear", dim=512)
    transformer, proj = no_weights
    assert all(p.is_meta for m in (transformer, proj) for p in m.parameters())
    assert plan.num_layers == 24
    assert _group(plan, "projection") == {"proj.weight"}
    config = bundled_config("xlm-roberta-large")
    assert plan.total == reference_numel(config, False) + 1024 * 512
    assert _group(plan, "layer.23") <= plan.trainable and not _group(plan, "layer.21") & plan.trainable


# ---- HFTextEncoder.lock ----------------------------------------------------------------------

def test_encoder_lock_uses_the_plan_can_unfreeze_and_never_prints(tiny_model_dir, capsys):
    enc = HFTextEncoder(str(tiny_model_dir("bert")))  # loaded weights, pooler cls (bert's default)
    capsys.readouterr()
    plan = enc.lock(0)
    assert isinstance(plan, LockPlan)
    assert trainable_names(enc) == set(plan.trainable) == set(plan_lock(enc, 0).trainable)
    layer0 = {n for n, _ in enc.named_parameters() if n.startswith("transformer.encoder.layer.0.")}
    assert not layer0 & trainable_names(enc)
    plan = enc.lock(2)  # the seed only ever froze: a second, wider call could not unfreeze
    assert layer0 <= trainable_names(enc) == set(plan.trainable)
    plan = enc.lock(1, freeze_layer_norm=False)
    assert trainable_names(enc) == set(plan.trainable) == hfenc_reference(enc, 1, False)
    assert capsys.readouterr() == ("", "")


def test_encoder_lock_on_t5_keeps_norms_with_freeze_layer_norm_false(capsys):
    enc = tiny_encoder("t5")
    enc.lock(0, freeze_layer_norm=False)
    assert trainable_names(enc) == norm_names(enc)
    enc.lock(0)
    assert trainable_names(enc) == set()
    assert capsys.readouterr() == ("", "")


# ---- the lock-plan command --------------------------------------------------------------------

H, F = 768, 3072  # bert-base hidden and intermediate sizes
BERT_LAYER = 4 * (H * H + H) + 2 * 2 * H + (H * F + F) + (F * H + H)  # q,k,v,o + 2 norms + FFN
BERT_POOLER = H * H + H


def invoke(*args: str, columns: int = 160):
    # Rich sizes tables from COLUMNS (or the real terminal): pin it so the output is the same anywhere.
    return CliRunner().invoke(app, ["lock-plan", *args], env={"COLUMNS": str(columns)})


def test_cli_renders_the_plan():
    result = invoke("bert-base-uncased", "--unlocked", "3")
    assert result.exit_code == 0, result.output
    assert "layer.11" in result.stdout and "trainable" in result.stdout and "frozen" in result.stdout
    assert "109,482,240" in result.stdout
    trainable = 3 * BERT_LAYER + BERT_POOLER
    assert f"{trainable:,}" in result.stdout
    assert result.stderr == ""


def test_cli_json():
    result = invoke("bert-base-uncased", "--unlocked", "3", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["total_params"] == 109_482_240
    groups = {g["name"]: g for g in data["groups"]}
    on = {"layer.9", "layer.10", "layer.11", "pooling_layer"}
    assert data["trainable_params"] == sum(groups[name]["params"] for name in on)
    assert all(groups[f"layer.{i}"]["params"] == BERT_LAYER for i in range(12))
    assert groups["pooling_layer"]["params"] == BERT_POOLER
    for name, g in groups.items():
        assert g["state"] == ("trainable" if name in on else "frozen"), name
    assert data["warnings"] == [] and data["style"] == "hfenc" and data["unlocked"] == 3


def test_cli_json_params_lists_every_parameter():
    result = invoke("bert-base-uncased", "--unlocked", "3", "--json", "--params")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    listed = {p["name"]: p for g in data["groups"] for p in g["parameters"]}
    assert sum(p["numel"] for p in listed.values()) == 109_482_240
    assert listed["transformer.encoder.layer.11.output.dense.weight"]["trainable"] is True
    assert listed["transformer.encoder.layer.8.output.dense.weight"]["trainable"] is False
    assert listed["transformer.encoder.layer.8.output.LayerNorm.weight"]["norm"] is True


def test_cli_params_lists_parameter_names():
    result = invoke("bert-base-uncased", "--unlocked", "3", "--params", columns=200)
    assert result.exit_code == 0, result.output
    assert "transformer.encoder.layer.11.output.dense.weight" in result.stdout
    assert "transformer.embeddings.word_embeddings.weight" in result.stdout


def test_cli_params_names_survive_a_piped_80_column_stdout():
    result = invoke("bert-base-uncased", "--unlocked", "3", "--params", columns=80)
    assert result.exit_code == 0, result.output
    assert "transformer.encoder.layer.11.output.dense.weight" in result.stdout


def test_cli_out_of_range_is_a_one_line_error():
    result = invoke("bert-base-uncased", "--unlocked", "99")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("Error:") and "0..13" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_cli_open_clip_style_warns_on_stderr():
    result = invoke("bert-base-uncased", "--unlocked", "0", "--style", "open_clip", "--pooler", "cls")
    assert result.exit_code == 0, result.output
    lines = [x for x in result.stderr.splitlines() if x.startswith("Warning:")]
    assert len(lines) == 1 and "pooling_layer" in lines[0]
    assert "Warning" not in result.stdout
    assert "0 trainable" in result.stdout
    data = json.loads(invoke("bert-base-uncased", "--unlocked", "0", "--style", "open_clip",
                             "--pooler", "cls", "--json").stdout)
    assert data["trainable_params"] == 0 and len(data["warnings"]) == 1


def test_cli_unknown_model_fails_fast():
    start = time.perf_counter()
    result = invoke("nobody-hfenc-tests/no-such-model", "--unlocked", "1")
    elapsed = time.perf_counter() - start
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "not found" in result.stderr
    assert "Traceback" not in result.output
    assert elapsed < 15  # transformers' offline retries take ~27 s; hfenc fails before them


def test_cli_unknown_style_lists_the_choices():
    result = invoke("bert-base-uncased", "--unlocked", "1", "--style", "bogus")
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "hfenc" in result.stderr and "open_clip" in result.stderr
    assert "Traceback" not in result.output
