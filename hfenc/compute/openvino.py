"""`--backend openvino`: the transformer run by OpenVINO's CPU plugin (issue 14).

Only the transformer moves: it is converted in memory (`openvino.convert_model`, nothing written
to disk) and stands in for `encoder.transformer` with the same call and outputs, so tokenization,
batching, pooling, the sentence-transformers head, truncation and normalisation are the torch
backend's own code. The only module importing openvino and nncf (the extra `openvino`).

Precisions, measured on all-MiniLM-L6-v2, 2,000 real texts, a 2-core AMD EPYC with AVX512-BF16
and AVX512-VNNI (benchmarks/README.md: bench_embed.py, bench_openvino_int8.py):
- float32: the plugin's fused kernels, min cosine 1.000000 to torch;
- bfloat16: the plugin's bf16 inference precision (matmuls in bf16; OpenVINO keeps its own
  choice of ops in f32), 2.5-2.7x sentence-transformers float32 at min cosine 0.99995;
- int8: weights int8 per output channel with a zero point (`nncf.compress_weights`, INT8_ASYM:
  no calibration data), activations quantized on the fly per token in groups of channels (the
  plugin's dynamic quantization; the largest of INT8_GROUPS that keeps the guard), ~2.1x
  OpenVINO float32 and ~2.5x torch float32 at min cosine 0.9955 (groups of 128). Static int8
  (calibrated per-tensor activation scales, with or without SmoothQuant) measured min cosine
  0.95-0.99 on the same texts and 0.89-0.97 on the probe.

Fail closed, measured at load: the converted model must reproduce torch float32 on
PROBE_TEXTS (min cosine >= CONVERSION_MIN_COSINE) or it is refused; int8 must keep
INT8_MIN_COSINE to float32 there with some group size or it is refused with the figure.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import logging
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hfenc.errors import ConfigError, ModelLoadError

BACKENDS = ("torch", "openvino")
CONVERSION_MIN_COSINE = 0.99999  # OpenVINO float32 vs torch float32 on the probe texts
# Channels per dynamic activation scale, tried largest (fastest) first until the int8 guard holds.
# MiniLM, 2,000 texts: 128 -> 2.16x OpenVINO float32, min cosine 0.9955 (probe 0.9910); 64 -> 1.88x,
# 0.9970 (0.9944); 32 -> 1.78x, 0.9978 (0.9958) (benchmarks/bench_openvino_int8.py).
INT8_GROUPS = (128, 64, 32)
# Token budget per batch, swept on MiniLM (2,000 texts, 2-core EPYC, 512-4,096 tokens; the spread
# is 5-10%): float32 peaked at 1,024, bf16 and int8 at 2,048 (benchmarks/README.md).
BATCH_TOKENS = {torch.float32: 1024, torch.bfloat16: 2048, torch.float16: 2048, torch.int8: 2048}
_PRECISIONS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16", torch.int8: "f32"}
_CAPABILITY = {torch.bfloat16: "BF16", torch.float16: "FP16"}


def _extra(module: str, need: str) -> Any:
    """`module`, or one ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{need}, which is not installed", hint="pip install 'hfenc[openvino]'") from None


def openvino() -> Any:
    return _extra("openvino", "backend=openvino needs OpenVINO")


def nncf_module() -> Any:
    return _extra("nncf", "dtype=int8 needs NNCF (OpenVINO's weight compression)")


@lru_cache(maxsize=1)
def _core() -> Any:
    return openvino().Core()


def native(dtype: torch.dtype) -> bool:
    """Whether the CPU plugin computes `dtype` natively here (bf16: AVX512-BF16/AMX)."""
    need = _CAPABILITY.get(dtype)
    return need is None or need in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class _Traced(nn.Module):
    """What is converted: the transformer called as HFTextEncoder.pool calls it, tensors out."""

    def __init__(self, transformer: nn.Module, pooler_output: bool) -> None:
        super().__init__()
        self.transformer, self.pooler_output = transformer, pooler_output
        # A decoder's key/value cache is a list the tracer cannot convert; embedding never uses it.
        self.extra = {"use_cache": False} if "use_cache" in inspect.signature(transformer.forward).parameters else {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **self.extra)
        if self.pooler_output:
            return out.last_hidden_state, out.pooler_output
        return out.last_hidden_state


