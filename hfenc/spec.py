"""A model resolved once: where it is, its transformer's config and its sentence-transformers layout.

Made at the edge (the CLI or a library call) and passed down to the Embedder, the lock planner and
`hfenc info`, so they all see the same pipeline and agree on it (STYLE.md, "resolve a model once").
Reading a spec opens only JSON files: no weights, no tokenizer.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError
from .models import ResolvedModel, bundled_config, bundled_st_pooler, is_bundled, resolve_model
from .st import PoolingSpec, STLayout, read_st_layout


@dataclass(frozen=True)
class ModelSpec:
    name: str
    resolved: ResolvedModel | None  # None: only bundled config values (no files on this machine)
    layout: STLayout
    bundled: Any = None  # the bundled config values, when `resolved` is None

    @cached_property
    def config(self) -> Any:
        """The transformer's transformers.PretrainedConfig (read on first use: it imports torch)."""
        if self.resolved is None:
            return self.bundled
        from .encoder import load_config

        return load_config(self.layout.transformer_path)

    @property
    def transformer_path(self) -> Path | None:
        return self.layout.transformer_path if self.resolved is not None else None

    @property
    def default_pooler(self) -> str | None:
        return self.layout.pooler


def load_spec(name: str | ModelSpec, *, config_only: bool = False, bundled_ok: bool = False) -> ModelSpec:
    """Resolve `name` (local folder, cache, packaged default, hub) and read its layout and config.

    With `bundled_ok`, a name found nowhere on this machine falls back to the configs hfenc ships
    (values only) before anything is downloaded."""
    if isinstance(name, ModelSpec):
        return name
    local_only = bundled_ok and is_bundled(name) and not Path(name).expanduser().exists()
    try:
        resolved = resolve_model(name, config_only=config_only, allow_download=not local_only)
    except ModelNotFoundError:
        config = bundled_config(name) if bundled_ok and not Path(name).expanduser().exists() else None
        if config is None:
            if bundled_ok:
                from .errors import ModelNotFoundError as NotFound
                from .models import bundled_config_names

                raise NotFound(str(sys.exc_info()[1]), hint="offline, these bundled configs can be planned: "
                               + ", ".join(bundled_config_names())) from None
            raise
        pooler = bundled_st_pooler(name)
        layout = STLayout(Path(), pooler is not None, PoolingSpec((pooler,)) if pooler else None)
        return ModelSpec(name, None, layout, config)
    return ModelSpec(name, resolved, read_st_layout(resolved.path))
