"""hfenc: text -> tokenizer -> transformer -> pooler -> projection -> rows of a .npy file.

The library behind the `hfenc` command; it never imports typer or rich. Names are loaded on
first use, so `import hfenc` (and a CLI error that needs no model) stays fast: torch and
transformers are imported only when something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hfenc.compute.threads import set_wait_policy

__version__ = "0.2.0"
set_wait_policy()  # before torch loads: OpenMP threads that spin only briefly when idle (issue 22)

_EXPORTS = {
    "ARCHS": "model.archs", "Arch": "model.archs", "discover_arch": "model.archs", "register_arch": "model.archs",
    "Embedder": "compute.embedder", "encode": "compute.embedder",
    "HFTextEncoder": "model.encoder", "SparseRows": "model.sparse",
    "HfencError": "errors",
    "JobOptions": "jobs.local", "embed_file": "jobs.local", "ChunkOptions": "compute.chunking",
    "InputSpec": "io.inputs",
    "LockPlan": "plans.lock", "apply_lock": "plans.lock", "plan_lock": "plans.lock",
    "MemoryEstimate": "plans.memory", "estimate_memory": "plans.memory",
    "DEFAULT_MODEL": "model.resolve", "resolve_model": "model.resolve",
    "get_pooler": "model.poolers", "pooler_names": "model.poolers", "register_pooler": "model.poolers",
    "SearchResult": "searching", "search": "searching",
    "verify": "verification", "diff": "compare",
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
    from hfenc.model.archs import ARCHS, Arch, discover_arch, register_arch
    from hfenc.compute.embedder import Embedder, encode
    from hfenc.model.encoder import HFTextEncoder
    from hfenc.model.sparse import SparseRows
    from hfenc.errors import HfencError
    from hfenc.io.inputs import InputSpec
    from hfenc.jobs.local import JobOptions, embed_file
    from hfenc.plans.lock import LockPlan, apply_lock, plan_lock
    from hfenc.plans.memory import MemoryEstimate, estimate_memory
    from hfenc.model.resolve import DEFAULT_MODEL, resolve_model
    from hfenc.model.poolers import get_pooler, pooler_names, register_pooler
    from hfenc.searching import SearchResult, search
    from hfenc.compare import diff
    from hfenc.verification import verify