def convert(transformer: nn.Module, ids: np.ndarray, mask: np.ndarray, pooler_output: bool) -> Any:
    """The transformer as an OpenVINO model with dynamic batch and length (traced on one padded
    example batch). A model OpenVINO cannot trace is refused by name."""
    ov = openvino()
    example = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask.astype(np.int64))}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about data-dependent Python branches
            return ov.convert_model(_Traced(transformer.eval(), pooler_output), example_input=example)
    except Exception as exc:  # the frontend raises its own types (OpConversionFailure, RuntimeError...)
        kind = getattr(getattr(transformer, "config", None), "model_type", type(transformer).__name__)
        raise _refused(f"OpenVINO cannot convert this {kind} model", exc) from exc


def compress(model: Any) -> Any:
    """A copy of `model` with int8 weights per output channel and a zero point (no calibration)."""
    nncf = nncf_module()
    # The core never prints: NNCF logs a table and draws a progress bar on stdout.
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return nncf.compress_weights(model.clone(), mode=nncf.CompressWeightsMode.INT8_ASYM)
    except Exception as exc:  # NNCF's own error types
        raise _refused("NNCF cannot compress this model's weights to int8", exc) from exc


def compile_model(model: Any, dtype: torch.dtype, threads: int, group: int | None = None) -> Any:
    """Compile for the CPU: `dtype`'s inference precision; LATENCY, since one request runs at a
    time. int8: `model` is `compress`'s, the rest computes in f32 and activations are quantized
    on the fly in groups of `group` channels."""
    config = {"INFERENCE_PRECISION_HINT": _PRECISIONS[dtype], "INFERENCE_NUM_THREADS": str(threads),
              "PERFORMANCE_HINT": "LATENCY"}
    if dtype == torch.int8:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(group)
    try:
        return _core().compile_model(model, "CPU", config)
    except RuntimeError as exc:  # the plugin refuses a model or a setting
        raise _refused(f"OpenVINO's CPU plugin cannot compile this model for {_PRECISIONS[dtype]}", exc) from exc


def _refused(what: str, exc: Exception) -> ModelLoadError:
    """One line: what failed and the line of OpenVINO's report that names why."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    # OpenVINO's report ends with the ops it failed on; its first line only names its source file.
    line = next((x.strip("- ") for x in lines if x.startswith("-- Conversion is failed for")), lines[0])[:200]
    return ModelLoadError(f"{what}: {line}", hint="use backend=torch")


class OpenVINOTransformer(nn.Module):
    """Stands in for `encoder.transformer`: called with input_ids and attention_mask, returns
    last_hidden_state (and pooler_output) as float32 torch tensors."""

    def __init__(self, compiled: Any, config: Any, pooler_output: bool) -> None:
        super().__init__()
        self.compiled, self.config, self.pooler_output = compiled, config, pooler_output
        self.request = compiled.create_infer_request()  # one request, reused: one batch at a time

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                output_hidden_states: bool = False, **_: Any) -> BaseModelOutputWithPooling:
        if output_hidden_states:  # Embedder refuses such models first; a direct caller gets this
            raise ConfigError("the OpenVINO backend returns the last hidden state only",
                              hint="use backend=torch for every layer's hidden states")
        result = self.request.infer({"input_ids": input_ids.cpu().numpy().astype(np.int64, copy=False),
                                     "attention_mask": attention_mask.cpu().numpy().astype(np.int64, copy=False)})
        hidden = torch.from_numpy(np.array(result[0], dtype=np.float32))  # a copy: the request reuses its buffer
        pooled = torch.from_numpy(np.array(result[1], dtype=np.float32)) if self.pooler_output else None
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)


def version() -> str:
    return openvino().__version__.split("-")[0]
