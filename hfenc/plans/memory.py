"""Memory estimates for a lock plan: does fine-tuning with N unlocked blocks fit on the GPU?

`estimate_memory(plan, ...)` returns a MemoryEstimate value, built from the
plan and the model's config alone: no weights, no device, no network.

Two kinds of parts, and the difference matters:

- Exact parts, from the parameter shapes the plan holds: weights (every parameter), gradients and
  optimizer states (trainable parameters only), master weights. For the torch optimizers they are
  what a real step leaves allocated, to the byte (tests/test_memory.py checks it):
  AdamW `exp_avg` + `exp_avg_sq` + a 4-byte `step` tensor per parameter; SGD one `momentum_buffer`
  (none with momentum=False); transformers' Adafactor (beta1=None) a row and a column vector per
  matrix, a full `exp_avg_sq` per vector (float32 either way) and a 4-byte `RMS` tensor per
  parameter. bitsandbytes' 8-bit AdamW is counted from its source
  (not installed here, so untested): two uint8 states plus one float32 absmax per 2,048 elements for
  tensors of >= 4,096 elements, two float32 states below that, and its two 256-entry quantisation
  maps once.
- Activations are a model: the tensors autograd keeps for backward, per block, after Korthikanti et
  al. 2022, "Reducing Activation Recomputation in Large Transformer Models" (section 4.1: 34·sbh +
  5·as²b bytes per layer in 16-bit), generalised to each family's layout (pre/post norm, LayerNorm
  or RMSNorm in Python, plain or gated MLP, the activation function's own saved tensors, which
  dropouts exist) and to the attention kernel: eager (and PyTorch's math fallback) keeps the S x S
  softmax, its dropout mask and the dropped probabilities; fused SDPA keeps q, k, v, the output and
  a logsumexp row. Only blocks from the lowest unlocked one upward keep anything: below it no input
  requires grad. Checked on CPU against the saved-tensor hooks of autograd for BERT- and T5-likes,
  eager and SDPA, with and without checkpointing (the test's bound is 25%; measured within 1.5%);
  the figures are in the README.

Trade-offs, stated rather than hidden: the batch is assumed padded (the attention mask is
materialised); kernel facts differ by device (`device="cuda"`, the default, keeps 1-byte dropout
masks and fused kernels that take dropout and a bias gradient; `device="cpu"` models PyTorch's CPU
kernels, which keep a float noise tensor and fall back to the math path); allocator fragmentation,
the CUDA context, the loss and the largest op's transient workspace are not counted; the backward
phase is an upper bound (every gradient allocated while every activation is still held).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from hfenc.model.archs import ARCHS
from hfenc.errors import ConfigError, UnknownChoiceError

if TYPE_CHECKING:
    from hfenc.model.freeze import LockPlan

OPTIMIZERS = ("adamw", "adamw8bit", "sgd", "adafactor")
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed", "bf16")
ATTENTIONS = ("sdpa", "eager")
DEVICES = ("cuda", "cpu")


@dataclass(frozen=True)
class Precision:
    """Bytes per element of each kind of tensor under one precision setting."""

    param: int  # parameters as stored (and their .grad, and torch optimizers' zeros_like states)
    act: int  # matmul outputs and what follows them (the compute dtype)
    stream: int  # the residual stream and norm inputs: autocast leaves them in float32
    softmax: int  # eager softmax output: CUDA autocast runs softmax in float32
    copies: int  # the 16-bit copy autocast caches of each trainable nn.Linear weight (0: none)


PRECISION: dict[str, Precision] = {
    "fp32": Precision(4, 4, 4, 4, 0),
    # torch.autocast: the float32 parameters are the master copy (nothing else is kept); matmuls
    # run on 16-bit copies, which autocast caches for trainable weights until backward needs them.
    "bf16-mixed": Precision(4, 2, 4, 4, 2),
    "fp16-mixed": Precision(4, 2, 4, 4, 2),
    "bf16": Precision(2, 2, 2, 2, 0),  # weights, gradients and torch optimizers' states in bfloat16
}


@dataclass(frozen=True)
class Kernels:
    """The kernel facts that change what autograd keeps, per device type."""

    dropout_mask: int | None  # bytes per element of a dropout mask; None: the dropped tensor's dtype
    fused_dropout: bool  # fused SDPA kernels take dropout (else PyTorch uses its math path)
    fused_bias_grad: bool  # ... and the gradient of an additive attention bias (T5's position bias)


KERNELS: dict[str, Kernels] = {
    # CUDA: native_dropout keeps a bool mask; the memory-efficient kernel takes dropout and an
    # attention bias that requires grad.
    "cuda": Kernels(1, True, True),
    # CPU: dropout multiplies by a float noise tensor it keeps; the flash kernel takes neither
    # dropout nor a bias that requires grad, so those calls run the math path (S x S kept).
    "cpu": Kernels(None, False, False),
}

# Activation functions (config names, transformers.activations): (tensors of the MLP width the
# function keeps for backward besides its output, whether it keeps its own output). Counted from
# each function's autograd graph: F.gelu and F.silu keep their input, ReLU its output; gelu_new is
# Python (0.5*x*(1+tanh(c*(x+0.044715*x**3)))) and keeps x, tanh(.), 0.5*x and 1+tanh(.).
ACTIVATIONS: dict[str, tuple[int, bool]] = {
    "relu": (0, True), "gelu": (1, False), "gelu_pytorch_tanh": (1, False), "silu": (1, False),
    "swish": (1, False), "gelu_new": (4, False), "quick_gelu": (2, False), "tanh": (0, True),
}
_UNKNOWN_ACTIVATION = (1, False)


@dataclass(frozen=True)
class Recipe:
    """What one family's blocks keep for backward, as config attribute names and layout facts."""

    heads: str = "num_attention_heads"
    intermediate: str = "intermediate_size"
    activation: str = "hidden_act"
    kv_heads: str | None = None  # grouped-query attention: K and V are repeated to every head
    head_dim: str | None = None  # None: width // heads
    norm: str = "layer"  # layer: fused LayerNorm (keeps its input) | rms: Python RMSNorm (input, normalised)
    pre_norm: bool = False  # norm before each sublayer (T5, decoders) or after the residual (BERT)
    gated: bool | str = False  # gated MLP (act(gate(x)) * up(x)); a str names a config attribute
    attn_out_dropout: str | None = "hidden_dropout_prob"
    mlp_out_dropout: str | None = "hidden_dropout_prob"
    mlp_dropout: str | None = None  # inside the MLP, after the activation
    attention_dropout: str | None = "attention_probs_dropout_prob"
    embedding_dropout: str | None = "hidden_dropout_prob"
    embedding_norm: bool = True  # the embeddings end with a LayerNorm
    embedding_width: str | None = None  # ELECTRA's embeddings are narrower than its blocks
    first_attn_norm: bool = True  # ModernBERT's first block has no attention norm
    final_dropout: str | None = None  # T5 drops out after its final norm
    relative_bias: str | None = None  # first: computed by block 0 and reused (T5) | every: per block (UMT5)
    qk_norm: bool = False  # Qwen3: RMSNorm on q and k per head
    softmax_fp32: bool = False  # eager softmax upcast to float32, then cast back
    fused_qkv: bool = False  # one Wqkv projection: SDPA's v is a view that keeps its whole output
    disentangled: bool = False  # DeBERTa's c2p/p2c terms over 2k relative positions
    mask_bytes: int | None = None  # the (B, 1, S, S) mask's element; None: bool for SDPA, additive for eager
    masks: int = 1  # masks the blocks take (ModernBERT: a global and a sliding-window one)
    rotary: int = 0  # rotary (cos, sin) tables the blocks take, each (1, S, head_dim)


