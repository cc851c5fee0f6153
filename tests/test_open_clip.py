"""Issue 9: hfenc against the seed itself, open_clip 3.3.0's HF text tower (not a restatement).

- A trained open_clip tower's state dict (saved with torch.save) loads into hfenc's HFTextEncoder
  with strict=True, and both give the same outputs, for the families open_clip knows.
- T5-likes keep the encoder *stack* as `transformer` (open_clip's layout), with a working forward,
  gradient checkpointing and no decoder tensor read from a full seq2seq checkpoint.
- Lock plans with style="open_clip": hfenc refuses exactly where open_clip's own constructor or
  lock() raises (found by running it on every family's tiny tower), and elsewhere plans exactly
  the requires_grad set open_clip's lock() leaves.

open_clip is loaded by tests/open_clip_ref.py (its package __init__ needs torchvision). When it is
missing, every test here fails with the install command; none is skipped.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
import transformers
import transformers.modeling_utils
from typer.testing import CliRunner

import open_clip_ref
import tiny_models
from hfenc import HFTextEncoder
from hfenc.cli import app
from hfenc.errors import ConfigError
from hfenc.plans.lock import plan_lock

L = tiny_models.LAYERS
DIM = 16
SEED_POOLERS = ("mean_pooler", "cls_pooler", "cls_last_hidden_state_pooler")
PROJ_TYPES = ("linear", "mlp")
# The families of open_clip 3.3.0's arch_dict that hfenc's tiny models cover (checked below against
# the installed arch_dict, so this list cannot drift from it).
SEED_FAMILIES = ("bert", "roberta", "xlm-roberta", "mt5", "m2m_100")
LOCK_NS = (0, 1, L, L + 1, -1)
TEXTS = ["hello world", "the big red dog and a small cat read a long book at night", "a cat",
         "you see the sun and the moon"]


@pytest.fixture(scope="module")
def oc():
    """open_clip's hf_configs / hf_model; a failure (never a skip) when it is not installed."""
    try:
        return open_clip_ref.load()
    except open_clip_ref.OpenClipMissing as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


