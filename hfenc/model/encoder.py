"""HFTextEncoder: a Hugging Face transformer + pooler + projection, as one nn.Module.

Keeps the public surface of open_clip's HF text tower (constructor, attributes, `forward`,
`lock`, `set_grad_checkpointing`, `init_parameters`, and the `transformer.*` / `proj.*`
state-dict layout, so trained towers load with `load_state_dict`) and fixes the defects listed
in SPEC.md section 2; each fix names its defect where it is made.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from hfenc.model.archs import ARCHS, Arch, discover_arch
from hfenc.errors import ConfigError, ModelLoadError, UnknownChoiceError
from hfenc.model.resolve import weight_files
from hfenc.model.poolers import canonical_pooler, get_pooler

PROJ_TYPES = ("none", "linear", "mlp")
transformers.logging.set_verbosity_error()  # keep loading reports out of hfenc's own output
transformers.utils.logging.disable_progress_bar()


def _encoder_only(model: nn.Module, config: Any, arch: Arch | None) -> nn.Module:
    """The module hfenc keeps: the table's `stack` of the built model (T5's encoder stack, issue 9);
    for an encoder-decoder family missing from the table its encoder, never the decoder."""
    if arch is not None and arch.stack is not None:
        return model.get_submodule(arch.stack)
    if arch is None and getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        return model.get_encoder()
    return model


def model_class(arch: Arch | None, masked_lm: bool = False) -> Any:
    if masked_lm:  # a sparse (SPLADE) pooler reads the masked-language model's logits
        return transformers.AutoModelForMaskedLM
    if arch is None or arch.model_class is None:
        return transformers.AutoModel
    module = transformers
    if not hasattr(module, arch.model_class):  # e.g. M2M100Encoder lives in its model module only
        module = getattr(transformers.models, arch.model_type.replace("-", "_"))
        module = getattr(module, f"modeling_{arch.model_type.replace('-', '_')}")
    return getattr(module, arch.model_class)


def _build_kwargs(arch: Arch | None, add_pooling_layer: bool, masked_lm: bool = False) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if arch is not None and arch.pooling_layer and not masked_lm:
        kwargs["add_pooling_layer"] = add_pooling_layer
    return kwargs


def build_transformer_from_config(
    config: Any, arch: Arch | None, add_pooling_layer: bool, dtype: torch.dtype | None = None,
    masked_lm: bool = False,
) -> nn.Module:
    """Random weights from a config (also used on the meta device by lock plans), in float32 unless
    `dtype` says otherwise. Issue 9: never in the config's own dtype; AutoModel.from_config builds
    a bf16/fp16 config (a half-precision checkpoint's) in that dtype, beside a float32 projection."""
    cls = model_class(arch, masked_lm)
    kwargs = _build_kwargs(arch, add_pooling_layer, masked_lm)
    dtype = dtype or torch.float32
    try:
        if cls in (transformers.AutoModel, transformers.AutoModelForMaskedLM):
            model = cls.from_config(config, dtype=dtype, **kwargs)
        else:  # a concrete class ignores config.dtype and builds in torch's default dtype
            model = cls(config, **kwargs).to(dtype)
        return model if masked_lm else _encoder_only(model, config, arch)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ModelLoadError(
            f"transformers cannot build model type {config.model_type!r}: {str(exc).splitlines()[0]}"
        ) from exc


def load_transformer(
    path: Path, config: Any, arch: Arch | None, add_pooling_layer: bool, dtype: torch.dtype | None = None,
    masked_lm: bool = False,
) -> tuple[nn.Module, list[str]]:
    """Load pretrained weights; returns the module and the names of weights the checkpoint lacked."""
    cls = model_class(arch, masked_lm)
    if not weight_files(path):
        raise ModelLoadError(f"no weights (model.safetensors or pytorch_model.bin) in {path}")
    kwargs = _build_kwargs(arch, add_pooling_layer, masked_lm)
    if arch is not None and arch.key_mapping and not masked_lm:
        # Encoder class over a full seq2seq checkpoint: only the encoder's tensors are mapped and
        # read; the decoder's are skipped (SPEC.md defect 8).
        kwargs["key_mapping"] = dict(arch.key_mapping)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, info = cls.from_pretrained(
                str(path), config=config, local_files_only=True, output_loading_info=True, weights_only=True,
                attn_implementation="sdpa", dtype=dtype or torch.float32, **kwargs,
            )
    except (ValueError, ImportError) as exc:
        if "sdpa" not in str(exc).lower() and "attn_implementation" not in str(exc):
            raise ModelLoadError(f"cannot load the weights in {path}: {str(exc).splitlines()[0]}") from exc
        model, info = cls.from_pretrained(  # a family without SDPA support: eager attention
            str(path), config=config, local_files_only=True, output_loading_info=True, weights_only=True,
            dtype=dtype or torch.float32, **kwargs,
        )
    except Exception as exc:  # truncated or corrupt weight files
        raise ModelLoadError(f"cannot load the weights in {path}: {str(exc).splitlines()[0]}") from exc
    missing = list(info.get("missing_keys", []))
    return (model if masked_lm else _encoder_only(model, config, arch)), missing


def build_projection(width: int, output_dim: int, proj_type: str | None) -> nn.Module:
    kind = "none" if proj_type is None else proj_type
    if kind not in PROJ_TYPES:
        raise UnknownChoiceError("projection", proj_type, PROJ_TYPES)
    if kind == "none":
        if width != output_dim:  # SPEC.md defect 7: the seed silently left no `proj` at all
            raise ConfigError(
                f"output_dim {output_dim} differs from the model width {width} and no projection "
                f"was asked for; choose a projection: linear or mlp",
            )
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(width, output_dim, bias=False)
    hidden = (width + output_dim) // 2
    return nn.Sequential(
        nn.Linear(width, hidden, bias=False), nn.GELU(), nn.Linear(hidden, output_dim, bias=False)
    )


class HFTextEncoder(nn.Module):
    """Hugging Face text encoder: transformer -> pooler -> projection."""

    output_tokens: bool

    def __init__(
        self,
        model_name_or_path: Any,
        output_dim: int | None = None,
        config: Any = None,
        pooler_type: str | None = None,
        proj_type: str | None = None,
        pretrained: bool = True,
        output_tokens: bool = False,
        *,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.output_tokens = output_tokens
        path: Path | None = None
        if config is None:  # a name, a folder or a ModelSpec: its transformer, wherever it lives
            from hfenc.model.spec import load_spec

            spec = load_spec(model_name_or_path)
            path, config = spec.transformer_path, spec.config
            model_name_or_path = spec.name
            # Issue 11: a sentence-transformers folder pools its own way (all-MiniLM-L6-v2: mean,
            # not BERT's pooling layer), as `embed` does; its modules after pooling (Dense,
            # Normalize) are the Embedder's, not this tower's.
            pooler_type = pooler_type or spec.layout.pooler
        self.model_name_or_path = str(model_name_or_path)
        self.config = config
        arch = ARCHS.get(config.model_type)
        self.pooler_type = canonical_pooler(pooler_type or (arch.default_pooler if arch else "mean"))
        self.pooler = get_pooler(self.pooler_type)
        add_pooling_layer = self.pooler.uses_pooler_output
        self.missing_keys: list[str] = []
        self.sparse = self.pooler.sparse  # the transformer is then the masked-language model, head and all
        if pretrained and path is not None:
            self.transformer, self.missing_keys = load_transformer(path, config, arch, add_pooling_layer, dtype,
                                                                   self.sparse)
        else:
            self.transformer = build_transformer_from_config(config, arch, add_pooling_layer, masked_lm=self.sparse)
        if arch is None:
            arch = discover_arch(self.transformer, config)
            if pooler_type is None:
                self.pooler_type = canonical_pooler(arch.default_pooler)
                self.pooler = get_pooler(self.pooler_type)
        self.arch = arch
        untrained = [k for k in self.missing_keys if not k.startswith("pooler.")]
        if untrained:  # fail closed: a weight left at random gives confident, wrong numbers
            raise ModelLoadError(
                f"{path}: the checkpoint lacks {len(untrained)} weight(s) this {config.model_type} model "
                f"needs (first: {untrained[0]}); it is not a {config.model_type} checkpoint hfenc can load exactly"
            )
        if pretrained and any(k.startswith("pooler.") for k in self.missing_keys):
            # SPEC.md defect 9: an untrained pooling layer makes every run's embeddings differ.
            warnings.warn(
                f"{model_name_or_path}: the checkpoint has no trained pooling layer, so the 'cls' "
                "pooler uses a randomly initialised one; use 'cls_last_hidden_state' or 'mean'",
                stacklevel=2,
            )
        self.width = arch.width(config)
        # several poolers are concatenated; a sparse one is as wide as the vocabulary (the logits)
        self.pooled_width = int(config.vocab_size) if self.sparse else self.width * self.pooler.modes
        self.vocab_size = int(getattr(config, "vocab_size", 0))
        self.context_length = arch.context_length(config)
        self.output_dim = self.pooled_width if output_dim is None else int(output_dim)
        self.proj_type = proj_type
        self.proj = build_projection(self.pooled_width, self.output_dim, proj_type)

    @property
    def uses_pooling_layer(self) -> bool:
        return getattr(self.transformer, "pooler", None) is not None and self.pooler.uses_pooler_output

    def attention_mask_for(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The seed's fallback when no mask is given: real tokens are those that are not padding."""
        pad = getattr(self.config, "pad_token_id", None)
        if pad is None:  # SPEC.md defect 2: the seed compared against None and masked nothing
            raise ConfigError(
                f"{self.model_name_or_path} has no pad token id, so the attention mask cannot be "
                "derived from input_ids; pass the tokenizer's attention_mask"
            )
        shared = [name for name in ("eos_token_id", "bos_token_id", "sep_token_id", "cls_token_id")
                  if getattr(self.config, name, None) == pad]
        if shared:  # pad == eos: a real final eos would be masked out as padding
            raise ConfigError(
                f"{self.model_name_or_path} pads with the same id as its {shared[0].removesuffix('_token_id')} "
                "token, so the attention mask cannot be derived from input_ids; pass the tokenizer's attention_mask"
            )
        return input_ids != pad

    def pool(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, skip: int = 0,
        token_stage: nn.Module | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Transformer, then `token_stage` (modules over all hidden states, e.g. sentence-
        transformers' WeightedLayerPooling), then the pooler; the first `skip` real tokens of each
        row (a prompt) are left out of the pooling."""
        mask = attention_mask.bool()
        extra = {"output_hidden_states": True} if token_stage is not None else {}
        out = self.transformer(input_ids=input_ids, attention_mask=mask.long(), **extra)
        if token_stage is not None:
            out = token_stage(out)
        return self.pooler(out, mask, skip), out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if attention_mask is None:
            attention_mask = self.attention_mask_for(input_ids)
        pooled, out = self.pool(input_ids, attention_mask)
        projected = self.project(pooled)
        if not self.output_tokens:
            return projected
        tokens = out.last_hidden_state
        if self.pooler_type == "cls":
            tokens = tokens[:, 1:]  # as open_clip: only its ClsPooler drops the position it used
        return projected, tokens

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        weight = next(self.proj.parameters(), None)
        return self.proj(pooled.to(weight.dtype) if weight is not None else pooled)

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True):
        """Freeze for fine-tuning, leaving the last `unlocked_layers` blocks trainable.

        Computes a LockPlan (hfenc style, see hfenc.model.freeze) and applies it; returns the plan.
        Unlike the seed, it sets requires_grad on every parameter, so a later call can unfreeze, and
        it never prints (SPEC.md defects 4 and 5)."""
        from hfenc.model.freeze import apply_lock, plan_module  # freeze imports this module's wing only

        plan = plan_module(self, unlocked_layers, freeze_layer_norm=freeze_layer_norm)
        apply_lock(self, plan)
        return plan

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # SPEC.md defect 7: the seed turned it on whatever `enable` said. transformers 5 renamed
        # gradient_checkpointing_* to activation_checkpointing_*; use whichever this version has.
        prefix = "activation" if hasattr(self.transformer, "activation_checkpointing_enable") else "gradient"
        try:
            getattr(self.transformer, f"{prefix}_checkpointing_{'enable' if enable else 'disable'}")()
            if not enable and hasattr(self.transformer, "disable_input_require_grads"):
                # enabling hooked the embeddings' output to require grad; without this, frozen
                # blocks would keep activations for backward after checkpointing is switched off
                try:
                    self.transformer.disable_input_require_grads()
                except AttributeError:  # no hook was registered
                    pass
        except ValueError as exc:  # a family that does not support it (e.g. MPNet)
            raise ConfigError(f"{self.config.model_type} does not support gradient checkpointing") from exc

    def init_parameters(self) -> None:
        """Nothing to initialise: the transformer is pretrained and the projection uses torch's
        default init (kept for API compatibility with open_clip's towers)."""