_BERT = Recipe()
_T5 = Recipe(
    heads="num_heads", intermediate="d_ff", activation="dense_act_fn", head_dim="d_kv", norm="rms",
    pre_norm=True, gated="is_gated_act", attn_out_dropout="dropout_rate", mlp_out_dropout="dropout_rate",
    mlp_dropout="dropout_rate", attention_dropout="dropout_rate", embedding_dropout="dropout_rate",
    embedding_norm=False, final_dropout="dropout_rate", relative_bias="first",
)
_DECODER = Recipe(
    activation="hidden_act", kv_heads="num_key_value_heads", head_dim="head_dim", norm="rms",
    pre_norm=True, gated=True, attn_out_dropout=None, mlp_out_dropout=None, attention_dropout="attention_dropout",
    embedding_dropout=None, embedding_norm=False, softmax_fp32=True, rotary=1,
)
RECIPES: dict[str, Recipe] = {
    "bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT, "camembert": _BERT, "mpnet": _BERT,
    "electra": Recipe(embedding_width="embedding_size"),
    "deberta-v2": Recipe(disentangled=True, mask_bytes=8),  # an int64 product of the padding mask
    "distilbert": Recipe(
        heads="n_heads", intermediate="hidden_dim", activation="activation", attn_out_dropout=None,
        mlp_out_dropout="dropout", attention_dropout="attention_dropout", embedding_dropout="dropout",
    ),
    "modernbert": Recipe(
        activation="hidden_activation", pre_norm=True, gated=True, attn_out_dropout="attention_dropout",
        mlp_out_dropout=None, mlp_dropout="mlp_dropout", attention_dropout="attention_dropout",
        embedding_dropout="embedding_dropout", first_attn_norm=False, softmax_fp32=True, fused_qkv=True,
        masks=2, rotary=2,
    ),
    "t5": _T5, "mt5": _T5, "umt5": replace(_T5, relative_bias="every"),
    # NLLB's encoder_layerdrop skips blocks at random in training: the estimate assumes all run
    "m2m_100": Recipe(
        heads="encoder_attention_heads", intermediate="encoder_ffn_dim", activation="activation_function",
        pre_norm=True, attn_out_dropout="dropout", mlp_out_dropout="dropout", mlp_dropout="activation_dropout",
        attention_dropout="attention_dropout", embedding_dropout="dropout", embedding_norm=False,
    ),
    "llama": _DECODER, "mistral": _DECODER, "qwen2": _DECODER,
    "qwen3": replace(_DECODER, qk_norm=True),
}
_GENERIC = Recipe()  # a discovered model type: BERT-like terms, said in the estimate's notes