def _quiet(fn, *args, **kwargs):
    """open_clip's lock() prints; keep the test output clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _padded_ids(directory: Path) -> torch.Tensor:
    tok = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # really padded
    return batch["input_ids"]


def test_reference_is_open_clip_3_3_0_and_covers_the_seed_families(oc):
    assert open_clip_ref.installed_version() == "3.3.0"
    assert oc.hf_model.arch_dict is oc.arch_dict
    assert set(SEED_FAMILIES) == set(oc.arch_dict) & set(tiny_models.MODEL_TYPES)


# ---- 1. a trained open_clip tower's weights load into hfenc's ----------------------------------

@pytest.mark.parametrize("proj_type", PROJ_TYPES)
@pytest.mark.parametrize("pooler", SEED_POOLERS)
@pytest.mark.parametrize("model_type", SEED_FAMILIES)
def test_open_clip_state_dict_loads_strictly_and_gives_the_same_outputs(
        oc, tiny_model_dir, tmp_path, model_type, pooler, proj_type):
    directory = tiny_model_dir(model_type)
    torch.manual_seed(1)
    theirs = oc.HFTextEncoder(str(directory), DIM, pooler_type=pooler, proj_type=proj_type,
                              pretrained=True).eval()
    torch.save(theirs.state_dict(), tmp_path / "tower.pt")
    state = torch.load(tmp_path / "tower.pt", weights_only=True)
    torch.manual_seed(2)  # random weights: everything must come from the state dict
    ours = HFTextEncoder(str(directory), DIM, pooler_type=pooler, proj_type=proj_type, pretrained=False).eval()
    assert sorted(ours.state_dict()) == sorted(state)
    ours.load_state_dict(state, strict=True)
    ids = _padded_ids(directory)
    with torch.no_grad():
        expected = theirs(ids)  # open_clip derives an integer mask from pad_token_id
        got = ours(ids)  # no mask given: hfenc derives it the same way
    assert got.shape == (len(TEXTS), DIM)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    theirs.output_tokens = ours.output_tokens = True  # tokens too (open_clip drops cls for ClsPooler only)
    with torch.no_grad():
        (_, their_tokens), (_, our_tokens) = theirs(ids), ours(ids)
    torch.testing.assert_close(our_tokens, their_tokens, atol=1e-5, rtol=0)
    # And back: hfenc's weights load into open_clip's tower.
    theirs.load_state_dict(ours.state_dict(), strict=True)


# ---- T5-likes keep the encoder stack, as open_clip does ------------------------------------------

@pytest.mark.parametrize("pretrained", [True, False])
@pytest.mark.parametrize("model_type", tiny_models.T5_LIKE)
def test_t5_likes_keep_the_encoder_stack(tiny_model_dir, model_type, pretrained):
    directory = tiny_model_dir(model_type)
    encoder = HFTextEncoder(str(directory), pretrained=pretrained).eval()
    stack = encoder.transformer
    full = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(directory), local_files_only=True)
    assert type(stack) is type(full.get_encoder())  # T5Stack / MT5Stack / UMT5Stack
    names = {n for n, _ in encoder.named_parameters()}
    assert {"transformer.embed_tokens.weight", "transformer.final_layer_norm.weight"} <= names
    assert {f"transformer.block.{i}.layer.0.SelfAttention.q.weight" for i in range(L)} <= names
    assert not [n for n in encoder.state_dict() if n.startswith(("transformer.encoder.", "transformer.shared."))]
    ids = _padded_ids(directory)
    mask = ids != encoder.config.pad_token_id
    with torch.no_grad():
        out = stack(input_ids=ids, attention_mask=mask.long())
        reference = full.get_encoder().eval()(input_ids=ids, attention_mask=mask.long())
    assert out.last_hidden_state.shape == (len(TEXTS), ids.shape[1], tiny_models.HIDDEN)
    if pretrained:
        torch.testing.assert_close(out.last_hidden_state, reference.last_hidden_state, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_type", tiny_models.T5_LIKE)
def test_t5_stack_builds_on_meta_for_lock_plans(model_type):
    with torch.device("meta"):
        encoder = HFTextEncoder("tiny", config=tiny_models.tiny_config(model_type), pretrained=False)
    assert all(p.is_meta for p in encoder.parameters())
    plan = plan_lock(encoder, 1)
    groups = {g.name: set(g.params) for g in plan.groups}
    assert groups["embeddings"] == {"transformer.embed_tokens.weight"}
    assert groups["final_norm"] == {"transformer.final_layer_norm.weight"}
    assert all(p.startswith("transformer.block.1.") for p in groups["layer.1"])


@pytest.mark.parametrize("model_type", tiny_models.T5_LIKE)
def test_grad_checkpointing_on_the_t5_stack_recomputes_blocks(tiny_model_dir, model_type):
    encoder = HFTextEncoder(str(tiny_model_dir(model_type)))
    calls = []
    # transformers checkpoints a block's `forward`, not `__call__`: hook a module inside the block.
    encoder.transformer.block[1].layer[0].register_forward_hook(lambda *args: calls.append(1))
    ids = _padded_ids(tiny_model_dir(model_type))
    counts = {}
    for enable in (False, True, False):
        encoder.set_grad_checkpointing(enable)
        encoder.train()
        calls.clear()
        encoder(ids).sum().backward()
        counts.setdefault(enable, []).append(len(calls))
    assert counts == {False: [1, 1], True: [2]}  # checkpointing reruns the block's forward in backward


@pytest.mark.parametrize("model_type", tiny_models.ENC_DEC)
def test_full_seq2seq_checkpoint_loads_no_decoder_tensor(tiny_model_dir, monkeypatch, model_type):
    """SPEC.md defect 8: the encoder class maps and reads only the encoder's tensors."""
    read: list[str] = []
    original = transformers.modeling_utils.safe_open

    class Slice:  # transformers materialises a lazy slice with slice[...]
        def __init__(self, key, inner):
            self.key, self.inner = key, inner

        def __getitem__(self, index):
            read.append(self.key)
            return self.inner[index]

        def __getattr__(self, name):
            return getattr(self.inner, name)

    class File:
        def __init__(self, inner):
            self.inner = inner

        def get_slice(self, key):
            return Slice(key, self.inner.get_slice(key))

        def get_tensor(self, key):
            read.append(key)
            return self.inner.get_tensor(key)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(transformers.modeling_utils, "safe_open", lambda *a, **k: File(original(*a, **k)))
    encoder = HFTextEncoder(str(tiny_model_dir(model_type)))
    assert read, "the probe saw no tensor being read"
    assert not [k for k in read if "decoder" in k or k.startswith("lm_head")]
    assert len(set(read)) <= len(list(encoder.transformer.parameters())) + len(list(encoder.transformer.buffers()))


# ---- 3. lock plans in open_clip style refuse exactly where open_clip raises --------------------

