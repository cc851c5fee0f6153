"""Lock plans: exactly which parameters fine-tuning with N unlocked layers would freeze.

A plan is a value. `plan_lock` builds the encoder from its config on the meta device (no weights
read, no memory spent on parameters), puts every parameter in exactly one ordered group
(embeddings, shared, layer.0 .. layer.L-1, final_norm, pooling_layer, projection) and decides
what is trainable; `apply_lock` sets requires_grad on every parameter from it, so applying is
idempotent and can unfreeze; the CLI renders it.

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

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from .archs import is_norm
from .errors import ConfigError, UnknownChoiceError

if TYPE_CHECKING:
    from .memory import MemoryEstimate

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


@dataclass(frozen=True)
class ParamGroup:
    name: str  # embeddings, shared, layer.3, final_norm, pooling_layer, projection
    kind: str  # embeddings | shared | block | final_norm | pooling_layer | projection
    params: tuple[str, ...]
    sizes: tuple[int, ...]
    norms: tuple[str, ...]  # the params of this group that belong to norm layers (by module type)
    # Issue 15 (memory estimates): each parameter's shape (Adafactor's factored state needs it) and
    # the params that are nn.Linear weights (autocast keeps a 16-bit copy of each trainable one).
    shapes: tuple[tuple[int, ...], ...] = ()
    linear: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return sum(self.sizes)


@dataclass(frozen=True)
class LockPlan:
    model: str
    model_type: str
    style: str
    unlocked: int
    num_layers: int
    freeze_layer_norm: bool
    groups: tuple[ParamGroup, ...]
    trainable: frozenset[str]
    warnings: tuple[str, ...] = field(default=())
    pooler: str = ""  # the pooler the plan assumed (it decides whether BERT's pooling layer exists)
    config: Any = field(default=None, compare=False, repr=False)  # the transformers config planned

    def memory(self, **options: Any) -> MemoryEstimate:
        """What fine-tuning with this plan needs in memory: a MemoryEstimate (see hfenc.memory for
        the options: optimizer, precision, batch, seq_len, grad_checkpointing, attention)."""
        from .memory import estimate_memory

        return estimate_memory(self, **options)

    @property
    def total(self) -> int:
        return sum(g.numel for g in self.groups)

    def group_trainable(self, group: ParamGroup) -> int:
        return sum(s for p, s in zip(group.params, group.sizes) if p in self.trainable)

    @property
    def trainable_count(self) -> int:
        return sum(self.group_trainable(g) for g in self.groups)

    def state(self, group: ParamGroup) -> str:
        n = self.group_trainable(group)
        return "trainable" if n == group.numel else "frozen" if n == 0 else "partly trainable"

    def to_dict(self, params: bool = False) -> dict[str, Any]:
        groups = []
        for g in self.groups:
            entry: dict[str, Any] = {
                "name": g.name, "kind": g.kind, "params": g.numel, "trainable_params": self.group_trainable(g),
                "state": self.state(g),
                "trainable_norm_params": sum(s for p, s in zip(g.params, g.sizes) if p in g.norms and p in self.trainable),
            }
            if params:
                entry["parameters"] = [
                    {"name": p, "numel": s, "trainable": p in self.trainable, "norm": p in g.norms}
                    for p, s in zip(g.params, g.sizes)
                ]
            groups.append(entry)
        return {
            "model": self.model, "model_type": self.model_type, "pooler": self.pooler, "style": self.style,
            "unlocked": self.unlocked,
            "num_layers": self.num_layers, "freeze_layer_norm": self.freeze_layer_norm,
            "total_params": self.total, "trainable_params": self.trainable_count,
            "trainable_share": self.trainable_count / self.total if self.total else 0.0,
            "groups": groups, "warnings": list(self.warnings),
        }


def _groups(encoder: nn.Module, head: nn.Module | None = None) -> list[ParamGroup]:
    """`head`: a model folder's modules around the pooler (sentence-transformers Dense,
    LayerNorm, WeightedLayerPooling), named `head.*`; like the projection, they always train."""
    arch = encoder.arch
    owners = {}
    tree = nn.ModuleDict({"head": head}) if head is not None else None
    for source in (encoder, tree):
        for mod_name, module in (source.named_modules() if source is not None else ()):
            for p_name, _ in module.named_parameters(recurse=False):
                owners[f"{mod_name}.{p_name}" if mod_name else p_name] = module
    num_layers = len(encoder.transformer.get_submodule(arch.blocks))
    prefix_blocks = f"transformer.{arch.blocks}."
    buckets: dict[str, tuple[str, list[tuple[str, int, bool, tuple[int, ...], bool]]]] = {}
    order = ["embeddings", "shared", *[f"layer.{i}" for i in range(num_layers)],
             "final_norm", "pooling_layer", "projection", "head"]
    params = list(encoder.named_parameters())  # tied weights appear once
    if tree is not None:
        params += list(tree.named_parameters())
    for name, param in params:
        if name.startswith("head."):
            key, kind = "head", "head"
        elif name.startswith("proj."):
            key, kind = "projection", "projection"
        elif name.startswith(prefix_blocks):
            key, kind = f"layer.{name[len(prefix_blocks):].split('.', 1)[0]}", "block"
        elif arch.final_norm and name.startswith(f"transformer.{arch.final_norm}."):
            key, kind = "final_norm", "final_norm"
        elif name.startswith("transformer.pooler."):
            key, kind = "pooling_layer", "pooling_layer"
        elif name.startswith(f"transformer.{arch.embeddings}."):
            key, kind = "embeddings", "embeddings"
        else:  # used by every block: relative position tables, embedding projections
            key, kind = "shared", "shared"
        buckets.setdefault(key, (kind, []))[1].append(
            (name, param.numel(), is_norm(owners[name]), tuple(param.shape), isinstance(owners[name], nn.Linear)))
    return [
        ParamGroup(key, buckets[key][0], tuple(p for p, *_ in buckets[key][1]),
                   tuple(s for _, s, *_ in buckets[key][1]),
                   tuple(p for p, _, n, *_ in buckets[key][1] if n),
                   tuple(shape for *_, shape, _ in buckets[key][1]),
                   tuple(p for p, *_, linear in buckets[key][1] if linear))
        for key in order if key in buckets
    ]


def _hfenc_trainable(groups: list[ParamGroup], n: int, num_layers: int, freeze_layer_norm: bool) -> set[str]:
    trainable: set[str] = set()
    for g in groups:
        if g.kind == "block":
            on = int(g.name.split(".")[1]) >= num_layers - n
        elif g.kind == "final_norm":
            on = n >= 1  # goes with the last block
        elif g.kind in ("embeddings", "shared"):
            on = n == num_layers + 1
        else:  # the head always trains
            on = True
        trainable.update(g.params if on else (() if freeze_layer_norm else g.norms))
    return trainable


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
    from .encoder import HFTextEncoder

    if style not in STYLES:
        raise UnknownChoiceError("lock style", style, STYLES)
    head = None
    if isinstance(target, HFTextEncoder):
        encoder, name = target, target.model_name_or_path
    else:
        encoder, head, name = meta_model(target, pooler=pooler, proj=proj, dim=dim)
    num_layers = len(encoder.transformer.get_submodule(encoder.arch.blocks))
    groups = _groups(encoder, head)
    if style == "hfenc" and not 0 <= unlocked <= num_layers + 1:
        raise ConfigError(
            f"unlocked={unlocked} is out of range for {num_layers} blocks; choose 0..{num_layers + 1} "
            f"({num_layers + 1} also unlocks the embeddings)"
        )
    ours = _hfenc_trainable(groups, min(max(unlocked, 0), num_layers + 1), num_layers, freeze_layer_norm)
    warnings: list[str] = []
    trainable = ours
    if style == "open_clip":
        refusal = open_clip_refusal(encoder.config.model_type, unlocked)
        if refusal:
            raise ConfigError(refusal)
        trainable = _open_clip_trainable(groups, unlocked, freeze_layer_norm)
        warnings = _differences(groups, ours, trainable, unlocked, num_layers)
    return LockPlan(
        name, encoder.config.model_type, style, unlocked, num_layers, freeze_layer_norm,
        tuple(groups), frozenset(trainable), tuple(warnings), encoder.pooler_type, encoder.config,
    )


def meta_model(target: Any, pooler: str | None = None, proj: str | None = None,
               dim: int | None = None) -> tuple[Any, nn.Module | None, str]:
    """(HFTextEncoder, head or None, name) on the meta device, as `embed` would build them for a
    model name, a ModelSpec or a config: shapes only, no weights read, no memory spent."""
    from .encoder import HFTextEncoder

    config, name, layout = _config_for(target)
    with torch.device("meta"):
        encoder = HFTextEncoder(
            name, output_dim=dim, config=config, pooler_type=pooler or (layout.pooler if layout else None),
            proj_type=None if proj in (None, "none") else proj, pretrained=False,
        )
        head = _layout_head(layout) if layout is not None else None
    return encoder, head, name


def _layout_head(layout: Any) -> nn.Module | None:
    """The model folder's own modules (token stage, then head), as `embed` builds them."""
    from .head import build_head, build_token_stage

    stage, head = build_token_stage(layout, load=False), build_head(layout, load=False)
    modules = [*(stage or ()), *head]
    return nn.Sequential(*modules) if modules else None


def _config_for(target: Any) -> tuple[Any, str, Any]:
    """(config, name, layout or None) for a model name, a ModelSpec or a bare config."""
    from .spec import ModelSpec, load_spec

    if isinstance(target, (str, Path, ModelSpec)):
        spec = load_spec(str(target) if isinstance(target, Path) else target, config_only=True, bundled_ok=True)
        return spec.config, spec.name, spec.layout
    if hasattr(target, "model_type"):
        return target, str(getattr(target, "_name_or_path", "") or target.model_type), None
    raise TypeError(f"plan_lock takes an HFTextEncoder, a config or a model name, not {type(target).__name__}")


def apply_lock(module: nn.Module, plan: LockPlan) -> None:
    """Set requires_grad on every parameter from the plan (idempotent; can unfreeze)."""
    names = {name for name, _ in module.named_parameters()}
    planned = {p for g in plan.groups for p in g.params}
    if names != planned:
        extra = sorted(names ^ planned)[:3]
        raise ConfigError(f"this lock plan does not fit the module (differs in {', '.join(extra)})")
    for name, param in module.named_parameters():
        param.requires_grad_(name in plan.trainable)


__all__ = ["LockPlan", "ParamGroup", "apply_lock", "meta_model", "plan_lock"]
