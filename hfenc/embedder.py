"""Embedder: a loaded model plus every option of an embedding job; `encode()` on top of it.

This is where a model name becomes a runnable pipeline: resolve the name, read a
sentence-transformers layout if there is one (its pooling, Dense layers, Normalize and
max_seq_length become the defaults), build HFTextEncoder, and hand it to the Engine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn

from . import __version__
from .encoder import HFTextEncoder, build_projection
from .engine import Engine, Progress, TextTokenizer, cpu_has_native_bf16, resolve_device, resolve_dtype
from .errors import ConfigError, ModelLoadError
from .models import DEFAULT_MODEL, DenseSpec, hash_files, read_st_layout, resolve_model, weight_files


def _activation(name: str) -> nn.Module:
    module_name, _, cls_name = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name or "torch.nn"), cls_name)()
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"unknown Dense activation {name!r} in the sentence-transformers config") from exc


def _load_state(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise ConfigError(f"weights file {file} does not exist")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"cannot read weights from {file}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(state, dict):
        raise ConfigError(f"{file} holds no state dict")
    return state


def _dense(spec: DenseSpec) -> nn.Module:
    linear = nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
    files = weight_files(spec.path)  # the same files the resume fingerprint hashes
    if not files:
        raise ModelLoadError(f"no weights for the Dense layer in {spec.path}")
    state = {k.removeprefix("linear."): v for k, v in _load_state(files[0]).items()}
    linear.load_state_dict(state)
    return nn.Sequential(linear, _activation(spec.activation))


class Pipeline(nn.Module):
    """HFTextEncoder -> sentence-transformers Dense layers -> Matryoshka truncation -> normalize."""

    def __init__(self, encoder: HFTextEncoder, dense: Sequence[nn.Module], truncate_dim: int | None, normalize: bool):
        super().__init__()
        self.encoder = encoder
        self.dense = nn.Sequential(*dense)
        self.truncate_dim, self.normalize = truncate_dim, normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.encoder(input_ids, attention_mask)
        if len(self.dense):
            x = self.dense(x.to(next(self.dense.parameters()).dtype))
        x = x.float()
        if self.truncate_dim is not None:
            x = x[:, : self.truncate_dim]  # Matryoshka: truncate first, then normalize
        if self.normalize:
            x = torch.nn.functional.normalize(x, dim=-1)
        return x


@dataclass(frozen=True)
class EmbedSettings:
    """Every option that changes the numbers; recorded in the sidecar, compared on --resume."""

    model: str
    pooler: str
    proj: str
    proj_weights: str | None
    proj_untrained: bool
    seed: int | None
    normalize: bool
    dim: int
    truncate_dim: int | None
    max_length: int
    prompt: str | None
    dtype: str
    device: str
    batch_tokens: int


@dataclass(frozen=True)
class EmbedOptions:
    """What to compute, apart from the model; `check()` needs no model, so bad options fail first."""

    pooler: str | None = None
    proj: str | None = None
    dim: int | None = None
    proj_weights: str | Path | None = None
    seed: int | None = None
    normalize: bool | None = None
    truncate_dim: int | None = None
    max_length: int | None = None
    prompt: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_tokens: int | None = None

    def check(self) -> None:
        from .encoder import PROJ_TYPES
        from .errors import UnknownChoiceError
        from .poolers import canonical_pooler

        if self.pooler is not None:
            canonical_pooler(self.pooler)
        kind = "none" if self.proj is None else self.proj
        if kind not in PROJ_TYPES:
            raise UnknownChoiceError("projection", self.proj, PROJ_TYPES)
        resolve_dtype(self.dtype, resolve_device(self.device))
        for name, value in (("--dim", self.dim), ("--truncate-dim", self.truncate_dim),
                            ("--max-length", self.max_length), ("--batch-tokens", self.batch_tokens)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be a positive number, got {value}")
        if kind != "none":
            if self.dim is None:
                raise ConfigError(f"--proj {kind} needs --dim (the output dimension)")
            if self.proj_weights is None and self.seed is None:
                raise ConfigError(
                    f"a {kind} projection needs trained weights",
                    hint="pass --proj-weights FILE, or --seed N to use a random (untrained) projection on purpose",
                )
        elif self.proj_weights is not None:
            raise ConfigError("--proj-weights needs a projection type: --proj linear or --proj mlp")
        if self.proj_weights is not None and not Path(self.proj_weights).is_file():
            raise ConfigError(f"projection weights file {self.proj_weights} does not exist")


class Embedder:
    """A model ready to embed, with its options fixed. Reuse it across calls."""

    def __init__(self, model: str = DEFAULT_MODEL, **options: Any) -> None:
        """`options` are EmbedOptions' fields (pooler, proj, dim, ..., batch_tokens)."""
        o = self.options = EmbedOptions(**options)
        o.check()
        self.device = resolve_device(o.device)
        compute_dtype = resolve_dtype(o.dtype, self.device)
        self.notes: list[str] = []  # things the user should hear about (the CLI prints them)
        if self.device.type == "cpu" and compute_dtype == torch.bfloat16 and not cpu_has_native_bf16():
            # Issue 5: bf16 where the CPU supports it; emulated bf16 is ~6x slower than float32.
            self.notes.append("this CPU has no native bfloat16 (AVX512-BF16/AMX); computing in float32")
            compute_dtype = torch.float32
        self.resolved = resolve_model(model)
        layout = read_st_layout(self.resolved.path)
        self.layout = layout
        path = layout.transformer_path
        proj_kind = None if o.proj in (None, "none") else o.proj
        if proj_kind is not None and layout.dense:
            raise ConfigError("this model has its own Dense layers; --proj cannot be added to it")
        self.encoder = HFTextEncoder(str(path), pooler_type=o.pooler or layout.pooler)
        width = self.encoder.width
        if proj_kind is not None:
            assert o.dim is not None  # EmbedOptions.check
            if o.seed is not None:
                torch.manual_seed(o.seed)
            self.encoder.proj = build_projection(width, o.dim, proj_kind)
            self.encoder.proj_type, self.encoder.output_dim = proj_kind, o.dim
            if o.proj_weights is not None:
                state = {k.removeprefix("proj."): v for k, v in _load_state(Path(o.proj_weights)).items()
                         if not k.startswith("transformer.")}
                try:
                    self.encoder.proj.load_state_dict(state)
                except RuntimeError as exc:
                    raise ConfigError(
                        f"{o.proj_weights} does not fit a {proj_kind} projection {width} -> {o.dim}: "
                        f"{str(exc).splitlines()[0]}"
                    ) from exc
        elif o.dim is not None and o.dim != width:
            raise ConfigError(
                f"--dim {o.dim} differs from the model width {width} and there is no projection",
                hint="add --proj linear|mlp with --proj-weights, or use --truncate-dim for Matryoshka models",
            )
        dense = [_dense(spec) for spec in layout.dense]
        out_dim = layout.dense[-1].out_features if layout.dense else self.encoder.output_dim
        if o.truncate_dim is not None and not 1 <= o.truncate_dim <= out_dim:
            raise ConfigError(f"--truncate-dim {o.truncate_dim} must be between 1 and the output width {out_dim}")
        self.dim = o.truncate_dim or out_dim
        self.normalize = layout.normalize if o.normalize is None else o.normalize
        self.normalize = bool(self.normalize)

        context = self.encoder.context_length
        tok_path = path if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file() else self.resolved.path
        try:
            hf_tok = transformers.AutoTokenizer.from_pretrained(str(tok_path), local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the tokenizer in {tok_path}: {str(exc).splitlines()[0]}") from exc
        limits = [x for x in (layout.max_seq_length, hf_tok.model_max_length, context) if x and x < 1_000_000]
        default_max = min(limits) if limits else 512
        if o.max_length is not None and context is not None and o.max_length > context:
            raise ConfigError(f"--max-length {o.max_length} exceeds the model's {context} positions")
        self.max_length = int(o.max_length or default_max)
        prompt_text = layout.prompts.get(o.prompt, o.prompt) if o.prompt is not None else None
        self.tokenizer = TextTokenizer(hf_tok, self.max_length, prompt_text or "", layout.do_lower_case)
        self.pipeline = Pipeline(self.encoder, dense, o.truncate_dim, self.normalize)
        self.engine = Engine(self.pipeline, self.tokenizer, self.device, compute_dtype, o.batch_tokens)
        self.settings = EmbedSettings(
            model=model, pooler=self.encoder.pooler_type, proj=proj_kind or "none",
            proj_weights=str(o.proj_weights) if o.proj_weights is not None else None,
            proj_untrained=proj_kind is not None and o.proj_weights is None, seed=o.seed,
            normalize=self.normalize, dim=self.dim, truncate_dim=o.truncate_dim,
            max_length=self.max_length, prompt=prompt_text, dtype=str(compute_dtype).removeprefix("torch."),
            device=str(self.device), batch_tokens=self.engine.batch_tokens,
        )
        self._weights_hash: str | None = None

    @property
    def weights_hash(self) -> str:
        if self._weights_hash is None:
            # Everything that holds weights: the transformer, sentence-transformers Dense layers
            # and a projection file, so --resume notices any of them changing.
            files = weight_files(self.layout.transformer_path)
            files += [f for spec in self.layout.dense for f in weight_files(spec.path)]
            if self.options.proj_weights is not None:
                files.append(Path(self.options.proj_weights))
            self._weights_hash = hash_files(files)
        return self._weights_hash

    def describe(self) -> dict[str, Any]:
        """How this embedder makes its numbers (the sidecar's model part)."""
        return {
            **asdict(self.settings),
            "model_path": str(self.resolved.path),
            "model_source": self.resolved.source,
            "model_type": self.encoder.config.model_type,
            "architecture_discovered": self.encoder.arch.discovered,
            "weights_sha256": self.weights_hash,
            "versions": {"hfenc": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
        }

    def encode(self, texts: Sequence[str], progress: Callable[[Progress], None] | None = None,
               chunk_size: int = 16384, out_dtype: Any = np.float32) -> np.ndarray:
        """Embed `texts`; returns an (n, dim) array in input order."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not a single string; wrap it in a list")
        out = np.empty((len(texts), self.dim), dtype=out_dtype)
        chunks = ((i, texts[i : i + chunk_size]) for i in range(0, len(texts), chunk_size))
        self.engine.run(chunks, lambda start, n: out[start : start + n], progress=progress, rows_total=len(texts))
        return out


_CACHE: dict[tuple, Embedder] = {}


def encode(
    texts: Sequence[str],
    model: str = DEFAULT_MODEL,
    *,
    progress: Callable[[Progress], None] | None = None,
    **options: Any,
) -> np.ndarray:
    """Embed texts with `model`; returns an (n, d) float32 array in input order.

    Options are Embedder's: pooler, proj, dim, proj_weights, seed, normalize, truncate_dim,
    max_length, prompt, device, dtype, batch_tokens. The last loaded model is kept for reuse."""
    key = (model, tuple(sorted(options.items())))
    embedder = _CACHE.get(key)
    if embedder is None:
        _CACHE.clear()  # hold one model at a time
        embedder = _CACHE[key] = Embedder(model, **options)
    return embedder.encode(texts, progress=progress)
