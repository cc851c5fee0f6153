"""Reading a sentence-transformers SparseEncoder folder strictly (issue 25), as hfenc.model.st reads
a SentenceTransformer: every module implemented exactly or refused by name.

A SparseEncoder is either [Transformer(fill-mask), SpladePooling] or one Router whose routes are
"query" and "document", each [Transformer(fill-mask), SpladePooling] or [SparseStaticEmbedding]
(the inference-free query side). Keys are those sentence-transformers 6.3 writes and reads, the
5.x spellings too (MLMTransformer, word_embedding_dimension, router config.json). What hfenc
refuses, by name: any other module (SparseAutoEncoder, Dense, Normalize, ...), route_mappings,
a SparseStaticEmbedding built from an idf.json `path`, another similarity than dot, and a folder
of another model_type (sentence-transformers converts those with random weights).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hfenc.errors import ModelLoadError
from hfenc.model.st import (SparseLayout, SparseRoute, SpladeSpec, STLayout, PoolingSpec, check_keys, module_config,
                            module_entries, read_json, read_prompts, read_st_layout, read_top, refuse_module, require,
                            shown, transformer_config)

_TOP_KEYS = {"__version__", "prompts", "default_prompt_name", "similarity_fn_name", "model_type", "max_active_dims"}
SIDES = ("query", "document")

SparseReader = Callable[[str, Path, Path, list[SparseRoute]], None]
_READERS: dict[str, SparseReader] = {}


def sparse_module(*names: str) -> Callable[[SparseReader], SparseReader]:
    """Register a reader under sentence-transformers class names (old and new spellings)."""
    def wrap(fn: SparseReader) -> SparseReader:
        for name in names:
            if name in _READERS:
                raise ValueError(f"sparse module {name!r} is registered twice")
            _READERS[name] = fn
        return fn

    return wrap


def sparse_module_names() -> list[str]:
    return sorted(_READERS)


@sparse_module("Transformer", "MLMTransformer")
def _mlm(name: str, sub: Path, root: Path, route: list[SparseRoute]) -> None:
    if route:
        raise ModelLoadError(f"{shown(sub)}: a Transformer after another module is not a layout hfenc reproduces")
    cfg = transformer_config(sub, root, "fill-mask", "fill-mask" if name == "MLMTransformer" else None)
    route.append(SparseRoute(transformer_path=sub, max_seq_length=cfg.get("max_seq_length"),
                             do_lower_case=bool(cfg.get("do_lower_case", False))))


@sparse_module("SpladePooling")
def _splade(name: str, sub: Path, root: Path, route: list[SparseRoute]) -> None:
    where = sub / "config.json"
    cfg = module_config(sub)
    # chunk_size only splits the positions pooled at a time (a runtime memory setting)
    check_keys(where, cfg, {"pooling_strategy", "activation_function", "embedding_dimension",
                            "word_embedding_dimension", "chunk_size"})
    if "embedding_dimension" in cfg and "word_embedding_dimension" in cfg:
        raise ModelLoadError(f"{shown(where)}: both embedding_dimension and word_embedding_dimension")
    require(where, cfg, "pooling_strategy", lambda v: v in ("max", "sum"), "max or sum")
    require(where, cfg, "activation_function", lambda v: v in ("relu", "log1p_relu"), "relu or log1p_relu")
    if len(route) != 1 or route[0].transformer_path is None or route[0].splade is not None:
        raise ModelLoadError(f"{shown(sub)}: SpladePooling must follow a fill-mask Transformer")
    first = route[0]
    route[0] = SparseRoute(first.transformer_path, SpladeSpec(cfg.get("pooling_strategy", "max"),
                                                              cfg.get("activation_function", "relu")),
                           None, first.max_seq_length, first.do_lower_case)


@sparse_module("SparseStaticEmbedding")
def _static(name: str, sub: Path, root: Path, route: list[SparseRoute]) -> None:
    where = sub / "config.json"
    cfg = module_config(sub, required=False)
    # `path` builds the weights from an idf.json by token strings: refused, the saved weights are exact
    check_keys(where, cfg, {"frozen"})
    if route:
        raise ModelLoadError(f"{shown(sub)}: SparseStaticEmbedding must be the only module of its route")
    route.append(SparseRoute(static_path=sub))


def _route(root: Path, modules: list[tuple[str, Path]]) -> SparseRoute:
    route: list[SparseRoute] = []
    unknown = [(full, sub) for full, sub in modules
               if not full.startswith("sentence_transformers.") or full.rsplit(".", 1)[-1] not in _READERS]
    if unknown:  # every one named, before any config is read
        raise refuse_module(unknown[0][1], ", ".join(full or "(no type)" for full, _ in unknown),
                            ["Router", *sparse_module_names()], "SparseEncoder")
    for full, sub in modules:
        name = full.rsplit(".", 1)[-1]
        _READERS[name](name, sub, root, route)
    if not route or (route[0].kind == "splade" and route[0].splade is None):
        where = modules[-1][1] if modules else root
        raise ModelLoadError(f"{shown(where)}: a sparse route needs a fill-mask Transformer and SpladePooling, "
                             "or a SparseStaticEmbedding")
    return route[0]


_ROUTER_PARAMETERS = {"default_route", "allow_empty_key", "route_mappings"}


def _router(root: Path, sub: Path) -> tuple[dict[str, SparseRoute], str | None]:
    file = sub / "router_config.json"
    if not file.is_file():
        file = sub / "config.json"  # sentence-transformers 5.x
    cfg = read_json(file)
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{shown(file)}: not a JSON object")
    check_keys(file, cfg, {"types", "structure", "parameters"})
    params = cfg.get("parameters") or {}
    check_keys(file, params, _ROUTER_PARAMETERS)
    require(file, params, "route_mappings", lambda v: not v, "no route_mappings")
    types, structure = cfg.get("types") or {}, cfg.get("structure") or {}
    if not isinstance(types, dict) or not isinstance(structure, dict) or set(structure) != set(SIDES):
        raise ModelLoadError(f"{shown(file)}: routes {sorted(structure) if isinstance(structure, dict) else structure}; "
                             "hfenc reads a Router with the routes query and document")
    routes = {}
    for side in SIDES:
        ids = structure[side]
        if not isinstance(ids, list) or not all(isinstance(i, str) and i in types for i in ids):
            raise ModelLoadError(f"{shown(file)}: route {side!r} names modules its types do not list")
        routes[side] = _route(root, [(str(types[i]), _within(sub, i, file)) for i in ids])
    default = params.get("default_route")
    if default is not None and default not in SIDES:
        raise ModelLoadError(f"{shown(file)}: default_route {default!r} is not one of its routes")
    return routes, default


def _within(folder: Path, rel: str, file: Path) -> Path:
    sub = (folder / rel).resolve()
    if Path(rel).is_absolute() or ".." in Path(rel).parts or not sub.is_relative_to(folder.resolve()):
        raise ModelLoadError(f"{shown(file)}: module {rel!r} leads outside the model folder")
    return folder / rel


def read_sparse_layout(path: Path) -> STLayout:
    """The layout of a SparseEncoder folder (model_type SparseEncoder)."""
    top_file, top = read_top(path)
    check_keys(top_file, top, _TOP_KEYS)
    require(top_file, top, "similarity_fn_name", lambda v: v in (None, "dot"), "dot (hfenc's sparse search)")
    k = top.get("max_active_dims")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ModelLoadError(f"{shown(top_file)}: max_active_dims={k!r} must be a positive integer")
    if not (path / "modules.json").is_file():
        raise ModelLoadError(f"{shown(path)}: a SparseEncoder without modules.json (sentence-transformers would "
                             "add modules with random weights); hfenc refuses it")
    entries = module_entries(path)
    if len(entries) == 1 and entries[0][0].rsplit(".", 1)[-1] in ("Router", "Asym"):
        routes, default = _router(path, entries[0][1])
    else:
        routes, default = {"": _route(path, entries)}, None
    prompts, default_prompt = read_prompts(top_file, top)
    main = routes.get("", routes.get("document"))
    splade = next((r for r in (main, *routes.values()) if r is not None and r.splade is not None), None)
    if splade is None:
        raise ModelLoadError(f"{shown(path)}: no route runs a transformer; hfenc needs one (the document side)")
    return STLayout(splade.transformer_path, True, PoolingSpec((splade.splade.pooler,)), (), (), False,
                    splade.max_seq_length, splade.do_lower_case, prompts, default_prompt, (),
                    SparseLayout(routes, default, k))


def read_layout(path: Path) -> STLayout:
    """Any model folder hfenc reads: a SparseEncoder's, else hfenc.model.st's (dense or plain)."""
    _, top = read_top(path)
    if top.get("model_type") == "SparseEncoder":
        return read_sparse_layout(path)
    return read_st_layout(path)
