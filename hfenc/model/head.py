"""The sentence-transformers modules around the transformer, as torch modules, and the Pipeline.

Each class reproduces one sentence-transformers module exactly (same parameter names, so their
saved weights load strictly): Dense (any torch activation, optional residual), LayerNorm,
Normalize, WeightedLayerPooling. They run in float32 whatever the transformer's dtype: they are
tiny, and float32 keeps them exact. `build_*` takes the STLayout read by hfenc.model.st; with
`load=False` (lock plans on the meta device) no weights are read.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from hfenc.errors import ModelLoadError
from hfenc.model.resolve import weight_files
from hfenc.model.st import DenseSpec, LayerNormSpec, NormalizeSpec, STLayout, WeightedLayerPoolingSpec


def load_state(file: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or a .bin/.pt read with weights_only (never pickled code)."""
    if not file.is_file():
        raise ModelLoadError(f"weights file {file} does not exist")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read weights from {file}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(state, dict):
        raise ModelLoadError(f"{file} holds no state dict")
    return state


def _load_into(module: nn.Module, folder: Path) -> None:
    files = weight_files(folder)  # the same files the resume fingerprint hashes
    if not files:
        raise ModelLoadError(f"no weights (model.safetensors or pytorch_model.bin) in {folder}")
    try:
        module.load_state_dict(load_state(files[0]), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"the weights in {folder} do not fit its config: {str(exc).splitlines()[1:2] or exc}") from exc


def activation(name: str) -> nn.Module:
    """A torch.nn activation class by its dotted name (only torch's own; never code from a folder)."""
    module_name, _, cls_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError):
        cls = None
    if not (name.startswith("torch.") and isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelLoadError(f"unknown Dense activation {name!r}: not a torch.nn module class")
    return cls()


class Dense(nn.Module):
    """sentence-transformers' Dense: activation(linear(x)) (+ x, or + residual(x))."""

    def __init__(self, spec: DenseSpec):
        super().__init__()
        self.linear = nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
        self.activation_function = activation(spec.activation)
        self.use_residual = spec.residual
        if spec.residual and spec.in_features != spec.out_features:
            self.residual = nn.Linear(spec.in_features, spec.out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation_function(self.linear(x))
        if self.use_residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        return out


class LayerNorm(nn.Module):
    """sentence-transformers' LayerNorm over the sentence embedding."""

    def __init__(self, spec: LayerNormSpec):
        super().__init__()
        self.norm = nn.LayerNorm(spec.dimension)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class Normalize(nn.Module):
    """L2 normalisation in the middle of a head (a final one is the Pipeline's own step)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, p=2, dim=-1)


class WeightedLayerPooling(nn.Module):
    """Token states as a weighted mean of the hidden states from `layer_start` on."""

    def __init__(self, spec: WeightedLayerPoolingSpec):
        super().__init__()
        self.layer_start = spec.layer_start
        self.layer_weights = nn.Parameter(torch.ones(spec.num_hidden_layers + 1 - spec.layer_start))

    def forward(self, outputs) -> BaseModelOutput:
        layers = torch.stack([h.float() for h in outputs.hidden_states])[self.layer_start:]
        if layers.shape[0] != self.layer_weights.shape[0]:
            raise ModelLoadError(
                f"WeightedLayerPooling expects {self.layer_weights.shape[0]} layers from {self.layer_start} on, "
                f"the transformer gives {layers.shape[0]}"
            )
        weights = self.layer_weights.float().view(-1, 1, 1, 1)
        return BaseModelOutput(last_hidden_state=(weights * layers).sum(dim=0) / self.layer_weights.float().sum())


_HEAD_MODULES = {DenseSpec: Dense, LayerNormSpec: LayerNorm, NormalizeSpec: Normalize}


def build_head(layout: STLayout, load: bool = True) -> nn.Sequential:
    modules = []
    for spec in layout.head:
        module = _HEAD_MODULES[type(spec)](spec)
        if load and hasattr(spec, "path"):
            _load_into(module, spec.path)
        modules.append(module)
    return nn.Sequential(*modules)


def build_token_stage(layout: STLayout, load: bool = True) -> nn.Sequential | None:
    if not layout.token_stage:
        return None
    modules = []
    for spec in layout.token_stage:
        module = WeightedLayerPooling(spec)
        if load:
            _load_into(module, spec.path)
        modules.append(module)
    return nn.Sequential(*modules)


def head_out_dim(layout: STLayout, pooled_width: int) -> int:
    """The width after the head: the last Dense's output, else the pooled width."""
    dense = layout.dense
    return dense[-1].out_features if dense else pooled_width


class Pipeline(nn.Module):
    """HFTextEncoder (transformer -> token stage -> pooler -> projection) -> head -> truncate -> normalize."""

    def __init__(self, encoder: nn.Module, head: nn.Sequential, token_stage: nn.Module | None = None,
                 truncate_dim: int | None = None, normalize: bool = False, skip: int = 0):
        super().__init__()
        self.encoder, self.head, self.token_stage = encoder, head, token_stage
        self.truncate_dim, self.normalize = truncate_dim, normalize
        self.skip = skip  # prompt tokens left out of pooling (include_prompt: false)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.encoder.pool(input_ids, attention_mask, self.skip, self.token_stage)
        return self._after_pooling(pooled)

    def forward_spans(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
        """Late chunking: one vector per (row, start, end) span, the mean of that row's hidden
        states at positions [start, end) (the pooler must be `mean`: hfenc.jobs.chunked checks)."""
        mask = attention_mask.bool()
        extra = {"output_hidden_states": True} if self.token_stage is not None else {}
        out = self.encoder.transformer(input_ids=input_ids, attention_mask=mask.long(), **extra)
        if self.token_stage is not None:
            out = self.token_stage(out)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        # every span's mean at once, from running sums (float64: a difference of two sums loses
        # nothing a float32 mean keeps; MPS has no float64); sums[:, i]: a row's first i states
        wide = torch.float32 if hidden.device.type == "mps" else torch.float64
        sums = nn.functional.pad(hidden.to(wide).cumsum(dim=1), (0, 0, 1, 0))
        row, start, end = spans.to(hidden.device).unbind(dim=1)
        pooled = (sums[row, end] - sums[row, start]) / (end - start).clamp(min=1)[:, None]
        return self._after_pooling(pooled.float())

    def _after_pooling(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.head(self.encoder.project(pooled).float())
        if self.truncate_dim is not None:
            x = x[:, : self.truncate_dim]  # Matryoshka: truncate first, then normalize
        if self.normalize:
            x = nn.functional.normalize(x, dim=-1)
        return x