PHASES = ("forward", "backward", "optimizer step")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a fine-tuning step with one lock plan needs. Exact parts are exact; `activations` is
    the model described in hfenc.plans.memory; phases say when each part is held."""

    model: str
    unlocked: int
    optimizer: str
    precision: str
    batch: int
    seq_len: int
    grad_checkpointing: bool
    attention: str  # the kernel the estimate assumed (sdpa falls back to eager where unsupported)
    device: str
    params: int
    trainable_params: int
    weights: int
    gradients: int
    optimizer_states: int
    master_weights: int
    weight_copies: int  # autocast's cached 16-bit copies of trainable weights, held for backward
    activations: int
    activation_terms: tuple[tuple[str, int], ...]
    recompute: int  # with checkpointing: one block's activations, rebuilt during backward
    step_temporaries: int  # what the optimizer's update allocates while it runs
    lowest_block: int | None  # the lowest block that keeps activations (None: none does)
    notes: tuple[str, ...] = field(default=())

    @property
    def exact(self) -> int:
        """Weights + gradients + optimizer states + master weights: what a real step leaves allocated."""
        return self.weights + self.gradients + self.optimizer_states + self.master_weights

    @property
    def total(self) -> int:
        """Every part at once (an upper bound on the peak)."""
        return self.exact + self.weight_copies + self.activations + self.recompute + self.step_temporaries

    @property
    def phases(self) -> dict[str, int]:
        held = self.weights + self.master_weights + self.optimizer_states  # across steps
        return {
            "forward": held + self.weight_copies + self.activations,
            "backward": held + self.weight_copies + self.activations + self.recompute + self.gradients,
            "optimizer step": held + self.gradients + self.step_temporaries,
        }

    @property
    def peak_phase(self) -> str:
        phases = self.phases
        return max(PHASES, key=lambda name: phases[name])

    @property
    def peak(self) -> int:
        return self.phases[self.peak_phase]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "unlocked": self.unlocked, "optimizer": self.optimizer,
            "precision": self.precision, "batch": self.batch, "seq_len": self.seq_len,
            "grad_checkpointing": self.grad_checkpointing, "attention": self.attention, "device": self.device,
            "params": self.params, "trainable_params": self.trainable_params,
            "bytes": {
                "weights": self.weights, "gradients": self.gradients, "optimizer_states": self.optimizer_states,
                "master_weights": self.master_weights, "weight_copies": self.weight_copies,
                "activations": self.activations, "recompute": self.recompute,
                "step_temporaries": self.step_temporaries, "exact": self.exact, "total": self.total,
            },
            "activation_terms": dict(self.activation_terms),
            "lowest_block": self.lowest_block,
            "phases": self.phases, "peak_phase": self.peak_phase, "peak": self.peak,
            "notes": list(self.notes),
        }


# ---- exact parts ------------------------------------------------------------------------------

def optimizer_state_bytes(shapes: list[tuple[int, ...]], optimizer: str, param_bytes: int,
                          momentum: bool = True) -> int:
    """Bytes of optimizer state for trainable parameters of these shapes, after the first step."""
    numel = [math.prod(s) for s in shapes]
    if optimizer == "adamw":  # exp_avg, exp_avg_sq like the param; `step` a float32 scalar tensor
        return sum(2 * n * param_bytes + 4 for n in numel)
    if optimizer == "sgd":  # one momentum_buffer like the grad, or nothing
        return sum(n * param_bytes for n in numel) if momentum else 0
    if optimizer == "adafactor":  # transformers' Adafactor, beta1=None: factored second moments,
        total = 0  # in float32 whatever the param dtype (it upcasts 16-bit grads before its state),
        for s in shapes:  # plus `RMS`, a float32 scalar tensor, per parameter
            if len(s) >= 2:
                total += (math.prod(s[:-1]) + math.prod(s[:-2]) * s[-1]) * 4 + 4
            else:
                total += math.prod(s) * 4 + 4
        return total
    if optimizer == "adamw8bit":  # bitsandbytes Optimizer2State.init_state, block_wise=True:
        total = 0  # uint8 states, and a float32 absmax per block of 256 elements for each
        for n in numel:
            if n < 4096:
                total += 2 * n * 4
            else:
                total += 2 * n + 2 * math.ceil(n / 256) * 4
        return total + (2 * 256 * 4 if any(n >= 4096 for n in numel) else 0)  # qmap1, qmap2: shared
    raise UnknownChoiceError("optimizer", optimizer, OPTIMIZERS)


def _step_temporaries(shapes: list[tuple[int, ...]], optimizer: str, param_bytes: int) -> int:
    numel = [math.prod(s) for s in shapes]
    if not numel:
        return 0
    if optimizer == "adamw":  # torch's foreach AdamW: _foreach_sqrt(exp_avg_sqs) is one full copy
        return sum(numel) * param_bytes
    if optimizer == "adafactor":  # per parameter: grad**2 + eps, then the factored approximation
        return 2 * max(numel) * 4
    return 0  # SGD's foreach update and bitsandbytes' fused kernel work in place


# ---- activations ------------------------------------------------------------------------------

def _cfg(config: Any, attr: str | None, default: Any = 0) -> Any:
    value = getattr(config, attr, None) if attr else None
    return default if value is None else value


def _p(config: Any, attr: str | None) -> float:
    return float(_cfg(config, attr, 0.0))


def sdpa_supported(config: Any) -> bool:
    """Whether transformers' class for this config implements SDPA (its `_supports_sdpa`); hfenc
    loads with SDPA where it can and falls back to eager attention elsewhere."""
    cls = _transformers_class(config)
    return bool(getattr(cls, "_supports_sdpa", False)) if cls is not None else False


def _transformers_class(config: Any) -> Any:
    """The class hfenc builds for this config (the table's, else AutoModel's), or None."""
    import transformers

    from hfenc.model.encoder import model_class

    cls = model_class(ARCHS.get(config.model_type))
    if cls is transformers.AutoModel:
        try:
            cls = transformers.AutoModel._model_mapping[type(config)]
        except (KeyError, ValueError):
            return None
    return cls


def checkpointing_supported(config: Any) -> bool:
    """Whether transformers' class for this config supports activation checkpointing."""
    cls = _transformers_class(config)
    return bool(getattr(cls, "supports_gradient_checkpointing", False)) if cls is not None else True


