"""Memory estimates of lock plans (issue 15), checked against what PyTorch really allocates.

- Exact parts: on tiny models of several families (saved and loaded through from_pretrained), for
  N = 0, 1, L, L+1, the estimate's weights, gradients and optimizer states equal the bytes of the
  parameters, the `.grad`s and the optimizer's state tensors after a real forward + backward +
  `step()` (torch AdamW, SGD with and without momentum, transformers' Adafactor), in float32,
  under bfloat16 autocast and in pure bfloat16. Tensors are de-duplicated by data_ptr.
- Activations: on CPU (`device="cpu"` kernel facts), the estimate is within 25% of what autograd
  keeps for backward, measured with saved-tensor hooks (unique storages, parameters and buffers
  excluded), for BERT- and T5-like tiny models, eager and SDPA attention (with dropout, where the
  CPU runs SDPA's math path, and without, where it runs the fused flash kernel), with and without
  gradient checkpointing, at three (batch, length) points. The ratios are reported.
- Contracts over every architecture (offline, from tiny configs), the bundled configs, errors,
  and the `lock-plan --memory` command.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from typer.testing import CliRunner

import tiny_models
from hfenc.model.archs import ARCHS
from hfenc.cli import app
from hfenc.model.encoder import HFTextEncoder
from hfenc.errors import ConfigError, HfencError, UnknownChoiceError
from hfenc.plans.lock import apply_lock, plan_lock
from hfenc.plans.memory import estimate_memory, optimizer_state_bytes

L = tiny_models.LAYERS
DIM = 16  # a linear projection head, so that N = 0 still trains something


def tensor_bytes(tensors) -> int:
    """Bytes of distinct tensors (tied weights count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def batch_of(encoder: HFTextEncoder, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids and a padded mask (the first row is half padding), as a real batch of texts."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, encoder.vocab_size, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2:] = 0
    return ids, mask


# ---- exact parts --------------------------------------------------------------------------

EXACT_FAMILIES = ("bert", "electra", "t5", "mt5", "llama")  # shared groups, gated MLPs, GQA
OPTIMIZERS = {  # name -> (estimate options, the real optimizer)
    "adamw": ({"optimizer": "adamw"}, lambda ps: torch.optim.AdamW(ps, lr=1e-3)),
    "sgd": ({"optimizer": "sgd"}, lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9)),
    "sgd, no momentum": ({"optimizer": "sgd", "momentum": False}, lambda ps: torch.optim.SGD(ps, lr=1e-3)),
    "adafactor": ({"optimizer": "adafactor"}, lambda ps: transformers.optimization.Adafactor(ps)),
}


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed", "bf16"])
@pytest.mark.parametrize("model_type", EXACT_FAMILIES)
def test_exact_parts_equal_what_a_real_optimizer_step_leaves(tiny_model_dir, model_type, precision):
    encoder = HFTextEncoder(str(tiny_model_dir(model_type)), proj_type="linear", output_dim=DIM)
    if precision == "bf16":
        encoder.to(torch.bfloat16)
    ids, mask = batch_of(encoder, 3, 12)
    for n in (0, 1, L, L + 1):
        plan = plan_lock(encoder, n)
        for name, (options, make) in OPTIMIZERS.items():
            apply_lock(encoder, plan)
            for p in encoder.parameters():
                p.grad = None
            optimizer = make([p for p in encoder.parameters() if p.requires_grad])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                out = encoder(ids, mask)
            out.float().square().sum().backward()
            optimizer.step()
            params = list(encoder.parameters())
            grads = [p.grad for p in params if p.grad is not None]
            states = [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
            assert len(grads) == sum(p.requires_grad for p in params) > 0

            est = estimate_memory(plan, precision=precision, **options)
            case = f"{model_type} N={n} {name} {precision}"
            assert est.weights == tensor_bytes(params), case
            assert est.gradients == tensor_bytes(grads), case
            assert est.optimizer_states == tensor_bytes(states), case
            assert est.exact == tensor_bytes(params + grads + states), case


def test_adamw8bit_state_follows_bitsandbytes_rules():
    # bitsandbytes is not installed here. Its Optimizer2State.init_state (block_wise=True): tensors
    # of >= 4,096 elements get two uint8 states and two float32 absmax per block of 256 elements
    # (`blocks = n // 256`, plus one for a remainder); smaller ones two float32 states; the two
    # 256-entry float32 quantisation maps are shared. By hand:
    shapes = [(64, 100), (100,)]  # 6,400 elements (25 blocks of 256) and 100 elements
    by_hand = (2 * 6400 + 2 * 25 * 4) + 2 * 100 * 4 + 2 * 256 * 4
    assert optimizer_state_bytes(shapes, "adamw8bit", 4) == by_hand


# ---- activations --------------------------------------------------------------------------

ACTIVATION_FAMILIES = ("bert", "t5")
POINTS = ((2, 16), (4, 48), (8, 64))  # (batch, length); the tiny models have 64 positions


@pytest.fixture(scope="module")
def no_dropout_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with every dropout probability set to 0: the CPU's fused SDPA kernel refuses
    dropout, so only this variant measures the fused path."""
    made: dict[str, Path] = {}

    def get(model_type: str) -> Path:
        if model_type not in made:
            folder = tmp_path_factory.mktemp(f"{model_type}-no-dropout")
            shutil.copytree(tiny_model_dir(model_type), folder, dirs_exist_ok=True)
            config = json.loads((folder / "config.json").read_text())
            for key, value in list(config.items()):
                if "dropout" in key and isinstance(value, float):
                    config[key] = 0.0
            (folder / "config.json").write_text(json.dumps(config))
            made[model_type] = folder
        return made[model_type]

    return get


def kept_for_backward(encoder: HFTextEncoder, ids: torch.Tensor, mask: torch.Tensor, checkpointing: bool) -> int:
    """Bytes autograd keeps for backward after one training forward: the unique storages of the
    tensors its saved-tensor hooks see, parameters and buffers excluded. Tensors a checkpointed
    block takes as keyword arguments are held by the checkpoint's closure, not through the hooks,
    so they are added (BERT and T5 pass theirs positionally: nothing to add there)."""
    skip = {t.untyped_storage().data_ptr() for t in [*encoder.parameters(), *encoder.buffers()]}
    kept: dict[int, int] = {}

    def keep(t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            kept[storage.data_ptr()] = storage.nbytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        keep(t)
        return t

    def kwargs_of_block(module, args, kwargs):
        for value in kwargs.values():
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(t, torch.Tensor):
                    keep(t)

    blocks = encoder.transformer.get_submodule(encoder.arch.blocks)
    hooks = [b.register_forward_pre_hook(kwargs_of_block, with_kwargs=True) for b in blocks] if checkpointing else []
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = encoder(ids, mask)
    finally:
        for h in hooks:
            h.remove()
    out.float().sum().backward()  # the graph is a real training one
    return sum(kept.values())


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-checkpointing", "checkpointing"])
@pytest.mark.parametrize("attention,dropout", [("eager", True), ("sdpa", True), ("sdpa", False)],
                         ids=["eager", "sdpa-math-path", "sdpa-fused"])
@pytest.mark.parametrize("model_type", ACTIVATION_FAMILIES)
def test_activations_within_25_percent_of_what_autograd_keeps(
    tiny_model_dir, no_dropout_dir, report, model_type, attention, dropout, checkpointing,
):
    folder = tiny_model_dir(model_type) if dropout else no_dropout_dir(model_type)
    ratios = []
    for n in (1, L, L + 1):
        # A fresh encoder per plan: transformers' checkpointing_disable() leaves the hook that
        # makes the embedding output require grad, which would change what later runs keep.
        encoder = HFTextEncoder(str(folder))
        encoder.transformer.set_attn_implementation(attention)
        plan = plan_lock(encoder, n)
        apply_lock(encoder, plan)
        encoder.train()
        encoder.set_grad_checkpointing(checkpointing)
        for batch, length in POINTS:
            measured = kept_for_backward(encoder, *batch_of(encoder, batch, length), checkpointing)
            est = estimate_memory(plan, batch=batch, seq_len=length, attention=attention,
                              grad_checkpointing=checkpointing, device="cpu")
            ratio = est.activations / measured
            ratios.append(ratio)
            assert 0.75 <= ratio <= 1.25, (n, batch, length, est.activations, measured)
    report(f"activations {model_type} {attention}{'' if dropout else ' no-dropout'}"
           f"{' checkpointing' if checkpointing else ''}: estimate/measured "
           f"{min(ratios):.3f}..{max(ratios):.3f} over N=1,{L},{L + 1} x (B,S)={POINTS}")


def test_frozen_blocks_keep_nothing_and_the_lowest_unlocked_block_decides(tiny_model_dir):
    encoder = HFTextEncoder(str(tiny_model_dir("bert")), pooler_type="mean")
    nothing = estimate_memory(plan_lock(encoder, 0), batch=4, seq_len=32)
    assert nothing.activations == nothing.gradients == nothing.optimizer_states == 0
    assert nothing.lowest_block is None
    one, two = (estimate_memory(plan_lock(encoder, n), batch=4, seq_len=32) for n in (1, 2))
    assert (one.lowest_block, two.lowest_block) == (L - 1, 0)
    assert 0 < one.activations < two.activations


# ---- contracts ----------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_every_architecture_is_estimated_offline_from_its_config(model_type):
    config = tiny_models.tiny_config(model_type)
    plan = plan_lock(config, L)
    base = estimate_memory(plan, batch=2, seq_len=16)
    assert base.activations > 0 and base.peak == max(base.phases.values()) and base.peak_phase in base.phases
    assert estimate_memory(plan, batch=4, seq_len=16).activations > base.activations
    assert estimate_memory(plan, batch=2, seq_len=32).activations > base.activations
    eager = estimate_memory(plan, batch=2, seq_len=16, attention="eager")
    assert "attention scores (S x S)" in dict(eager.activation_terms)  # eager keeps the S x S softmax
    if base.attention == "sdpa":  # the fused kernels (CUDA) keep none, whatever the dropout
        assert "attention scores (S x S)" not in dict(base.activation_terms)
    encoder = HFTextEncoder("tiny", config=config, pretrained=False)
    try:
        encoder.set_grad_checkpointing(True)
    except ConfigError:  # the estimate refuses exactly where transformers cannot checkpoint
        with pytest.raises(ConfigError, match="does not support gradient checkpointing"):
            estimate_memory(plan, batch=2, seq_len=16, grad_checkpointing=True)
    else:
        ckpt = estimate_memory(plan, batch=2, seq_len=16, grad_checkpointing=True)
        assert ckpt.recompute > 0 and ckpt.activations > 0


def test_bundled_bert_base_weights_and_gradients():
    est = estimate_memory(plan_lock("bert-base-uncased", 3), batch=32, seq_len=128)
    assert est.weights == 4 * 109_482_240  # BERT-base's well-known parameter count, in float32
    assert est.gradients == 4 * est.trainable_params < est.weights
    assert est.phases["backward"] == est.weights + est.optimizer_states + est.activations + est.gradients
    mixed = estimate_memory(plan_lock("bert-base-uncased", 3), batch=32, seq_len=128, precision="bf16-mixed")
    assert mixed.exact == est.exact and mixed.weight_copies > 0 and mixed.activations < est.activations
    assert estimate_memory(plan_lock("bert-base-uncased", 3), precision="bf16").weights == est.weights // 2


def test_estimate_memory_defaults_to_the_context_length_and_is_exported():
    import hfenc

    plan = plan_lock("bert-base-uncased", 2)
    assert hfenc.estimate_memory is estimate_memory
    assert estimate_memory(plan).seq_len == 512  # the context length by default
    assert estimate_memory(plan).seq_len == plan.config.max_position_embeddings


@pytest.mark.parametrize("options,error", [
    ({"optimizer": "adam"}, UnknownChoiceError), ({"precision": "fp8"}, UnknownChoiceError),
    ({"attention": "flash"}, UnknownChoiceError), ({"batch": 0}, ConfigError),
])
def test_bad_options_are_one_line_errors_with_the_choices(options, error):
    with pytest.raises(error) as info:
        estimate_memory(plan_lock("bert-base-uncased", 1), **options)
    assert isinstance(info.value, HfencError) and "\n" not in str(info.value)


# ---- the command --------------------------------------------------------------------------

def invoke(*args: str):
    return CliRunner().invoke(app, ["lock-plan", *args], env={"COLUMNS": "80"})


def test_cli_memory_table_fits_80_columns():
    result = invoke("bert-base-uncased", "--unlocked", "3", "--memory", "--batch", "32", "--seq-len", "128")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "backward (peak)" in result.stdout and "activations" in result.stdout
    assert "109,482,240 params" in result.stdout


def test_cli_memory_json():
    result = invoke("bert-base-uncased", "--unlocked", "3", "--memory", "--batch", "32", "--seq-len", "128",
                    "--precision", "bf16-mixed", "--grad-checkpointing", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    memory = data["memory"]
    assert data["trainable_params"] == memory["trainable_params"]  # the plan and its estimate
    assert (memory["batch"], memory["seq_len"], memory["precision"]) == (32, 128, "bf16-mixed")
    assert memory["peak"] == max(memory["phases"].values()) == memory["phases"][memory["peak_phase"]]
    assert memory["bytes"]["weights"] == 4 * 109_482_240
    assert math.isclose(sum(memory["activation_terms"].values()), memory["bytes"]["activations"])


def test_cli_memory_options_need_memory_and_bad_choices_fail():
    result = invoke("bert-base-uncased", "--unlocked", "3", "--batch", "32")
    assert result.exit_code == 2 and "only with --memory" in result.stderr
    result = invoke("bert-base-uncased", "--unlocked", "3", "--memory", "--optimizer", "adam")
    assert result.exit_code == 1 and "unknown optimizer 'adam'" in result.stderr and result.stdout == ""
    result = invoke("microsoft/mpnet-base", "--unlocked", "1", "--memory", "--grad-checkpointing")
    assert result.exit_code == 1 and "does not support gradient checkpointing" in result.stderr
