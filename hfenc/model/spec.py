"""A model resolved once: where it is, its transformer's config and its sentence-transformers layout.

Made at the edge (the CLI or a library call) and passed down to the Embedder, the lock planner and
`hfenc info`, so they all see the same pipeline and agree on it (STYLE.md, "resolve a model once").
Reading a spec opens only JSON files: no weights, no tokenizer.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from hfenc.errors import ModelLoadError, ModelNotFoundError
from hfenc.model.resolve import ResolvedModel, bundled_config, bundled_st_pooler, is_bundled, resolve_model
from hfenc.model.st import PoolingSpec, STLayout
from hfenc.model.st_sparse import read_layout


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
                from hfenc.errors import ModelNotFoundError as NotFound
                from hfenc.model.resolve import bundled_config_names

                raise NotFound(str(sys.exc_info()[1]), hint="offline, these bundled configs can be planned: "
                               + ", ".join(bundled_config_names())) from None
            raise
        pooler = bundled_st_pooler(name)
        layout = STLayout(Path(), pooler is not None, PoolingSpec((pooler,)) if pooler else None)
        return ModelSpec(name, None, layout, config)
    return ModelSpec(name, resolved, read_layout(resolved.path))


def load_config(path: str | Path) -> Any:
    """The transformers config in a folder, read locally; a model needing its own code is refused."""
    import transformers

    transformers.logging.set_verbosity_error()  # loading reports stay out of hfenc's output
    _refuse_remote_code(Path(path) / "config.json")
    try:
        return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the model config in {path}: {str(exc).splitlines()[0]}") from exc


def _refuse_remote_code(file: Path) -> None:
    """A model type transformers does not know, with code of its own (`auto_map`), is refused:
    hfenc never runs code from a model folder, and transformers would otherwise fall back to a
    stock class named in `architectures` and fill the weights it cannot map at random (issue 9)."""
    import transformers

    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # AutoConfig reports it
    model_type = values.get("model_type") if isinstance(values, dict) else None
    if isinstance(values, dict) and values.get("auto_map") and model_type not in transformers.CONFIG_MAPPING:
        raise ModelLoadError(
            f"{file.parent}: model type {model_type!r} needs code shipped in the model folder "
            f"({', '.join(sorted(values['auto_map'].values()))[:120]}); hfenc never runs a model's own code",
            hint="use a model whose architecture transformers implements (see `hfenc archs`)",
        )
