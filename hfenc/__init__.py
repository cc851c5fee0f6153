"""hfenc: text -> tokenizer -> transformer -> pooler -> projection -> rows of a .npy file.

The library behind the `hfenc` command. Importing it pulls in torch and transformers but never
typer or rich.
"""

__version__ = "0.1.0"

from .archs import ARCHS, Arch, discover_arch  # noqa: E402
from .embedder import Embedder, encode  # noqa: E402
from .encoder import HFTextEncoder  # noqa: E402
from .errors import HfencError  # noqa: E402
from .models import DEFAULT_MODEL, resolve_model  # noqa: E402
from .poolers import get_pooler, pooler_names, register_pooler  # noqa: E402

__all__ = [
    "ARCHS", "Arch", "DEFAULT_MODEL", "Embedder", "HFTextEncoder", "HfencError", "__version__",
    "discover_arch", "encode", "get_pooler", "pooler_names", "register_pooler", "resolve_model",
]
