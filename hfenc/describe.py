"""`hfenc info`: what a model is, read from its config and tokenizer files, never its weights."""

from __future__ import annotations

from typing import Any

import torch


from .errors import ModelNotFoundError
from .models import bundled_config, read_st_layout, resolve_model, weight_files


def describe_model(name: str) -> dict[str, Any]:
    from .encoder import HFTextEncoder, load_config

    layout = None
    try:
        resolved = resolve_model(name, config_only=True)
        where, source = str(resolved.path), resolved.source
        layout = read_st_layout(resolved.path)
        config = load_config(layout.transformer_path)
    except ModelNotFoundError:
        config = bundled_config(name)
        if config is None:
            raise
        where, source = "(bundled config values only)", "bundled"
    with torch.device("meta"):  # shapes only
        encoder = HFTextEncoder(name, config=config, pretrained=False,
                                pooler_type=layout.pooler if layout else None)
    arch = encoder.arch
    tokenizer: dict[str, Any] | None = None
    if layout is not None:
        try:
            import transformers

            tok = transformers.AutoTokenizer.from_pretrained(str(layout.transformer_path), local_files_only=True)
            tokenizer = {"class": type(tok).__name__, "vocab_size": len(tok),
                         "model_max_length": tok.model_max_length if tok.model_max_length < 1e9 else None}
        except Exception:  # a folder with a config but no tokenizer files
            tokenizer = None
    files = weight_files(layout.transformer_path) if layout else []
    return {
        "model": name,
        "location": where,
        "source": source,
        "model_type": config.model_type,
        "architecture": "discovered from the module tree" if arch.discovered else "from hfenc's table",
        "encoder_decoder": arch.encoder_decoder,
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "layers": arch.num_layers(config),
        "width": arch.width(config),
        "context_length": arch.context_length(config),
        "vocab_size": encoder.vocab_size,
        "tokenizer": tokenizer,
        "default_pooler": encoder.pooler_type,
        "sentence_transformers": None if layout is None or not (layout.pooler or layout.dense) else {
            "pooler": layout.pooler, "normalize": layout.normalize, "dense_layers": len(layout.dense),
            "max_seq_length": layout.max_seq_length,
        },
        "weights": {f.name: f.stat().st_size for f in files} or None,
    }
