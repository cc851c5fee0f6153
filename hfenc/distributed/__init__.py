"""Embedding jobs on Ray (`hfenc embed INPUT --ray`; the optional extra `ray`).

`runner` is the driver: it plans the job, runs it and publishes the output, and imports Ray only
when a job starts, so `import hfenc.distributed` works without the extra. `tasks` is what runs
inside Ray (read tasks, the embedding actor, the shard writer); only the runner imports it.
Names load on first use: a Ray worker that unpickles a task imports `tasks` alone, not torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MANIFEST", "RayOptions", "embed_ray", "ray_modules"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".runner", __name__), name)
    raise AttributeError(f"module 'hfenc.distributed' has no attribute {name!r}")