class _Activations:
    """Bytes each part of the model keeps for backward, for one (batch, sequence) shape."""

    def __init__(self, config: Any, recipe: Recipe, width: int, batch: int, seq_len: int,
                 precision: Precision, kernels: Kernels, fused: bool) -> None:
        r = recipe
        self.r, self.kern, self.fused = r, kernels, fused
        self.T, self.B, self.S = batch * seq_len, batch, seq_len
        self.H = width
        self.E = int(_cfg(config, r.embedding_width, width))
        self.heads = int(_cfg(config, r.heads))
        self.kv_heads = int(_cfg(config, r.kv_heads, self.heads))
        self.head_dim = int(_cfg(config, r.head_dim, width // self.heads))
        self.Dq = self.heads * self.head_dim
        self.I = int(_cfg(config, r.intermediate))
        activation = str(_cfg(config, r.activation, ""))
        self.act_saved, self.act_keeps_output = ACTIVATIONS.get(activation, _UNKNOWN_ACTIVATION)
        self.gated = bool(_cfg(config, r.gated, False)) if isinstance(r.gated, str) else r.gated
        self.p_attn = _p(config, r.attention_dropout)
        self.p_attn_out, self.p_mlp_out = _p(config, r.attn_out_dropout), _p(config, r.mlp_out_dropout)
        self.p_mlp, self.p_emb = _p(config, r.mlp_dropout), _p(config, r.embedding_dropout)
        self.p_final = _p(config, r.final_dropout)
        self.prec, self.e, self.stream = precision, precision.act, precision.stream
        self.softmax = 4 if r.softmax_fp32 else precision.softmax
        # DeBERTa: relative positions span 2k = 2 * (position_buckets, or max_relative_positions)
        buckets = int(_cfg(config, "position_buckets", -1))
        max_rel = int(_cfg(config, "max_relative_positions", -1))
        positions = int(_cfg(config, "max_position_embeddings", 512))
        self.span = buckets if buckets > 0 else max_rel if max_rel > 0 else positions
        self.pos_types = [t for t in (_cfg(config, "pos_att_type", None) or ()) if t in ("c2p", "p2c")]

    def mask(self, dtype_bytes: int) -> int:
        return self.kern.dropout_mask or dtype_bytes

    def norm(self, numel: int, input_grad: bool) -> int:
        """A norm over `numel` elements (its output is counted where it is used)."""
        rows = numel // self.H if self.H else 0
        if self.r.norm == "rms":  # x.float() kept by pow and mul only when x needs a grad; normalised by `weight *`
            return (numel * 4 + rows * 4 if input_grad else 0) + numel * self.stream
        return numel * self.stream + rows * 8  # input, mean, rstd

    def block(self, index: int, input_grad: bool, bias_grad: bool) -> dict[str, int]:
        """One block whose weights train (or whose input needs a grad)."""
        T, H, e, I, out = self.T, self.H, self.e, self.I, defaultdict(int)
        # attention sublayer: its input, as the q/k/v projections keep it
        if self.r.pre_norm and (index > 0 or self.r.first_attn_norm):
            out["norms"] += self.norm(T * H, input_grad)
        out["inputs of linears"] += T * H * e
        out["q, k, v"] += 3 * T * self.Dq * e  # K and V repeated to every head (repeat_kv) under a mask
        if self.r.qk_norm:
            out["norms"] += (T * self.Dq + T * self.kv_heads * self.head_dim) * (4 + self.stream)
        fused = self.fused and not (bias_grad and not self.kern.fused_bias_grad)
        scores = self.B * self.heads * self.S * self.S
        if fused:
            out["attention (fused)"] += self.B * self.heads * self.S * 4  # logsumexp
            if self.r.fused_qkv:  # q and k are new (rotary); v keeps the whole q|k|v output alive
                out["q, k, v"] += 2 * T * self.Dq * e
            if self.r.relative_bias:  # transformers adds the position bias to the mask, per block
                out["attention (fused)"] += scores * self.stream
            else:  # SDPA turns the model's bool mask into a float one in q's dtype, per call
                out["attention (fused)"] += self.B * self.S * self.S * e
        else:
            s = self.softmax
            kept = s + (self.mask(s) + e if self.p_attn > 0 else (e if s != e else 0))
            out["attention scores (S x S)"] += scores * kept
        if self.r.disentangled:
            for key, value in self.disentangled().items():
                out[key] += value
        out["inputs of linears"] += T * self.Dq * e  # attention output, as the output projection keeps it
        if self.p_attn_out > 0:
            out["dropout masks"] += T * H * self.mask(e)
        # the norm between the sublayers (after the residual in post-norm, before the MLP in
        # pre-norm: the same tensors either way); its output is kept by the MLP's first linear
        out["norms"] += self.norm(T * H, True)
        out["inputs of linears"] += T * H * e
        # MLP
        TI = T * I
        if self.gated:  # act(gate(x)) * up(x): the product keeps both factors
            out["mlp"] += TI * e * (self.act_saved + 2)
            if self.p_mlp > 0:
                out["dropout masks"] += TI * self.mask(e)
            out["mlp"] += TI * e  # the product (or its dropout), kept by the down projection
        else:
            out["mlp"] += TI * e * self.act_saved
            if self.act_keeps_output or not self.p_mlp > 0:
                out["mlp"] += TI * e  # the activation's output
            if self.p_mlp > 0:
                out["dropout masks"] += TI * self.mask(e)
                out["mlp"] += TI * e  # the dropped output, kept by the down projection
        if self.p_mlp_out > 0:
            out["dropout masks"] += T * H * self.mask(e)
        if not self.r.pre_norm:
            out["norms"] += self.norm(T * H, True)
        return out

    def disentangled(self) -> dict[str, int]:
        """DeBERTa-v2 per block: k / sqrt(d·scale) kept beside k; per c2p/p2c type the projected
        relative embeddings repeated over the batch, the (B·h, S, 2k) product kept by gather, and
        its (S, S) index; the relative embeddings, kept by the projections (new per block under
        dropout)."""
        out, e = defaultdict(int), self.e
        out["q, k, v"] += self.T * self.Dq * e
        for _ in self.pos_types:
            out["relative positions"] += self.B * self.heads * 2 * self.span * (self.head_dim + self.S) * e
            out["relative positions"] += self.S * self.S * 8
        if self.p_attn_out > 0:
            out["relative positions"] += 2 * self.span * self.H * e
        return out

    def embeddings(self, weights_train: bool, computed_positions: bool) -> dict[str, int]:
        """After the lookup: indices (when the tables train), the norm, the dropout."""
        T, out = self.T, defaultdict(int)
        if weights_train:  # token ids (and RoBERTa's computed position ids), kept by the lookups
            out["embeddings"] += T * 8 * (2 if computed_positions else 1)
        if self.r.embedding_norm:
            out["embeddings"] += T * self.E * self.stream + T * 8
        if self.p_emb > 0:
            out["embeddings"] += T * self.E * self.mask(self.stream)
        if self.E != self.H and weights_train:  # ELECTRA: the projection keeps its input
            out["embeddings"] += T * self.E * self.e
        return out


def estimate_memory(
    plan: LockPlan,
    *,
    optimizer: str = "adamw",
    precision: str = "fp32",
    batch: int = 1,
    seq_len: int | None = None,
    grad_checkpointing: bool = False,
    attention: str = "sdpa",
    device: str = "cuda",
    momentum: bool = True,
) -> MemoryEstimate:
    """Estimate what fine-tuning with `plan` needs: exact parts from its shapes, activations from
    its config. `seq_len` defaults to the model's context length (512 where positions are
    relative); `momentum` applies to sgd (torch.optim.SGD(momentum=0.9) by default)."""
    if optimizer not in OPTIMIZERS:
        raise UnknownChoiceError("optimizer", optimizer, OPTIMIZERS)
    if precision not in PRECISIONS:
        raise UnknownChoiceError("precision", precision, PRECISIONS)
    if attention not in ATTENTIONS:
        raise UnknownChoiceError("attention", attention, ATTENTIONS)
    if device not in DEVICES:
        raise UnknownChoiceError("device", device, DEVICES)
    config = plan.config
    if config is None:
        raise ConfigError("this lock plan carries no model config; build it with plan_lock()")
    if batch < 1 or (seq_len is not None and seq_len < 1):
        raise ConfigError(f"batch and seq_len must be at least 1 (got batch={batch}, seq_len={seq_len})")
    prec, kern = PRECISION[precision], KERNELS[device]
    arch = ARCHS.get(plan.model_type)
    recipe = RECIPES.get(plan.model_type, _GENERIC)
    notes = ["a sparse tower's logits (batch x tokens x vocabulary, and gradients) are not counted"] \
        if plan.pooler.startswith("splade_") else []
    if plan.model_type not in RECIPES:
        notes.append(f"no activation recipe for model type {plan.model_type!r}: BERT-like terms assumed")
    width = arch.width(config) if arch else int(next(
        getattr(config, a) for a in ("hidden_size", "d_model", "dim", "n_embd") if hasattr(config, a)))
    if seq_len is None:
        seq_len = (arch.context_length(config) if arch else None) or int(_cfg(config, "max_position_embeddings", 512))

    # exact parts
    trainable = [(p, size, shape) for g in plan.groups
                 for p, size, shape in zip(g.params, g.sizes, g.shapes or ((s,) for s in g.sizes))
                 if p in plan.trainable]
    shapes = [shape for _, _, shape in trainable]
    weights = plan.total * prec.param
    gradients = sum(size for _, size, _ in trainable) * prec.param
    states = optimizer_state_bytes(shapes, optimizer, prec.param, momentum)
    linear = {p for g in plan.groups for p in g.linear}
    copies = sum(size for p, size, _ in trainable if p in linear) * prec.copies
    if prec.copies:
        notes.append("autocast: the float32 weights are the master copy (no other is kept); "
                     "16-bit copies of trainable linear weights are held for backward")

    # activations
    sdpa = attention == "sdpa" and sdpa_supported(config)
    if attention == "sdpa" and not sdpa:
        notes.append(f"transformers has no SDPA for {plan.model_type}: eager attention assumed")
    fused = sdpa and (_p(config, recipe.attention_dropout) == 0 or kern.fused_dropout)
    if sdpa and not fused:
        notes.append("attention dropout on this device: PyTorch runs SDPA's math path (S x S kept)")
    if grad_checkpointing and not checkpointing_supported(config):
        raise ConfigError(f"{plan.model_type} does not support gradient checkpointing")
    acts = _Activations(config, recipe, width, batch, seq_len, prec, kern, fused)
    terms, recompute, lowest = _kept_for_backward(plan, arch, recipe, acts, sdpa, grad_checkpointing)
    if grad_checkpointing:
        notes.append("checkpointing: every block keeps its input (transformers makes the embedding "
                     "output require grad), so backward also runs through the frozen blocks")
    elif lowest is None:
        notes.append("no block trains: only the head keeps activations")
    return MemoryEstimate(
        model=plan.model, unlocked=plan.unlocked, optimizer=optimizer, precision=precision, batch=batch,
        seq_len=seq_len, grad_checkpointing=grad_checkpointing, attention="sdpa" if sdpa else "eager",
        device=device, params=plan.total, trainable_params=plan.trainable_count, weights=weights,
        gradients=gradients, optimizer_states=states, master_weights=0, weight_copies=copies,
        activations=sum(terms.values()), activation_terms=tuple((k, v) for k, v in terms.items() if v),
        recompute=recompute, step_temporaries=_step_temporaries(shapes, optimizer, prec.param),
        lowest_block=lowest, notes=tuple(notes),
    )


def _kept_for_backward(plan: LockPlan, arch: Any, recipe: Recipe, acts: _Activations, sdpa: bool,
                       checkpointing: bool) -> tuple[dict[str, int], int, int | None]:
    """(bytes by term, one block's recompute under checkpointing, the lowest block that keeps
    anything) for the whole model."""
    by_group = {g.name: g for g in plan.groups}

    def trains(name: str) -> bool:
        g = by_group.get(name)
        return g is not None and plan.group_trainable(g) > 0

    def bias_grad(i: int) -> bool:  # T5's bias table lives in block 0; UMT5 has one per block
        if recipe.relative_bias == "first":
            return trains("layer.0")
        return recipe.relative_bias == "every" and trains(f"layer.{i}")

    L, B, S, T, H, prec = plan.num_layers, acts.B, acts.S, acts.T, acts.H, acts.prec
    blocks = [i for i in range(L) if trains(f"layer.{i}")]
    upstream = trains("embeddings") or trains("shared")
    lowest = 0 if upstream else (blocks[0] if blocks else None)
    positions = bool(arch and arch.position_offset)  # RoBERTa-likes compute position ids per batch
    terms: dict[str, int] = defaultdict(int)
    recompute = 0

    def add(part: dict[str, int]) -> None:
        for key, value in part.items():
            terms[key] += value

    rotary = recipe.rotary * 2 * S * acts.head_dim * prec.stream  # cos and sin, kept by q * cos ...
    if checkpointing:
        # transformers' activation checkpointing makes the embedding output require grad (so that
        # re-entrant checkpoints work with frozen embeddings): every block, frozen or not, keeps
        # its input and the tensors passed to it, and is rebuilt and back-propagated.
        add(acts.embeddings(trains("embeddings"), positions))
        terms["block inputs"] += L * T * H * prec.stream
        terms["rotary tables"] += rotary
        # the model's (B, 1, S, S) mask: bool for SDPA, additive in the stream's dtype for eager
        terms["attention mask"] += recipe.masks * B * S * S * (recipe.mask_bytes or (1 if sdpa else prec.stream))
        if recipe.disentangled:  # relative positions and embeddings, inputs of every block
            terms["relative positions"] += S * S * 8 + 2 * acts.span * H * prec.stream
        if recipe.relative_bias == "first":  # block 0's position bias, an input of the others
            terms["attention mask"] += acts.heads * S * S * 4
        recompute = sum(acts.block(L - 1, True, bias_grad(L - 1)).values())
    elif lowest is not None:
        if upstream:
            add(acts.embeddings(trains("embeddings"), positions))
        for i in range(lowest, L):
            add(acts.block(i, i > lowest or upstream, bias_grad(i)))
        terms["rotary tables"] += rotary
        if recipe.disentangled:  # the bool mask kept by masked_fill; the relative embeddings, once
            terms["attention mask"] += B * S * S
            if acts.p_attn_out == 0:
                terms["relative positions"] += 2 * acts.span * H * prec.act
        if recipe.relative_bias == "first" and trains("layer.0"):
            terms["attention mask"] += S * S * 8  # bucket ids, kept by the bias table's backward
    if arch is not None and arch.final_norm and (checkpointing or lowest is not None):
        terms["norms"] += acts.norm(T * H, True)
        if acts.p_final > 0:
            terms["dropout masks"] += T * H * acts.mask(prec.stream)
    if trains("pooling_layer"):  # BERT's pooler reads hidden[:, 0], a view of the whole last state
        kept_rows = T if prec.act == prec.stream else B  # under autocast it keeps a 16-bit copy
        terms["head"] += kept_rows * H * prec.act + B * H * prec.act
    return terms, recompute, lowest


__all__ = ["MemoryEstimate", "OPTIMIZERS", "PRECISIONS", "estimate_memory", "optimizer_state_bytes"]
