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

from hfenc.errors import UnknownChoiceError


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
    """The registry name for `name` or one of its aliases; a clear error otherwise.

    `a+b` concatenates poolers in that order (sentence-transformers' multi-mode Pooling)."""
    parts = name.split("+")
    try:
        names = [_ALIASES[p] for p in parts]
    except KeyError as exc:
        raise UnknownChoiceError("pooler", exc.args[0], _POOLERS) from None
    if len(names) > 1 and any(_POOLERS[n].cls.sparse for n in names):
        raise UnknownChoiceError("pooler to combine", name, [n for n in _POOLERS if not _POOLERS[n].cls.sparse],
                                 hint="a sparse (splade_*) pooler cannot be combined")
    if len(names) > 1 and any(_POOLERS[n].cls.uses_pooler_output for n in names):
        raise UnknownChoiceError("pooler to combine", name, [n for n in _POOLERS if not _POOLERS[n].cls.uses_pooler_output],
                                 hint="'cls' reads the model's pooling layer and cannot be combined")
    return "+".join(names)


def get_pooler_class(name: str) -> type[nn.Module]:
    """The class of a single pooler (a `+` combination is a PoolerStack)."""
    names = canonical_pooler(name).split("+")
    return _POOLERS[names[0]].cls if len(names) == 1 else PoolerStack


def get_pooler(name: str) -> nn.Module:
    names = canonical_pooler(name).split("+")
    if len(names) == 1:
        return _POOLERS[names[0]].cls()
    return PoolerStack([_POOLERS[n].cls() for n in names])


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


