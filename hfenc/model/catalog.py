"""The built-in pooler registry as data, so `hfenc poolers` answers without importing torch.

The registry (hfenc.model.poolers, filled by decorators, first docstring lines) stays the source of
truth: `poolers.json` is written from it (`python -m hfenc.model.catalog`) and tests/test_poolers.py
fails when the two differ. Importing torch alone takes 1-3 s, most of `hfenc poolers`'s time.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

_FILE = "poolers.json"


def pooler_catalog() -> list[dict[str, Any]]:
    return json.loads(resources.files("hfenc.model").joinpath(_FILE).read_text(encoding="utf-8"))


def sparse_pooler(name: str) -> bool:
    """Whether a pooler name (or alias) is a sparse one; an unknown name is the registry's to refuse."""
    return any(p["output"] == "sparse" and name in (p["name"], *p["aliases"]) for p in pooler_catalog())


def live_catalog() -> list[dict[str, Any]]:
    from hfenc.model.poolers import pooler_infos

    return [{"name": p.name, "output": "sparse" if p.cls.sparse else "dense", "aliases": list(p.aliases),
             "description": p.description} for p in pooler_infos()]


if __name__ == "__main__":
    from pathlib import Path

    Path(__file__).with_name(_FILE).write_text(json.dumps(live_catalog(), indent=2) + "\n", encoding="utf-8")
