"""Pooler registry and poolers: contract tests over every registered pooler, then each pooler's
values against a plain-Python computation over the real tokens (never via hfenc code)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling

from hfenc.model import poolers
from hfenc.errors import UnknownChoiceError
from hfenc.model.poolers import get_pooler, pooler_names, register_pooler

POOLERS = pooler_names()
DIM = 6
LENGTHS = [5, 3, 1, 7]  # real tokens per row; padded to 7


# ---- inputs ---------------------------------------------------------------------------------

def _sequences(seed: int = 0, lengths: list[int] = LENGTHS) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, DIM, generator=g) for n in lengths]


def _padded(seqs: list[torch.Tensor], side: str, fill: float = 0.0, width: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden, bool mask) with each sequence padded on `side` with `fill`."""
    width = width or max(len(s) for s in seqs)
    hidden = torch.full((len(seqs), width, DIM), fill)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for b, s in enumerate(seqs):
        n = len(s)
        if side == "right":
            hidden[b, :n], mask[b, :n] = s, True
        else:
            hidden[b, width - n:], mask[b, width - n:] = s, True
    return hidden, mask


def _out(hidden: torch.Tensor) -> BaseModelOutput:
    return BaseModelOutput(last_hidden_state=hidden)


def _real_rows(hidden: torch.Tensor, mask: torch.Tensor, b: int) -> list[list[float]]:
    """Row b's real token vectors, in order, as Python lists."""
    return [hidden[b, t].tolist() for t in range(hidden.shape[1]) if bool(mask[b, t])]


# ---- expected values, computed with plain loops -------------------------------------------------

def _mean(rows):
    return [sum(r[d] for r in rows) / len(rows) for d in range(DIM)]


def _max(rows):
    return [max(r[d] for r in rows) for d in range(DIM)]


def _first(rows):
    return rows[0]


def _last(rows):
    return rows[-1]


def _weighted_mean(rows):
    weights = list(range(1, len(rows) + 1))
    return [sum(w * r[d] for w, r in zip(weights, rows)) / sum(weights) for d in range(DIM)]


def _mean_sqrt_len(rows):
    return [sum(r[d] for r in rows) / math.sqrt(len(rows)) for d in range(DIM)]


def _splade(x):
    return math.log1p(max(x, 0.0))


def _splade_max(rows):
    return [max(_splade(r[d]) for r in rows) for d in range(DIM)]


def _splade_sum(rows):
    return [sum(_splade(r[d]) for r in rows) for d in range(DIM)]


EXPECTED = {
    "mean": _mean,
    "max": _max,
    "cls": _first,  # no pooler_output in the outputs: the first real token
    "cls_last_hidden_state": _first,
    "last_token": _last,
    "weighted_mean": _weighted_mean,
    "mean_sqrt_len": _mean_sqrt_len,
    # sparse: the "hidden states" are a masked-language model's logits (one per vocabulary token)
    "splade_max": _splade_max,
    "splade_sum": _splade_sum,
}


