"""Reduced precision that keeps the numbers: mixed bf16/fp16 and an int8 path, with a measured guard.

bfloat16 / float16 ("mixed", issue 14): the transformer is loaded in float32; then only the
weights of its Linear layers are stored in the low dtype, and the forward runs under
`torch.autocast`. Matmuls (Linear, attention) run in bf16/fp16; layer norms and RMS norms
(weights and compute), softmax accumulation, GELU, residual adds, the embeddings and pooling sums
stay float32, and so does every buffer (rotary inv_freq) and every module transformers keeps in
float32 (`_keep_in_fp32_modules`, e.g. T5's `wo`: run with autocast off). Measured on all-MiniLM-
L6-v2, 2,000 real texts, 2-core AMD EPYC with AVX512-BF16 (benchmarks/README.md): plain bf16
(the whole model cast) min cosine 0.999913; autocast over float32 weights 0.999956 but re-casts
every weight each batch; this scheme 0.999956 and the fastest of the three.

int8 (measured, not shipped as an option): `to_int8` gives every Linear of the transformer (not
the pooling layer, not what transformers keeps in float32) per-output-channel symmetric int8
weights; activations are quantized per token (one scale per row, on the fly) and multiplied with
`torch._int_mm` (VNNI on x86). Per-tensor activation scales (torch's `quantize_dynamic`) lose
too much on BERT-likes, whose hidden states carry a few outlier channels: min cosine 0.82 (0.92
per-channel) on 2,000 MiniLM texts. Per-token scales reach 0.988 there, 0.969 on "Thanks!"
(short texts are the fragile ones; no single layer is to blame), at ~1.4x float32 on 2 cores:
below the issue's bar (2x at min cosine 0.99), so the torch backend does not offer it; it stays
here for benchmarks/bench_int8.py. `--dtype int8` is OpenVINO's (hfenc.compute.openvino: fused
per-token-group kernels, ~2.5x torch float32 at min cosine 0.9955), guarded by INT8_MIN_COSINE.

Trade-off: the guard. `auto` on a CPU with native bf16 is only used when it keeps the embeddings
close on PROBE_TEXTS (min cosine vs float32 >= AUTO_BF16_MIN_COSINE), measured at load time on the
model itself; that costs two passes over 32 texts when the model loads, and a probe is not the
user's data (an explicit --dtype bfloat16 is not guarded).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

LOW_DTYPES = (torch.bfloat16, torch.float16)
INT8 = torch.int8
AUTO_BF16_MIN_COSINE = 0.9999
INT8_MIN_COSINE = 0.99

# Real, varied English (short titles to paragraphs): the guard's probe.
PROBE_TEXTS: tuple[str, ...] = (
    "Return a new sorted list from the items in iterable.",
    "Open file and return a stream.",
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Weather forecast for tomorrow: light rain in the morning, clearing by noon.",
    "Compute the arithmetic mean along the specified axis.",
    "A man is playing a guitar on stage.",
    "Two dogs are running through a field of tall grass.",
    "Stock markets fell sharply after the central bank raised interest rates again.",
    "Python is a programming language that lets you work quickly and integrate systems effectively.",
    "Install the package with pip, then import it in your script.",
    "What is the capital of Australia?",
    "Canberra is the capital city of Australia.",
    "The patient was given antibiotics and discharged after three days.",
    "Error: permission denied while opening the configuration file.",
    "She sells sea shells by the sea shore.",
    "Introduction",
    "Thanks!",
    "The mitochondria is the powerhouse of the cell.",
    "Gradient descent updates the parameters in the direction that reduces the loss.",
    "Please find attached the invoice for last month's consulting work.",
    "The train to Berlin leaves from platform nine at half past seven.",
    "This function is deprecated and will be removed in a future release; use the new API instead.",
    "A woman is slicing tomatoes in a kitchen.",
    ("Deep learning models are trained on large datasets. They learn representations of the input "
     "that make downstream tasks easier, such as classification, retrieval or translation. Training "
     "them needs accelerators and careful tuning of the learning rate, the batch size and the "
     "regularisation, and evaluating them needs held-out data that resembles what they will see."),
    ("The library reads text files line by line, tokenizes each record, sorts the records by length "
     "so that batches waste little padding, runs the encoder, pools the token vectors into one "
     "vector per record and writes the rows to a memory-mapped array in their original order."),
    ("In 1969 the Apollo 11 mission landed the first humans on the Moon. Neil Armstrong and Buzz "
     "Aldrin spent about two and a quarter hours outside the lunar module, collected samples and "
     "set up experiments, while Michael Collins orbited above in the command module."),
    "Hello world",
    "Numbers like 3.14159, 2,718 and 1e-9 appear in scientific text.",
    "Café, naïve, résumé: accents and diacritics in English loanwords.",
    "An unexpected keyword argument was passed to the constructor.",
    "Sort the rows by the second column in descending order and keep the first ten.",
)


def load_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the transformer is loaded in: float32 for every mixed or int8 scheme (the low
    dtype is applied afterwards, to the Linear weights only)."""
    return torch.float32