def _empty_to_zero(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zeros for rows with no token to pool (masked_fill, so a NaN at a pad never leaks)."""
    return rows.float().masked_fill(~mask.any(dim=1, keepdim=True), 0.0)


def _masked_sum(hidden: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Zero padding first: a weight of 0 times inf/NaN (fp16 overflow at a pad position) is NaN.
    clean = hidden.float().masked_fill(~mask.unsqueeze(-1), 0.0)
    return torch.einsum("bt,btd->bd", weights.float(), clean)


def pool_mask(attention_mask: torch.Tensor, skip: int = 0) -> torch.Tensor:
    """The real tokens, less the first `skip` of each row (a prompt that is not to be pooled)."""
    mask = attention_mask.bool()
    if skip:
        mask = mask & (mask.long().cumsum(dim=1) > skip)
    return mask


class Pooler(nn.Module):
    """Base: subclasses implement pool(hidden, mask, outputs, real).

    `mask` marks the tokens to pool; `real` marks every real token (they differ only when a prompt
    is excluded, `skip` > 0: sentence-transformers' `include_prompt: false`)."""

    name = ""
    uses_pooler_output = False  # True when the model's own pooling layer (BERT's dense+tanh) is used
    modes = 1  # vectors of the model's width per row
    sparse = False  # True: pools a masked-language model's logits into a vocabulary-wide vector

    def forward(self, x: Any, attention_mask: torch.Tensor, skip: int = 0) -> torch.Tensor:
        real = attention_mask.bool()
        return self.pool(_hidden(x), pool_mask(real, skip), x, real).float()

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor, outputs: Any, real: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PoolerStack(nn.Module):
    """Several poolers' vectors concatenated, in order (`mean+max`)."""

    uses_pooler_output = False
    sparse = False

    def __init__(self, poolers: list[Pooler]):
        super().__init__()
        self.poolers = nn.ModuleList(poolers)
        self.modes = len(poolers)

    def forward(self, x: Any, attention_mask: torch.Tensor, skip: int = 0) -> torch.Tensor:
        return torch.cat([p(x, attention_mask, skip) for p in self.poolers], dim=-1)


@register_pooler("mean")
class MeanPooler(Pooler):
    """Mean of the hidden states over real tokens (sentence-transformers' default)."""

    def pool(self, hidden, mask, outputs, real):
        count = mask.sum(dim=1, keepdim=True).clamp(min=1)  # all-padding row -> 0, not NaN
        return _masked_sum(hidden, mask, mask) / count


@register_pooler("max")
class MaxPooler(Pooler):
    """Element-wise maximum over real tokens only."""

    def pool(self, hidden, mask, outputs, real):
        h = hidden.float().masked_fill(~mask.unsqueeze(-1), float("-inf"))
        out = h.max(dim=1).values
        return out.masked_fill(~mask.any(dim=1, keepdim=True), 0.0)  # all-padding row -> 0


@register_pooler("cls")
class ClsPooler(Pooler):
    """The model's trained pooled output when it has one, else the first real token's state."""

    uses_pooler_output = True

    def pool(self, hidden, mask, outputs, real):
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is not None and mask is real:  # no prompt excluded: the pooling layer applies
            return pooled
        return _empty_to_zero(_gather(hidden, first_real_index(mask)), mask)


@register_pooler("cls_last_hidden_state")
class ClsLastHiddenStatePooler(Pooler):
    """The first real token's last hidden state ([CLS]), ignoring any pooling layer."""

    def pool(self, hidden, mask, outputs, real):
        return _empty_to_zero(_gather(hidden, first_real_index(mask)), mask)


@register_pooler("last_token", "lasttoken")
class LastTokenPooler(Pooler):
    """The last real token's state (decoder embedders); exact with left or right padding."""

    def pool(self, hidden, mask, outputs, real):
        # A row with no token to pool gives zeros, like the other poolers (not a pad's state).
        return _empty_to_zero(_gather(hidden, last_real_index(mask)), mask)


@register_pooler("weighted_mean", "weightedmean")
class WeightedMeanPooler(Pooler):
    """Position-weighted mean over real tokens, weights 1..n (SGPT-style, for decoders)."""

    def pool(self, hidden, mask, outputs, real):
        # 1..n over the real tokens, whatever the padding; an excluded prompt keeps its positions
        # weights out of the sum but does not renumber the rest (as sentence-transformers does).
        weights = real.long().cumsum(dim=1) * mask
        return _masked_sum(hidden, weights, mask) / weights.sum(dim=1, keepdim=True).clamp(min=1)


@register_pooler("mean_sqrt_len")
class MeanSqrtLenPooler(Pooler):
    """Sum over real tokens divided by the square root of their count."""

    def pool(self, hidden, mask, outputs, real):
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).float()
        return _masked_sum(hidden, mask, mask) / count.sqrt()


# ---- sparse: SPLADE over a masked-language model's logits (issue 25) --------------------------

SPLADE_ACTIVATIONS = ("relu", "log1p_relu")


def prune(x: torch.Tensor, k: int | None) -> torch.Tensor:
    """Each row's k entries of largest magnitude kept, the rest zero (SparseEncoder's
    max_active_dims; ties at the k-th value: torch.topk's choice, as there)."""
    if k is None or k >= x.shape[-1]:
        return x
    _, top = torch.topk(x.abs(), k, dim=-1)
    return torch.zeros_like(x).scatter_(-1, top, x.gather(-1, top))


def by_length(hidden: torch.Tensor, mask: torch.Tensor, reduce: Any, empty: float) -> torch.Tensor:
    """reduce(rows' real positions) for each group of rows of one length, read in place: the
    (batch, tokens, vocabulary) logits are never copied with their padding masked out (that copy
    cost more than the rest of the pooling). A mask that is not one run of real tokens at the start
    or the end of each row (right or left padding) is masked the plain way."""
    lengths = mask.sum(dim=1)
    width = mask.shape[1]
    positions = torch.arange(width, device=mask.device)[None, :]
    right = bool((mask == (positions < lengths[:, None])).all())
    if not right and not bool((mask == (positions >= width - lengths[:, None])).all()):
        return reduce(hidden.masked_fill(~mask.unsqueeze(-1), empty))
    out = hidden.new_full((hidden.shape[0], hidden.shape[2]), empty)
    for length in torch.unique(lengths).tolist():
        rows = torch.nonzero(lengths == length).squeeze(1)
        if length == 0:
            continue  # a row with no token: `empty` (f(0) = 0)
        first, last = int(rows[0]), int(rows[-1])
        span = slice(0, length) if right else slice(width - length, width)
        if last - first + 1 == len(rows):  # a run of rows (the engine sorts a batch by length): a view
            out[first:last + 1] = reduce(hidden[first:last + 1, span])
        else:
            out[rows] = reduce(hidden[rows][:, span])
    return out


class SpladePooler(Pooler):
    """Base of the SPLADE poolers: `hidden` is the logits (batch, tokens, vocabulary); each real
    token's logits go through f = log1p(relu(x)) ("log1p_relu": log1p(log1p(relu(x)))), pooled
    over the real tokens, as sentence-transformers' SpladePooling does (special and prompt tokens
    count; padding does not). `max_active_dims`: keep each row's k largest values (top-k)."""

    sparse = True

    def __init__(self, activation: str = "relu", max_active_dims: int | None = None) -> None:
        super().__init__()
        if activation not in SPLADE_ACTIVATIONS:
            raise UnknownChoiceError("SPLADE activation", activation, SPLADE_ACTIVATIONS)
        self.activation, self.max_active_dims = activation, max_active_dims

    def forward(self, x: Any, attention_mask: torch.Tensor, skip: int = 0) -> torch.Tensor:
        return prune(super().forward(x, attention_mask, skip), self.max_active_dims)

    def f(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.log1p(torch.relu(x))
        return torch.log1p(x) if self.activation == "log1p_relu" else x


@register_pooler("splade_max")
class SpladeMaxPooler(SpladePooler):
    """SPLADE: max over real tokens of log1p(relu(a fill-mask model's logits))."""

    def pool(self, hidden, mask, outputs, real):
        # f is monotone, so f(max x) == max f(x) bit for bit, and f runs once per row, not per token.
        # A padding position counts as a logit of 0 (sentence-transformers multiplies the mask in),
        # which changes nothing after relu.
        return self.f(by_length(hidden, mask, lambda x: x.amax(dim=1), 0.0))


@register_pooler("splade_sum")
class SpladeSumPooler(SpladePooler):
    """SPLADE: sum over real tokens of log1p(relu(a fill-mask model's logits))."""

    def pool(self, hidden, mask, outputs, real):
        return by_length(hidden, mask, lambda x: self.f(x).sum(dim=1), 0.0)
