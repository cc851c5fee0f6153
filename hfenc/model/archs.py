"""Architecture table: what hfenc needs to know about each model family, as data.

Each entry is a frozen dataclass keyed by the Hugging Face `config.model_type`. Paths are dotted
attribute paths inside the module hfenc keeps (the bare encoder: e.g. `BertModel`; for T5-likes the
encoder stack of `T5EncoderModel`, as open_clip keeps it; decoders are never built or loaded).

A model type missing from the table is not an error: `discover_arch` reads the layout off the
module tree (the longest ModuleList of repeated blocks, the module owning the input embeddings,
a norm right after the blocks) and marks the result `discovered=True`. It fails, with a clear
message, only when nothing plausible is found (SPEC.md defect 6).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from hfenc.errors import ModelLoadError


@dataclass(frozen=True)
class Arch:
    model_type: str
    blocks: str  # path to the ModuleList of transformer blocks
    embeddings: str  # path to the token embeddings module (word/position/type + their norm)
    final_norm: str | None = None  # norm applied after the last block, if the family has one
    default_pooler: str = "mean"
    pooling_layer: bool = False  # the model class takes `add_pooling_layer` (BERT's dense+tanh)
    encoder_decoder: bool = False  # only the encoder is built and loaded
    model_class: str | None = None  # transformers class to build; None -> AutoModel
    stack: str | None = None  # attribute of the built model that hfenc keeps as `transformer`
    key_mapping: tuple[tuple[str, str], ...] = ()  # checkpoint key regex -> model key, when loading
    width_attr: str = "hidden_size"
    layers_attr: str = "num_hidden_layers"
    positions_attr: str | None = "max_position_embeddings"
    position_offset: int = 0  # RoBERTa-likes reserve padding_idx + 1 positions
    discovered: bool = False

    def width(self, config: Any) -> int:
        return int(getattr(config, self.width_attr))

    def num_layers(self, config: Any) -> int:
        return int(getattr(config, self.layers_attr))

    def context_length(self, config: Any) -> int | None:
        """Positions the model can embed; None when positions are relative (T5)."""
        if self.positions_attr is None or getattr(config, self.positions_attr, None) is None:
            return None
        return int(getattr(config, self.positions_attr)) - self.position_offset


ARCHS: dict[str, Arch] = {}


def register_arch(arch: Arch) -> Arch:
    if arch.model_type in ARCHS:
        raise ValueError(f"architecture {arch.model_type!r} is registered twice")
    ARCHS[arch.model_type] = arch
    return arch


_BERT = Arch("bert", "encoder.layer", "embeddings", default_pooler="cls", pooling_layer=True)
_ROBERTA = replace(_BERT, model_type="roberta", default_pooler="mean", position_offset=2)
# Issue 9: open_clip keeps T5's encoder stack (`transformer.block.N...`, `transformer.embed_tokens`),
# so hfenc keeps `T5EncoderModel(...).encoder` too and open_clip towers' state dicts load as they are.
_T5 = Arch(
    "t5", "block", "embed_tokens", "final_layer_norm", encoder_decoder=True,
    model_class="T5EncoderModel", stack="encoder", width_attr="d_model", layers_attr="num_layers",
    positions_attr=None,
)
_DECODER = Arch("llama", "layers", "embed_tokens", "norm", default_pooler="last_token")

for _arch in (
    _BERT,
    _ROBERTA,
    replace(_ROBERTA, model_type="xlm-roberta"),
    replace(_ROBERTA, model_type="camembert"),
    replace(_ROBERTA, model_type="mpnet"),
    Arch("distilbert", "transformer.layer", "embeddings", width_attr="dim", layers_attr="n_layers"),
    Arch("electra", "encoder.layer", "embeddings"),
    Arch("deberta-v2", "encoder.layer", "embeddings"),
    Arch("modernbert", "layers", "embeddings", "final_norm"),
    _T5,
    replace(_T5, model_type="mt5", model_class="MT5EncoderModel"),
    replace(_T5, model_type="umt5", model_class="UMT5EncoderModel"),
    Arch(
        "m2m_100", "layers", "embed_tokens", "layer_norm", default_pooler="cls",
        encoder_decoder=True, model_class="M2M100Encoder", width_attr="d_model",
        key_mapping=((r"^(model\.)?encoder\.", ""), (r"^(model\.)?shared\.", "embed_tokens.")),
        layers_attr="encoder_layers",  # its sinusoidal table adds the padding offset itself
    ),
    _DECODER,
    replace(_DECODER, model_type="mistral"),
    replace(_DECODER, model_type="qwen2"),
    replace(_DECODER, model_type="qwen3"),
):
    register_arch(_arch)


def arch_names() -> list[str]:
    return sorted(ARCHS)


def is_norm(module: Any) -> bool:
    """True for normalisation layers of any family, recognised by module *type*, not by attribute
    name: LayerNorm, T5LayerNorm, *RMSNorm alike (SPEC.md defect 4)."""
    from torch import nn  # here, not at import: `hfenc archs` lists the table without torch

    return isinstance(module, nn.LayerNorm | nn.GroupNorm) or "norm" in type(module).__name__.lower()


def discover_arch(model: Any, config: Any) -> Arch:
    """Read the layout of an unknown model type off its module tree (possibly on the meta device)."""
    from torch import nn

    model_type = str(getattr(config, "model_type", type(model).__name__))
    lists = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) > 0
        and len({type(block) for block in mod}) == 1 and name
    ]
    if not lists:
        raise ModelLoadError(
            f"cannot find the transformer blocks of model type {model_type!r}: "
            "no list of repeated blocks in its module tree",
            hint=f"supported architectures: {', '.join(arch_names())}",
        )
    blocks_path, blocks = max(lists, key=lambda item: (len(item[1]), -item[0].count(".")))

    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    names = {id(mod): name for name, mod in model.named_modules()}
    if embedding is None or id(embedding) not in names:
        raise ModelLoadError(f"cannot find the token embeddings of model type {model_type!r}")
    emb_path = names[id(embedding)]
    parent = emb_path.rpartition(".")[0]
    if parent and parent.split(".")[-1] in ("embeddings", "embedding"):
        emb_path = parent  # take the whole embeddings module (positions, norm) when there is one

    # A final norm is a norm sibling registered after the block list, not one that normalises an
    # embedding registered there (DeBERTa's relative embeddings, BART's layernorm_embedding).
    container_path = blocks_path.rpartition(".")[0]
    container = model.get_submodule(container_path) if container_path else model
    final_norm = None
    seen_blocks = False
    for child_name, child in container.named_children():
        full = f"{container_path}.{child_name}" if container_path else child_name
        if full == blocks_path:
            seen_blocks = True
        elif seen_blocks and ("embed" in child_name.lower() or isinstance(child, nn.Embedding)):
            if not is_norm(child):
                break  # a norm after this belongs to the embedding
        elif seen_blocks and is_norm(child) and any(True for _ in child.parameters()):
            final_norm = full
            break

    width_attr = next(
        (a for a in ("hidden_size", "d_model", "dim", "n_embd", "width") if hasattr(config, a)), None
    )
    layers_attr = next(
        (a for a in ("num_hidden_layers", "num_layers", "n_layers", "n_layer", "encoder_layers")
         if getattr(config, a, None) == len(blocks)),
        None,
    )
    if width_attr is None or layers_attr is None:
        raise ModelLoadError(f"cannot read the width or depth of model type {model_type!r} from its config")
    positions = next(
        (a for a in ("max_position_embeddings", "n_positions") if hasattr(config, a)), None
    )
    is_decoder = bool(getattr(config, "is_decoder", False)) or any(
        a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or [])
    )
    return Arch(
        model_type, blocks_path, emb_path, final_norm,
        default_pooler="last_token" if is_decoder else "mean",
        width_attr=width_attr, layers_attr=layers_attr, positions_attr=positions, discovered=True,
    )
