"""Which parameters of a text tower train: its parameter groups and the hfenc rule, as a value.

Every parameter of an HFTextEncoder (plus a model folder's own modules, `head.*`) falls in exactly
one ordered group: embeddings, shared, layer.0 .. layer.L-1, final_norm, pooling_layer,
mlm_head (a sparse tower's masked-language head), projection, head. The hfenc rule: the last N blocks train; a final norm after the blocks goes with
the last block; the head (HF pooling layer, a sparse tower's MLM head, projection, the folder's modules) always trains; N = L+1
also unlocks the embeddings (and parameters shared by all blocks). Norms are found by module type.

A LockPlan records the groups and what trains; `apply_lock` sets requires_grad on every parameter
from it, so applying is idempotent and can unfreeze. This lives with the model (HFTextEncoder.lock
uses it); hfenc.plans.lock adds planning by model name, the open_clip style and the rendering.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hfenc.errors import ConfigError
from hfenc.model.archs import is_norm


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


def base_prefix(encoder: Any) -> str:
    """Where the transformer's own modules are, below `transformer.`: "" for an encoder; for a
    sparse tower's masked-language model, its base model (`bert.`), beside its head (`cls.`)."""
    if not getattr(encoder, "sparse", False):
        return ""
    prefix = getattr(encoder.transformer, "base_model_prefix", "")
    return f"{prefix}." if prefix and hasattr(encoder.transformer, prefix) else ""


def param_groups(encoder: nn.Module, head: nn.Module | None = None) -> list[ParamGroup]:
    """`head`: a model folder's modules around the pooler (sentence-transformers Dense,
    LayerNorm, WeightedLayerPooling), named `head.*`; like the projection, they always train."""
    arch = encoder.arch
    owners = {}
    tree = nn.ModuleDict({"head": head}) if head is not None else None
    for source in (encoder, tree):
        for mod_name, module in (source.named_modules() if source is not None else ()):
            for p_name, _ in module.named_parameters(recurse=False):
                owners[f"{mod_name}.{p_name}" if mod_name else p_name] = module
    num_layers = num_blocks(encoder)
    base = f"transformer.{base_prefix(encoder)}"
    prefix_blocks = f"{base}{arch.blocks}."
    buckets: dict[str, tuple[str, list[tuple[str, int, bool, tuple[int, ...], bool]]]] = {}
    order = ["embeddings", "shared", *[f"layer.{i}" for i in range(num_layers)],
             "final_norm", "pooling_layer", "mlm_head", "projection", "head"]
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
        elif arch.final_norm and name.startswith(f"{base}{arch.final_norm}."):
            key, kind = "final_norm", "final_norm"
        elif name.startswith(f"{base}pooler."):
            key, kind = "pooling_layer", "pooling_layer"
        elif name.startswith(f"{base}{arch.embeddings}."):
            key, kind = "embeddings", "embeddings"
        elif base != "transformer." and not name.startswith(base):
            # a sparse tower's masked-language head (its decoder is tied to the word embeddings,
            # which stay in their group): like a projection, it always trains
            key, kind = "mlm_head", "mlm_head"
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


def hfenc_trainable(groups: list[ParamGroup], n: int, num_layers: int, freeze_layer_norm: bool) -> set[str]:
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


def num_blocks(encoder: Any) -> int:
    """L: the number of transformer blocks of an HFTextEncoder."""
    return len(encoder.transformer.get_submodule(base_prefix(encoder) + encoder.arch.blocks))


def plan_module(encoder: Any, unlocked: int, *, head: nn.Module | None = None, name: str | None = None,
                freeze_layer_norm: bool = True) -> LockPlan:
    """The hfenc-style plan for an HFTextEncoder (and the folder's `head`, if any): 0 <= unlocked <= L+1."""
    num_layers = num_blocks(encoder)
    if not 0 <= unlocked <= num_layers + 1:
        raise ConfigError(
            f"unlocked={unlocked} is out of range for {num_layers} blocks; choose 0..{num_layers + 1} "
            f"({num_layers + 1} also unlocks the embeddings)"
        )
    groups = param_groups(encoder, head)
    return LockPlan(
        name or encoder.model_name_or_path, encoder.config.model_type, "hfenc", unlocked, num_layers,
        freeze_layer_norm, tuple(groups), frozenset(hfenc_trainable(groups, unlocked, num_layers, freeze_layer_norm)),
        (), encoder.pooler_type, encoder.config,
    )


def apply_lock(module: nn.Module, plan: LockPlan) -> None:
    """Set requires_grad on every parameter from the plan (idempotent; can unfreeze)."""
    names = {name for name, _ in module.named_parameters()}
    planned = {p for g in plan.groups for p in g.params}
    if names != planned:
        extra = sorted(names ^ planned)[:3]
        raise ConfigError(f"this lock plan does not fit the module (differs in {', '.join(extra)})")
    for name, param in module.named_parameters():
        param.requires_grad_(name in plan.trainable)


__all__ = ["LockPlan", "ParamGroup", "apply_lock", "hfenc_trainable", "num_blocks", "param_groups", "plan_module"]
