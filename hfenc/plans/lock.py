"""Lock plans: exactly which parameters fine-tuning with N unlocked layers would freeze.

A plan is a value (LockPlan, hfenc.model.freeze). `plan_lock` builds the pipeline from its config
on the meta device (no weights read, no memory spent on parameters; hfenc.model.meta), puts every
parameter in exactly one ordered group (embeddings, shared, layer.0 .. layer.L-1, final_norm,
pooling_layer, projection, head) and decides what is trainable; `apply_lock` sets requires_grad on
every parameter from it, so applying is idempotent and can unfreeze; the CLI renders it.

Two styles:
- hfenc (default): the last N blocks train; a final norm after the blocks goes with the last
  block; the head (HF pooling layer, projection, a model folder's own modules after the
  transformer) always trains; N = L+1 also unlocks the
  embeddings (and parameters shared by all blocks); 0 <= N <= L+1.
- open_clip: what open_clip's `HFTextEncoder.lock()` really does (SPEC.md defect 5): freeze
  `[embeddings, block_0 .. block_L-1][:-N]`, the whole transformer when N = 0, norms found by the
  literal name `LayerNorm` only. The plan carries one warning per place this differs from hfenc.
  Where open_clip 3.3.0 itself raises (a model type it has no entry for; N != 0 for bert and
  m2m_100) there is no plan: a ConfigError says so (issue 9).
"""

from __future__ import annotations

from typing import Any, Literal

from hfenc.errors import ConfigError, UnknownChoiceError
from hfenc.model.encoder import HFTextEncoder
from hfenc.model.freeze import LockPlan, ParamGroup, apply_lock, hfenc_trainable, num_blocks, param_groups, plan_module
from hfenc.model.meta import meta_model

Style = Literal["hfenc", "open_clip"]
STYLES = ("hfenc", "open_clip")

OPEN_CLIP_VERSION = "3.3.0"
# Issue 9: what open_clip 3.3.0's hf_configs.arch_dict knows, model type -> the `layer_attr` its
# lock() reads (None: the entry has none). Any other model type fails in its constructor; with no
# layer_attr, lock(N != 0) raises KeyError('layer_attr'). Found by running open_clip's own lock()
# (tests/test_open_clip.py), so hfenc says it cannot instead of planning what never runs.
OPEN_CLIP_LAYER_ATTR: dict[str, str | None] = {
    "bert": None, "m2m_100": None, "mt5": "block", "roberta": "layer", "xlm-roberta": "layer",
}


def open_clip_refusal(model_type: str, unlocked: int) -> str | None:
    """Why open_clip 3.3.0 cannot lock this model type with `unlocked` layers, or None if it can."""
    if model_type not in OPEN_CLIP_LAYER_ATTR:
        return (f"open_clip {OPEN_CLIP_VERSION} has no entry for model type {model_type!r}, so its "
                f"HFTextEncoder cannot be built; it knows: {', '.join(sorted(OPEN_CLIP_LAYER_ATTR))}")
    if unlocked and OPEN_CLIP_LAYER_ATTR[model_type] is None:
        return (f"open_clip {OPEN_CLIP_VERSION} cannot lock {model_type} with unlocked_layers={unlocked}: "
                f"its lock() raises KeyError('layer_attr') (the table has no layer_attr for {model_type}); "
                "only unlocked_layers=0 works there")
    return None


def _open_clip_trainable(groups: list[ParamGroup], n: int, freeze_layer_norm: bool) -> set[str]:
    """Simulate the seed's lock() on an all-trainable model."""
    def frozen_unless_norm(name: str) -> bool:  # the seed's test: the literal name 'LayerNorm'
        return (not freeze_layer_norm) and "LayerNorm" in name.split(".")

    trainable = {p for g in groups for p in g.params}
    if not n:
        targets = [g for g in groups if g.kind not in ("projection", "head")]  # the whole transformer
    else:
        ordered = [g for g in groups if g.kind == "embeddings"] + [g for g in groups if g.kind == "block"]
        targets = ordered[:-n]
    for g in targets:
        for p in g.params:
            if not frozen_unless_norm(p):
                trainable.discard(p)
    return trainable


