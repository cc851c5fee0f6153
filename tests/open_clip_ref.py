"""open_clip 3.3.0's HF text tower, loaded as a reference (a helper module, not a test module).

`import open_clip` fails here: its __init__ imports torchvision, which must not be installed
(it breaks transformers' import with torch 2.13). So only `hf_configs.py` and `hf_model.py` are
loaded, from the installed package's folder, under a stub package `_oc` that runs no __init__.
A missing open_clip_torch is a failure, never a skip: the parity tests of issue 9 need it.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

VERSION = "3.3.0"
INSTALL = f"pip install --no-deps 'open_clip_torch=={VERSION}'"
_PACKAGE = "_oc"


class OpenClipMissing(RuntimeError):
    """open_clip_torch is not installed, or not the version the reference tests pin."""


def installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("open_clip_torch")
    except PackageNotFoundError:
        return None


def load() -> types.SimpleNamespace:
    """`hf_configs` and `hf_model` of the installed open_clip (cached in sys.modules)."""
    found = installed_version()
    spec = importlib.util.find_spec("open_clip")  # finds the folder without running __init__
    if found != VERSION or spec is None or not spec.submodule_search_locations:
        have = "is not installed" if found is None else f"is version {found}"
        raise OpenClipMissing(f"open_clip_torch {have}; the reference tests need open_clip_torch=={VERSION}, "
                              f"installed with --no-deps (no torchvision): {INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if _PACKAGE not in sys.modules:
        package = types.ModuleType(_PACKAGE)
        package.__path__ = [str(folder)]
        sys.modules[_PACKAGE] = package
    modules = []
    for name in ("hf_configs", "hf_model"):  # hf_model does `from .hf_configs import arch_dict`
        full = f"{_PACKAGE}.{name}"
        if full not in sys.modules:
            file_spec = importlib.util.spec_from_file_location(full, folder / f"{name}.py")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[full] = module
            file_spec.loader.exec_module(module)
        modules.append(sys.modules[full])
    hf_configs, hf_model = modules
    return types.SimpleNamespace(hf_configs=hf_configs, hf_model=hf_model, arch_dict=hf_configs.arch_dict,
                                 HFTextEncoder=hf_model.HFTextEncoder)
