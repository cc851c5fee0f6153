"""hfenc: text -> tokenizer -> transformer -> pooler -> projection -> rows of a .npy file.

The library behind the `hfenc` command; it never imports typer or rich. Names are loaded on
first use, so `import hfenc` (and a CLI error that needs no model) stays fast: torch and
transformers are imported only when something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ARCHS": "archs", "Arch": "archs", "discover_arch": "archs", "register_arch": "archs",
    "Embedder": "embedder", "encode": "embedder",
    "HFTextEncoder": "encoder",
    "HfencError": "errors",
    "JobOptions": "jobs", "embed_file": "jobs",
    "InputSpec": "inputs",
    "LockPlan": "lock", "apply_lock": "lock", "plan_lock": "lock",
    "MemoryEstimate": "memory", "estimate_memory": "memory",
    "DEFAULT_MODEL": "models", "resolve_model": "models",
    "get_pooler": "poolers", "pooler_names": "poolers", "register_pooler": "poolers",
    "SearchResult": "searching", "search": "searching",
}
__all__ = sorted([*_EXPORTS, "__version__"])


def __dir__() -> list[str]:
    return list(__all__)  # the API, not this module's imports


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hfenc' has no attribute {name!r}")


if TYPE_CHECKING:  # for type checkers and IDEs
    from .archs import ARCHS, Arch, discover_arch, register_arch
    from .embedder import Embedder, encode
    from .encoder import HFTextEncoder
    from .errors import HfencError
    from .inputs import InputSpec
    from .jobs import JobOptions, embed_file
    from .lock import LockPlan, apply_lock, plan_lock
    from .memory import MemoryEstimate, estimate_memory
    from .models import DEFAULT_MODEL, resolve_model
    from .poolers import get_pooler, pooler_names, register_pooler
    from .searching import SearchResult, search
