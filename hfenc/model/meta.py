"""The pipeline `embed` would run, built on the meta device: shapes only, no weights read.

`hfenc info` counts its parameters and `hfenc lock-plan` plans over it, so the two agree with
what `embed` loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hfenc.model.encoder import HFTextEncoder
from hfenc.model.head import build_head, build_token_stage
from hfenc.model.spec import ModelSpec, load_spec


def meta_model(target: Any, pooler: str | None = None, proj: str | None = None,
               dim: int | None = None) -> tuple[Any, nn.Module | None, str]:
    """(HFTextEncoder, head or None, name) on the meta device, as `embed` would build them for a
    model name, a ModelSpec or a config: shapes only, no weights read, no memory spent."""
    config, name, layout = _config_for(target)
    with torch.device("meta"):
        encoder = HFTextEncoder(
            name, output_dim=dim, config=config, pooler_type=pooler or (layout.pooler if layout else None),
            proj_type=None if proj in (None, "none") else proj, pretrained=False,
        )
        head = _layout_head(layout) if layout is not None else None
    return encoder, head, name


def _layout_head(layout: Any) -> nn.Module | None:
    """The model folder's own modules (token stage, then head), as `embed` builds them."""
    stage, head = build_token_stage(layout, load=False), build_head(layout, load=False)
    modules = [*(stage or ()), *head]
    return nn.Sequential(*modules) if modules else None


def _config_for(target: Any) -> tuple[Any, str, Any]:
    """(config, name, layout or None) for a model name, a ModelSpec or a bare config."""
    if isinstance(target, (str, Path, ModelSpec)):
        spec = load_spec(str(target) if isinstance(target, Path) else target, config_only=True, bundled_ok=True)
        return spec.config, spec.name, spec.layout
    if hasattr(target, "model_type"):
        return target, str(getattr(target, "_name_or_path", "") or target.model_type), None
    raise TypeError(f"plan_lock takes an HFTextEncoder, a config or a model name, not {type(target).__name__}")
