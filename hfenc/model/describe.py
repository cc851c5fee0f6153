"""`hfenc info`: what a model is, read from its config and tokenizer files, never its weights.

The parameter count is that of the pipeline `embed` runs and `lock-plan` plans (the same
meta-device build, hfenc.model.meta), so the three agree."""

from __future__ import annotations

from typing import Any

from hfenc.model.meta import meta_model
from hfenc.model.resolve import weight_files
from hfenc.model.spec import ModelSpec, load_spec


def describe_model(name: str | ModelSpec) -> dict[str, Any]:
    spec = load_spec(name, config_only=True, bundled_ok=True)
    layout, config = spec.layout, spec.config
    encoder, head, _ = meta_model(spec)
    arch = encoder.arch
    tokenizer: dict[str, Any] | None = None
    if spec.resolved is not None:
        try:
            import transformers

            tok = transformers.AutoTokenizer.from_pretrained(str(layout.transformer_path), local_files_only=True)
            tokenizer = {"class": type(tok).__name__, "vocab_size": len(tok),
                         "model_max_length": tok.model_max_length if tok.model_max_length < 1e9 else None,
                         "padding_side": tok.padding_side}
        except Exception:  # a folder with a config but no tokenizer files
            tokenizer = None
    files = weight_files(layout.transformer_path) if spec.resolved is not None else []
    params = sum(p.numel() for p in encoder.parameters())
    params += sum(p.numel() for p in head.parameters()) if head is not None else 0
    return {
        "model": spec.name,
        "location": spec.resolved.shown if spec.resolved else "(bundled config values only)",
        "source": spec.resolved.source if spec.resolved else "bundled",
        "model_type": config.model_type,
        "architecture": "discovered from the module tree" if arch.discovered else "from hfenc's table",
        "encoder_decoder": arch.encoder_decoder,
        "parameters": params,
        "layers": arch.num_layers(config),
        "width": arch.width(config),
        "context_length": arch.context_length(config),
        "vocab_size": encoder.vocab_size,
        "tokenizer": tokenizer,
        "default_pooler": encoder.pooler_type,
        "sentence_transformers": None if not layout.is_sentence_transformers else {
            "pooler": layout.pooler, "include_prompt": layout.pooling.include_prompt if layout.pooling else True,
            "normalize": layout.normalize, "modules_after_pooling": [type(m).__name__.removesuffix("Spec") for m in layout.head],
            "max_seq_length": layout.max_seq_length, "do_lower_case": layout.do_lower_case,
            "prompts": layout.prompts, "default_prompt_name": layout.default_prompt_name,
        },
        "weights": {f.name: f.stat().st_size for f in files} or None,
        **({"sparse": sparse_summary(layout, encoder.pooled_width)} if getattr(encoder, "sparse", False) else {}),
    }


def sparse_summary(layout: Any, vocabulary: int) -> dict[str, Any]:
    """A sparse model's output width (its vocabulary), pruning and sides: what each side runs."""
    sparse = layout.sparse
    routes = sparse.routes if sparse is not None else {"": None}
    summary: dict[str, Any] = {"vocabulary": vocabulary,
                               "max_active_dims": sparse.max_active_dims if sparse is not None else None,
                               "similarity": "dot", "asymmetric": bool(sparse is not None and sparse.asymmetric)}
    for side, route in routes.items():
        if route is None or route.kind == "splade":
            splade = route.splade if route is not None else None
            what = (f"SPLADE {splade.strategy}, {splade.activation}" if splade else f"SPLADE ({layout.pooler})") + \
                " over the fill-mask transformer's logits"
        else:
            what = "a fixed weight per token present (SparseStaticEmbedding: no transformer runs)"
        for name in ([side] if side else ["query", "document"]):
            prompt = layout.prompts.get(name, "")
            summary[f"{name}_side"] = what + (f"; prompt {prompt!r}" if prompt else "")
    return summary