def _span(names: list[str]) -> str:
    """layer.0, layer.1, ..., layer.11 -> 'layer.0-11' (consecutive blocks collapse)."""
    blocks = [int(n.split(".")[1]) for n in names if n.startswith("layer.")]
    others = [n for n in names if not n.startswith("layer.")]
    if len(blocks) > 2 and blocks == list(range(blocks[0], blocks[-1] + 1)):
        return ", ".join([f"layer.{blocks[0]}-{blocks[-1]}", *others])
    return ", ".join(names)


def _differences(groups: list[ParamGroup], ours: set[str], theirs: set[str], n: int, num_layers: int) -> list[str]:
    """One line per distinct way open_clip's lock() differs from hfenc style, naming the groups."""
    notes = []
    if n < 0:
        notes.append(f"unlocked={n} is negative: open_clip freezes the first {-n} module(s) and trains the rest")
    elif n > num_layers + 1:
        notes.append(f"unlocked={n} reaches past the {num_layers} blocks: open_clip freezes nothing, silently")
    found: dict[str, list[str]] = {}
    for g in groups:
        a = {p for p in g.params if p in theirs}
        b = {p for p in g.params if p in ours}
        if a == b:
            continue
        verb, other = ("trainable", "frozen") if len(a) > len(b) else ("frozen", "trainable")
        if (a ^ b) <= set(g.norms):
            text = (f"open_clip leaves their norm parameters {verb}, hfenc style makes them {other} "
                    "(open_clip recognises norms only by the name 'LayerNorm')")
        else:
            why = {
                "final_norm": "open_clip freezes only the embeddings and the blocks",
                "shared": "open_clip freezes only the embeddings and the blocks",
                "pooling_layer": "with unlocked=0 open_clip freezes the whole transformer, head included",
                "block": "open_clip slices [embeddings, blocks][:-unlocked]",
                "embeddings": "open_clip slices [embeddings, blocks][:-unlocked]",
            }.get(g.kind, "")
            text = f"open_clip leaves it {verb}, hfenc style makes it {other} ({why})"
        found.setdefault(text, []).append(g.name)
    notes.extend(f"{_span(names)}: {text}" for text, names in found.items())
    return notes


def plan_lock(
    target: Any,
    unlocked: int,
    *,
    freeze_layer_norm: bool = True,
    style: str = "hfenc",
    pooler: str | None = None,
    proj: str | None = None,
    dim: int | None = None,
) -> LockPlan:
    """Plan for an HFTextEncoder, a transformers config, or a model name (built on meta)."""
    if style not in STYLES:
        raise UnknownChoiceError("lock style", style, STYLES)
    head = None
    if isinstance(target, HFTextEncoder):
        encoder, name = target, target.model_name_or_path
    else:
        encoder, head, name = meta_model(target, pooler=pooler, proj=proj, dim=dim)
    if style == "hfenc":
        return plan_module(encoder, unlocked, head=head, name=name, freeze_layer_norm=freeze_layer_norm)
    num_layers = num_blocks(encoder)
    groups = param_groups(encoder, head)
    ours = hfenc_trainable(groups, min(max(unlocked, 0), num_layers + 1), num_layers, freeze_layer_norm)
    refusal = open_clip_refusal(encoder.config.model_type, unlocked)
    if refusal:
        raise ConfigError(refusal)
    theirs = _open_clip_trainable(groups, unlocked, freeze_layer_norm)
    return LockPlan(
        name, encoder.config.model_type, style, unlocked, num_layers, freeze_layer_norm, tuple(groups),
        frozenset(theirs), tuple(_differences(groups, ours, theirs, unlocked, num_layers)), encoder.pooler_type,
        encoder.config,
    )


__all__ = ["LockPlan", "ParamGroup", "apply_lock", "meta_model", "plan_lock"]
