"""Poolers: one vector per sequence from a transformer's hidden states.

A registry filled by a decorator. Each pooler has a short stable name (what the CLI takes) and the
open_clip seed's snake_case class name (`MeanPooler` -> `mean_pooler`) as an alias, so seed
configs keep working. The first docstring line of each class is what `hfenc poolers` shows.

Every pooler takes the tokenizer's *boolean* attention mask and is exact under any padding, left
or right: values at masked positions never reach the result (SPEC.md defects 1-3). Sums run in
float32 and the result is float32, whatever the model's dtype. Inputs are never modified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import UnknownChoiceError


@dataclass(frozen=True)
class PoolerInfo:
    name: str
    aliases: tuple[str, ...]
    description: str
    cls: type[nn.Module]


_POOLERS: dict[str, PoolerInfo] = {}
_ALIASES: dict[str, str] = {}


def _camel2snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def register_pooler(name: str, *aliases: str):
    """Class decorator: register a pooler under `name`, its snake_case class name and `aliases`."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        seed_name = _camel2snake(cls.__name__)
        all_aliases = tuple(dict.fromkeys(a for a in (seed_name, *aliases) if a != name))
        taken = [key for key in (name, *all_aliases) if key in _ALIASES]
        if taken:  # check every name before adding any, so a clash leaves the registry intact
            raise ValueError(f"pooler name {taken[0]!r} is registered twice")
        for key in (name, *all_aliases):
            _ALIASES[key] = name
        doc = (cls.__doc__ or "").strip().splitlines()
        _POOLERS[name] = PoolerInfo(name, all_aliases, doc[0] if doc else "", cls)
        cls.name = name
        return cls

    return wrap


def pooler_names() -> list[str]:
    return sorted(_POOLERS)


def pooler_infos() -> list[PoolerInfo]:
    return [_POOLERS[n] for n in pooler_names()]


def canonical_pooler(name: str) -> str:
    """The registry name for `name` or one of its aliases; a clear error otherwise."""
    try:
        return _ALIASES[name]
    except KeyError:
        raise UnknownChoiceError("pooler", name, _POOLERS) from None


def get_pooler(name: str) -> nn.Module:
    return _POOLERS[canonical_pooler(name)].cls()


def _hidden(x: Any) -> torch.Tensor:
    return x.last_hidden_state if hasattr(x, "last_hidden_state") else x[0]


def _gather(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """hidden[b, index[b]] for every row b."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def first_real_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of the first real token per row (0 with right padding; later with left padding)."""
    return mask.int().argmax(dim=1)


def last_real_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of the last real token per row, for left and right padding alike."""
    length = mask.shape[1]
    return length - 1 - mask.flip(1).int().argmax(dim=1)


def _masked_sum(hidden: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Zero padding first: a weight of 0 times inf/NaN (fp16 overflow at a pad position) is NaN.
    clean = hidden.float().masked_fill(~mask.unsqueeze(-1), 0.0)
    return torch.einsum("bt,btd->bd", weights.float(), clean)


class Pooler(nn.Module):
    """Base: subclasses implement pool(hidden, mask, outputs)."""

    name = ""
    uses_pooler_output = False  # True when the model's own pooling layer (BERT's dense+tanh) is used

    def forward(self, x: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.bool()
        return self.pool(_hidden(x), mask, x).float()

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor, outputs: Any) -> torch.Tensor:
        raise NotImplementedError


@register_pooler("mean")
class MeanPooler(Pooler):
    """Mean of the hidden states over real tokens (sentence-transformers' default)."""

    def pool(self, hidden, mask, outputs):
        count = mask.sum(dim=1, keepdim=True).clamp(min=1)  # all-padding row -> 0, not NaN
        return _masked_sum(hidden, mask, mask) / count


@register_pooler("max")
class MaxPooler(Pooler):
    """Element-wise maximum over real tokens only."""

    def pool(self, hidden, mask, outputs):
        h = hidden.float().masked_fill(~mask.unsqueeze(-1), float("-inf"))
        out = h.max(dim=1).values
        return out.masked_fill(~mask.any(dim=1, keepdim=True), 0.0)  # all-padding row -> 0


@register_pooler("cls")
class ClsPooler(Pooler):
    """The model's trained pooled output when it has one, else the first real token's state."""

    uses_pooler_output = True

    def pool(self, hidden, mask, outputs):
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is not None:
            return pooled
        return _gather(hidden, first_real_index(mask))


@register_pooler("cls_last_hidden_state")
class ClsLastHiddenStatePooler(Pooler):
    """The first real token's last hidden state ([CLS]), ignoring any pooling layer."""

    def pool(self, hidden, mask, outputs):
        return _gather(hidden, first_real_index(mask))


@register_pooler("last_token", "lasttoken")
class LastTokenPooler(Pooler):
    """The last real token's state (decoder embedders); exact with left or right padding."""

    def pool(self, hidden, mask, outputs):
        return _gather(hidden, last_real_index(mask))


@register_pooler("weighted_mean", "weightedmean")
class WeightedMeanPooler(Pooler):
    """Position-weighted mean over real tokens, weights 1..n (SGPT-style, for decoders)."""

    def pool(self, hidden, mask, outputs):
        weights = mask.long().cumsum(dim=1) * mask  # 1..n over real tokens, whatever the padding
        return _masked_sum(hidden, weights, mask) / weights.sum(dim=1, keepdim=True).clamp(min=1)


@register_pooler("mean_sqrt_len")
class MeanSqrtLenPooler(Pooler):
    """Sum over real tokens divided by the square root of their count."""

    def pool(self, hidden, mask, outputs):
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).float()
        return _masked_sum(hidden, mask, mask) / count.sqrt()
