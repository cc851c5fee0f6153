"""Sparse (SPLADE) pipelines (issue 25): what the engine runs for a sparse model's side.

- SpladePipeline: the masked-language model -> a splade_* pooler over its logits -> top-k.
- StaticPipeline: sentence-transformers' SparseStaticEmbedding (the inference-free query side):
  each token present in the text gets its learned weight; no transformer runs.

Both return SparseRows, so a batch's (batch, vocabulary) vector leaves the device as its active
entries only. `max_active_dims` keeps each row's k largest values by magnitude, after the whole
pipeline, as SparseEncoder.encode does (hfenc.model.poolers.prune).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hfenc.errors import ConfigError, ModelLoadError, UnknownChoiceError
from hfenc.model.head import load_state
from hfenc.model.poolers import get_pooler_class, prune
from hfenc.model.resolve import weight_files
from hfenc.model.sparse import SparseRows
from hfenc.model.st import SparseRoute


class SpladePipeline(nn.Module):
    """HFTextEncoder with a splade_* pooler (its transformer the masked-language model; the pooler
    prunes to `max_active_dims`), its rows handed back as SparseRows."""

    sparse_rows = True

    def __init__(self, encoder: nn.Module, max_active_dims: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        encoder.pooler.max_active_dims = max_active_dims

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SparseRows:
        pooled, _ = self.encoder.pool(input_ids, attention_mask)
        return SparseRows.from_dense(pooled)


class StaticPipeline(nn.Module):
    """SparseStaticEmbedding: out[v] = weight[v] for every vocabulary token v in the text (once,
    whatever its count), 0 elsewhere; the text is tokenized without special tokens."""

    sparse_rows = True

    def __init__(self, weight: torch.Tensor, max_active_dims: int | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.float(), requires_grad=False)
        self.max_active_dims = max_active_dims

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SparseRows:
        present = torch.zeros(input_ids.shape[0], self.weight.shape[0], device=input_ids.device)
        present[torch.nonzero(attention_mask, as_tuple=True)[0], input_ids[attention_mask.bool()]] = 1.0
        return SparseRows.from_dense(prune(present * self.weight, self.max_active_dims))


def load_static(folder: Path, vocab: int) -> torch.Tensor:
    """The SparseStaticEmbedding's weight vector, checked against its tokenizer's vocabulary."""
    files = weight_files(folder)
    if not files:
        raise ModelLoadError(f"no weights (model.safetensors or pytorch_model.bin) in {folder}")
    state = load_state(files[0])
    if set(state) != {"weight"}:
        raise ModelLoadError(f"{files[0]}: a SparseStaticEmbedding holds one tensor, 'weight'; found "
                             f"{', '.join(sorted(state))}")
    weight = state["weight"]
    if weight.dim() != 1 or weight.shape[0] != vocab:
        raise ModelLoadError(f"{files[0]}: weight of shape {tuple(weight.shape)} does not fit its tokenizer's "
                             f"{vocab} tokens")
    return weight


def batch_tokens(device: torch.device) -> int:
    """A sparse model's default token budget: its batch's logits are tokens x vocabulary floats
    (3,072 tokens x 30,522 = 375 MB), so batches are smaller than a dense model's. Measured on
    BERT-base SPLADE, 300 real texts, 2-core AMD EPYC: float32 512 tokens 16.5 texts/s against
    12.9 at 3,072 and 10.2 at 8,192; bf16 512 33.4 against 30.7 at 1,024. On a GPU (not measured)
    16,384 tokens keep the logits near 1 GB in bf16."""
    return 512 if device.type == "cpu" else 16384


# ---- which side of which model (the Embedder's choices, checked before any weight is read) ------

def sparse_model(layout: Any, pooler: str | None) -> bool:
    """Whether the Embedder makes sparse rows: a SparseEncoder folder, or a splade_* pooler asked
    for (on a plain masked-language model folder)."""
    if layout.sparse is not None:
        if pooler is not None and not get_pooler_class(pooler).sparse:
            raise ConfigError(f"pooler {pooler!r} makes dense vectors; this is a sparse (SPLADE) model",
                              hint="use splade_max or splade_sum, or leave the pooler to the model")
        return True
    if pooler is None or not get_pooler_class(pooler).sparse:
        return False
    if layout.is_sentence_transformers:
        raise ConfigError(f"pooler {pooler!r} reads a masked-language model's logits; this is a dense "
                          "sentence-transformers model", hint="use a SparseEncoder or a plain fill-mask model folder")
    return True


def refuse_dense_options(options: Any) -> None:
    """Options that shape dense vectors have no meaning for a sparse model's rows."""
    dense = [(options.proj not in (None, "none"), f"proj={options.proj}"), (options.dim is not None, "dim"),
             (options.proj_weights is not None, "proj_weights"), (options.truncate_dim is not None, "truncate_dim"),
             (bool(options.normalize), "normalize"), (options.backend != "torch", f"backend={options.backend}"),
             (options.int8_group_size is not None, "int8_group_size")]
    for given, name in dense:
        if given:
            raise ConfigError(f"{name} is for dense embeddings; this is a sparse (SPLADE) model",
                              hint="max_active_dims=K keeps each row's K largest values")


def sparse_route(layout: Any, options: Any, name: str) -> tuple[SparseRoute, str]:
    """(route, pooler name) of the side asked for; an asymmetric model needs a side."""
    sparse = layout.sparse
    if sparse is None:  # a plain fill-mask model with a splade_* pooler
        return SparseRoute(layout.transformer_path, None, None, layout.max_seq_length,
                           layout.do_lower_case), get_pooler_class(options.pooler).name
    if sparse.asymmetric and options.side is None:
        raise ConfigError(f"{name} embeds queries and documents differently: choose a side",
                          hint="--query for queries, --document for the texts searched (side=...)")
    route = sparse.routes["" if not sparse.asymmetric else options.side]
    if route.kind == "static":
        if options.pooler is not None:
            raise ConfigError(f"the {options.side} side of {name} is a fixed weight per token; it takes no pooler")
        return route, "sparse_static"
    return route, get_pooler_class(options.pooler).name if options.pooler else route.splade.pooler


def sparse_prompt(layout: Any, options: Any) -> tuple[str | None, str]:
    """The prompt of a side, as SparseEncoder.encode_query / encode_document choose it: an explicit
    prompt, else the one named like the side ("" when the model has none)."""
    if options.prompt is not None:
        return None, options.prompt
    name = options.prompt_name or options.side
    if options.prompt_name is not None and name not in layout.prompts:
        raise UnknownChoiceError("prompt name", name, layout.prompts or ["(none)"])
    return (name if name in layout.prompts else None), layout.prompts.get(name, "")