def _keep_fp32_prefixes(module: nn.Module) -> list[str]:
    """Names of submodules that transformers keeps in float32 (`_keep_in_fp32_modules`)."""
    out = []
    for prefix, sub in module.named_modules():
        keep = set(getattr(sub, "_keep_in_fp32_modules", None) or ()) | set(
            getattr(sub, "_keep_in_fp32_modules_strict", None) or ())
        if keep:
            for name, _ in sub.named_modules():
                if any(name == k or name.endswith("." + k) or f".{k}." in f".{name}." for k in keep):
                    out.append(f"{prefix}.{name}" if prefix else name)
    return out


def _linears(module: nn.Module, skip: Callable[[str], bool]) -> Iterator[tuple[nn.Module, str, nn.Linear, str]]:
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, nn.Linear) and not skip(full):
                yield parent, child_name, child, full


def _autocast_off(module: nn.Module, device_type: str) -> None:
    forward = module.forward

    def run_in_float32(*args, **kwargs):
        with torch.autocast(device_type, enabled=False):
            return forward(*args, **kwargs)

    module.forward = run_in_float32


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, and the families' own norms (LlamaRMSNorm, T5LayerNorm, DebertaLayerNorm...)."""
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))


def _norm_input_to_float32(module: nn.Module, args: tuple) -> tuple | None:
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float32:
        return (x.float(), *args[1:])
    return None


def to_mixed(transformer: nn.Module, dtype: torch.dtype, device_type: str) -> nn.Module:
    """Store the Linear weights (and biases) of a float32 transformer in `dtype`, in place; what
    transformers keeps in float32 stays so and runs with autocast off. Norms get float32 inputs:
    CPU autocast leaves layer_norm in the input's dtype, so a bf16 residual stream (e.g. after
    ELECTRA's embeddings_project) would otherwise be normalised in bf16; their float32 output
    keeps the residual stream float32."""
    for module in transformer.modules():
        if is_norm(module):
            module.float()
            module.register_forward_pre_hook(_norm_input_to_float32)
    keep = _keep_fp32_prefixes(transformer)
    kept = lambda name: any(name == k or name.startswith(k + ".") for k in keep)  # noqa: E731
    for _, _, linear, _ in _linears(transformer, kept):
        linear.to(dtype)
    for name, sub in transformer.named_modules():
        if name in keep:
            _autocast_off(sub, device_type)
    return transformer


class Int8Linear(nn.Module):
    """y = x W^T + b with W int8 per output channel and x int8 per row (scales computed per call)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_q", torch.round(w / scale[:, None]).to(torch.int8))  # (out, in)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        amax = torch.linalg.vector_norm(rows, float("inf"), dim=-1, keepdim=True).clamp_(min=1e-12)
        q = (rows * (127.0 / amax)).round_().to(torch.int8)
        y = torch._int_mm(q, self.weight_q.t()).float()
        y.mul_(amax / 127.0).mul_(self.weight_scale)
        if self.bias is not None:
            y.add_(self.bias)
        return y.reshape(*shape[:-1], self.out_features)


def int8_available() -> bool:
    try:
        a = torch.ones((17, 8), dtype=torch.int8)
        return bool(torch._int_mm(a, a.t().contiguous()).shape == (17, 17))
    except (AttributeError, RuntimeError):
        return False


def to_int8(transformer: nn.Module) -> nn.Module:
    """Replace the transformer's Linear layers by Int8Linear, in place (not the pooling layer, not
    what transformers keeps in float32)."""
    keep = _keep_fp32_prefixes(transformer)
    skip = lambda name: name.startswith("pooler") or any(name == k or name.startswith(k + ".") for k in keep)  # noqa: E731
    for parent, child_name, linear, _ in list(_linears(transformer, skip)):
        setattr(parent, child_name, Int8Linear(linear))
    return transformer


def compute_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """What the engine runs each batch in: autocast for the mixed dtypes, nothing otherwise."""
    if dtype in LOW_DTYPES:
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(num / np.maximum(den, 1e-30)))


def prepare(transformer: nn.Module, dtype: torch.dtype, device: torch.device,
            probe: Callable[[torch.dtype], np.ndarray] | None = None,
            min_cos: float | None = None) -> tuple[torch.dtype, float | None]:
    """Turn a float32 transformer into `dtype`'s scheme, in place. With `probe` (embeds
    PROBE_TEXTS under a given compute dtype) and `min_cos`, the scheme is kept only if its
    embeddings stay within `min_cos` of float32; otherwise the transformer is left in float32.
    Returns the dtype actually used and the measured min cosine (None when not measured)."""
    if dtype == torch.float32:
        return dtype, None
    reference = probe(torch.float32) if probe is not None and min_cos is not None else None
    state = {k: v.clone() for k, v in transformer.state_dict().items()} if reference is not None else None
    if dtype == INT8:
        to_int8(transformer)
    else:
        to_mixed(transformer, dtype, device.type)
    if reference is None:
        return dtype, None
    cos = min_cosine(probe(dtype), reference)
    if cos >= min_cos:
        return dtype, cos
    _restore_float32(transformer, state)
    return torch.float32, cos


def _restore_float32(transformer: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for parent_name, parent in list(transformer.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Int8Linear):
                full = f"{parent_name}.{child_name}" if parent_name else child_name
                linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                linear.weight.data = state[f"{full}.weight"]
                if child.bias is not None:
                    linear.bias.data = state[f"{full}.bias"]
                setattr(parent, child_name, linear)
    for _, _, linear, full in _linears(transformer, lambda name: False):
        linear.float()
    transformer.load_state_dict(state, strict=False)