def _expected(name: str, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.tensor([EXPECTED[name](_real_rows(hidden, mask, b)) for b in range(hidden.shape[0])])


# ---- registry -------------------------------------------------------------------------------

def test_every_registered_pooler_has_an_independent_expectation():
    assert set(POOLERS) == set(EXPECTED)


@pytest.mark.parametrize(
    "seed_name, name",
    [("mean_pooler", "mean"), ("max_pooler", "max"), ("cls_pooler", "cls"),
     ("cls_last_hidden_state_pooler", "cls_last_hidden_state")],
)
def test_seed_names_resolve_to_the_same_pooler(seed_name, name):
    assert poolers.canonical_pooler(seed_name) == name
    assert type(get_pooler(seed_name)) is type(get_pooler(name))


def test_unknown_pooler_is_a_lookup_error_listing_the_choices():
    with pytest.raises(LookupError) as info:
        get_pooler("avg")
    assert isinstance(info.value, UnknownChoiceError)
    message = str(info.value)
    assert "'avg'" in message
    for name in POOLERS:
        assert name in message


def test_registering_a_duplicate_name_raises(monkeypatch):
    monkeypatch.setattr(poolers, "_POOLERS", dict(poolers._POOLERS))
    monkeypatch.setattr(poolers, "_ALIASES", dict(poolers._ALIASES))
    with pytest.raises(ValueError, match="mean"):
        @register_pooler("mean")
        class Average(nn.Module):
            """Duplicate."""
    with pytest.raises(ValueError, match="max_pooler"):
        @register_pooler("biggest")
        class MaxPooler(nn.Module):  # its snake_case seed name collides with the real one's
            """Duplicate by class name."""


def test_failed_registration_leaves_the_registry_unchanged(monkeypatch):
    monkeypatch.setattr(poolers, "_POOLERS", dict(poolers._POOLERS))
    monkeypatch.setattr(poolers, "_ALIASES", dict(poolers._ALIASES))
    with pytest.raises(ValueError):
        @register_pooler("brand_new", "mean")
        class BrandNew(nn.Module):
            """Collides through an alias."""
    # The name never made it into the registry, so it is an unknown choice like any other.
    with pytest.raises(UnknownChoiceError):
        get_pooler("brand_new")


# ---- contract over every pooler ---------------------------------------------------------------

@pytest.mark.parametrize("name", POOLERS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_shape_dtype_and_values(name, side):
    hidden, mask = _padded(_sequences(), side)
    got = get_pooler(name)(_out(hidden), mask)
    assert got.shape == (len(LENGTHS), DIM)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _expected(name, hidden, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", POOLERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_output_is_float32_for_half_precision_models(name, dtype):
    hidden, mask = _padded(_sequences(), "right")
    hidden = hidden.to(dtype)
    got = get_pooler(name)(_out(hidden), mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _expected(name, hidden.float(), mask), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("name", POOLERS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_values_at_padded_positions_never_matter(name, side):
    hidden, mask = _padded(_sequences(), side)
    pooler = get_pooler(name)
    reference = pooler(_out(hidden), mask)
    g = torch.Generator().manual_seed(1)
    for scale in (1.0, 1e4, -1e4):
        scrambled = hidden.clone()
        noise = scale * (torch.rand(hidden.shape, generator=g) + 0.5)
        scrambled[~mask] = noise[~mask]
        torch.testing.assert_close(pooler(_out(scrambled), mask), reference, atol=0, rtol=0)


@pytest.mark.parametrize("name", POOLERS)
def test_left_and_right_padding_give_the_same_result(name):
    seqs = _sequences(seed=3)
    pooler = get_pooler(name)
    right = pooler(_out(_padded(seqs, "right", fill=7.0)[0]), _padded(seqs, "right")[1])
    left = pooler(_out(_padded(seqs, "left", fill=-7.0)[0]), _padded(seqs, "left")[1])
    torch.testing.assert_close(left, right, atol=1e-6, rtol=1e-6)
    # More padding than needed changes nothing either.
    wide_h, wide_m = _padded(seqs, "left", fill=3.0, width=12)
    torch.testing.assert_close(pooler(_out(wide_h), wide_m), right, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", POOLERS)
def test_rows_are_independent_of_their_batch(name):
    seqs = _sequences(seed=4)
    pooler = get_pooler(name)
    batch = pooler(*_pack(seqs, "right"))
    for b, s in enumerate(seqs):
        alone = pooler(*_pack([s], "right"))
        torch.testing.assert_close(alone[0], batch[b], atol=1e-6, rtol=1e-6)


def _pack(seqs, side):
    hidden, mask = _padded(seqs, side)
    return _out(hidden), mask


@pytest.mark.parametrize("name", POOLERS)
def test_never_mutates_its_inputs(name):
    hidden, mask = _padded(_sequences(), "left", fill=5.0)
    pooled = torch.randn(len(LENGTHS), DIM)
    out = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)
    int_mask = mask.long()
    copies = hidden.clone(), mask.clone(), pooled.clone(), int_mask.clone()
    get_pooler(name)(out, mask)
    get_pooler(name)(out, int_mask)
    for before, after in zip(copies, (hidden, mask, pooled, int_mask)):
        assert torch.equal(before, after)
    assert out.last_hidden_state is hidden and out.pooler_output is pooled


@pytest.mark.parametrize("name", POOLERS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_all_padding_row_is_finite_and_leaves_other_rows_alone(name, side):
    seqs = _sequences(seed=5, lengths=[4, 2])
    hidden, mask = _padded(seqs, side, fill=1e4)
    hidden = torch.cat([hidden, torch.full((1, hidden.shape[1], DIM), -1e4)])
    mask = torch.cat([mask, torch.zeros(1, mask.shape[1], dtype=torch.bool)])
    got = get_pooler(name)(_out(hidden), mask)
    assert torch.isfinite(got).all(), got
    torch.testing.assert_close(got[:2], _expected(name, hidden[:2], mask[:2]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", POOLERS)
def test_integer_mask_gives_the_bool_mask_result(name):
    hidden, mask = _padded(_sequences(seed=6), "left", fill=50.0)
    pooler = get_pooler(name)
    expected = _expected(name, hidden, mask)
    for int_mask in (mask.long(), mask.int()):
        torch.testing.assert_close(pooler(_out(hidden), int_mask), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", POOLERS)
def test_accepts_a_plain_tuple_of_outputs(name):
    hidden, mask = _padded(_sequences(seed=7), "right")
    torch.testing.assert_close(
        get_pooler(name)((hidden,), mask), _expected(name, hidden, mask), atol=1e-5, rtol=1e-5
    )


# ---- per-pooler specifics ---------------------------------------------------------------------

def test_max_ignores_padding_larger_than_every_real_value():
    # SPEC.md defect 1: the seed filled the real tokens with -inf and took the max over padding.
    seqs = [-torch.rand(n, DIM) - 1.0 for n in (4, 2, 6)]  # every real value in [-2, -1)
    hidden, mask = _padded(seqs, "right", fill=100.0)
    got = get_pooler("max")(_out(hidden), mask)
    assert (got < -0.99).all()
    for b, s in enumerate(seqs):
        assert got[b].tolist() == pytest.approx([max(s[t, d].item() for t in range(len(s)))
                                                 for d in range(DIM)])


def test_max_with_an_integer_mask_as_the_seed_encoder_passed_it():
    # SPEC.md defect 1: current torch rejects masked_fill with a 0/1 integer mask.
    seqs = [torch.rand(n, DIM) for n in (3, 5)]
    hidden, mask = _padded(seqs, "right", fill=9.0)
    got = get_pooler("max")(_out(hidden), mask.long())
    torch.testing.assert_close(got, _expected("max", hidden, mask))


def test_cls_uses_pooler_output_when_present():
    hidden, mask = _padded(_sequences(), "right")
    pooled = torch.randn(len(LENGTHS), DIM)
    got = get_pooler("cls")(BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled), mask)
    torch.testing.assert_close(got, pooled, atol=0, rtol=0)


def test_cls_without_pooler_output_takes_the_first_real_token_under_left_padding():
    hidden, mask = _padded(_sequences(), "left", fill=-3.0)
    for out in (_out(hidden), BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=None)):
        got = get_pooler("cls")(out, mask)
        for b, n in enumerate(LENGTHS):
            first = hidden.shape[1] - n
            torch.testing.assert_close(got[b], hidden[b, first], atol=0, rtol=0)


def test_cls_last_hidden_state_ignores_pooler_output():
    seqs = _sequences()
    for side in ("right", "left"):
        hidden, mask = _padded(seqs, side)
        pooled = torch.randn(len(LENGTHS), DIM)
        got = get_pooler("cls_last_hidden_state")(
            BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled), mask)
        expected = torch.stack([s[0] for s in seqs])
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
        if side == "right":
            torch.testing.assert_close(got, hidden[:, 0], atol=0, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_takes_the_last_real_token(side):
    seqs = _sequences(seed=8)
    hidden, mask = _padded(seqs, side, fill=11.0)
    got = get_pooler("last_token")(_out(hidden), mask)
    torch.testing.assert_close(got, torch.stack([s[-1] for s in seqs]), atol=0, rtol=0)


def test_weighted_mean_weights_real_tokens_one_to_n():
    # Hand-checkable: constant vectors 1, 2, 3 -> (1*1 + 2*2 + 3*3) / (1 + 2 + 3) = 14 / 6.
    seq = torch.tensor([1.0, 2.0, 3.0]).unsqueeze(1).repeat(1, DIM)
    for side in ("right", "left"):
        hidden, mask = _padded([seq, seq[:1]], side, fill=100.0, width=5)
        got = get_pooler("weighted_mean")(_out(hidden), mask)
        assert got[0].tolist() == pytest.approx([14 / 6] * DIM)
        assert got[1].tolist() == pytest.approx([1.0] * DIM)


def test_mean_sqrt_len_divides_the_sum_by_the_root_of_the_count():
    seq = torch.ones(4, DIM) * 3.0  # sum 12 over 4 tokens -> 12 / 2 = 6
    hidden, mask = _padded([seq, seq[:1]], "left", fill=-100.0, width=6)
    got = get_pooler("mean_sqrt_len")(_out(hidden), mask)
    assert got[0].tolist() == pytest.approx([6.0] * DIM)
    assert got[1].tolist() == pytest.approx([3.0] * DIM)


def test_mean_of_an_all_padding_row_is_not_nan():
    # SPEC.md defect 3: the seed divided by a token count of 0.
    hidden = torch.randn(2, 3, DIM)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    got = get_pooler("mean")(_out(hidden), mask)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got[0], hidden[0, :2].mean(0))


@pytest.mark.parametrize("name", POOLERS)
def test_non_finite_values_at_padded_positions_never_reach_the_result(name):
    # poolers.py promises "values at masked positions never reach the result"; half-precision
    # models can overflow to inf at positions nobody reads.
    hidden, mask = _padded(_sequences(seed=9), "right")
    pooler = get_pooler(name)
    reference = pooler(_out(hidden), mask)
    for bad in (float("inf"), float("-inf"), float("nan")):
        poisoned = hidden.clone()
        poisoned[~mask] = bad
        torch.testing.assert_close(pooler(_out(poisoned), mask), reference, atol=0, rtol=0)


def test_the_pooler_catalog_is_the_registry():
    """`hfenc poolers` reads hfenc/poolers.json (no torch import); it must equal the registry."""
    from hfenc.model.catalog import live_catalog, pooler_catalog

    assert pooler_catalog() == live_catalog(), "regenerate it: python -m hfenc.model.catalog"