def _open_clip_outcome(tower, n: int, freeze_layer_norm: bool) -> set[str] | BaseException:
    """Run open_clip's own lock() on an all-trainable tower: the names it leaves trainable, or what
    it raised."""
    for p in tower.parameters():
        p.requires_grad_(True)
    try:
        _quiet(tower.lock, n, freeze_layer_norm=freeze_layer_norm)
    except Exception as exc:  # noqa: BLE001 - whatever open_clip raises is the expected refusal
        return exc
    return {name for name, p in tower.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("pooler", ["mean_pooler", "cls_pooler"])
@pytest.mark.parametrize("model_type", tiny_models.MODEL_TYPES)
def test_open_clip_style_refuses_exactly_where_open_clip_raises(oc, tiny_model_dir, model_type, pooler):
    directory = str(tiny_model_dir(model_type))
    ours = HFTextEncoder(directory, DIM, pooler_type=pooler, proj_type="linear")
    try:
        tower = _quiet(oc.HFTextEncoder, directory, DIM, pooler_type=pooler, proj_type="linear")
    except Exception:  # noqa: BLE001 - open_clip cannot even build this family
        assert model_type not in oc.arch_dict
        for n in LOCK_NS:
            with pytest.raises(ConfigError) as info:
                plan_lock(ours, n, style="open_clip")
            assert str(info.value).startswith(f"open_clip 3.3.0 has no entry for model type '{model_type}'")
        return
    assert model_type in oc.arch_dict
    assert [n for n, _ in tower.named_parameters()] == [n for n, _ in ours.named_parameters()]
    for n in LOCK_NS:
        for fln in (True, False):
            theirs = _open_clip_outcome(tower, n, fln)
            if isinstance(theirs, BaseException):
                with pytest.raises(ConfigError) as info:
                    plan_lock(ours, n, freeze_layer_norm=fln, style="open_clip")
                message = str(info.value)
                assert message.startswith(f"open_clip 3.3.0 cannot lock {model_type} with unlocked_layers={n}: ")
                assert f"its lock() raises {theirs!r}" in message and "\n" not in message
            else:
                plan = plan_lock(ours, n, freeze_layer_norm=fln, style="open_clip")
                assert set(plan.trainable) == theirs, (n, fln)


def test_open_clip_refusals_are_the_expected_table(oc, tiny_model_dir):
    """The table this run of open_clip produces, spelled out (as the issue records it)."""
    raises = {}
    for model_type in tiny_models.MODEL_TYPES:
        directory = str(tiny_model_dir(model_type))
        try:
            tower = _quiet(oc.HFTextEncoder, directory, DIM, pooler_type="mean_pooler", proj_type="linear")
        except Exception:  # noqa: BLE001
            raises[model_type] = "constructor"
            continue
        bad = [n for n in LOCK_NS if isinstance(_open_clip_outcome(tower, n, True), KeyError)]
        if bad:
            raises[model_type] = tuple(bad)
    no_layer_attr = (1, L, L + 1, -1)
    assert raises == {
        **{t: "constructor" for t in tiny_models.MODEL_TYPES if t not in SEED_FAMILIES},
        "bert": no_layer_attr, "m2m_100": no_layer_attr,
    }


def _cli(*args: str):
    return CliRunner().invoke(app, ["lock-plan", *args], env={"COLUMNS": "240"})


@pytest.mark.parametrize("model,unlocked,text", [
    ("bert-base-uncased", "1", "open_clip 3.3.0 cannot lock bert with unlocked_layers=1: "
                               "its lock() raises KeyError('layer_attr')"),
    ("facebook/nllb-200-distilled-600M", "-1", "cannot lock m2m_100 with unlocked_layers=-1"),
    ("distilbert-base-uncased", "0", "open_clip 3.3.0 has no entry for model type 'distilbert'"),
    ("microsoft/mpnet-base", "2", "open_clip 3.3.0 has no entry for model type 'mpnet'"),
])
def test_cli_shows_the_refusal_as_an_error(model, unlocked, text):
    result = _cli(model, "--unlocked", unlocked, "--style", "open_clip")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"Error: {text}" if text.startswith("open_clip") else "Error: ")
    assert text in " ".join(result.stderr.split())
    assert result.stdout == "" and "Traceback" not in result.output


@pytest.mark.parametrize("model,unlocked", [("bert-base-uncased", "0"), ("google/mt5-base", "1"),
                                             ("roberta-base", "-1"), ("xlm-roberta-base", "13")])
def test_cli_plans_what_open_clip_can_do(model, unlocked):
    result = _cli(model, "--unlocked", unlocked, "--style", "open_clip", "--json")
    assert result.exit_code == 0, result.output
    assert '"style": "open_clip"' in result.stdout
