"""Reading a sentence-transformers folder strictly: every module is implemented exactly or refused.

`modules.json` lists the pipeline. Each entry's class is looked up in a registry of readers filled
by a decorator (`@st_module("Pooling")`); a class hfenc does not implement, a class from outside
the `sentence_transformers` package (remote code), a path that leaves the model folder, or a
config key hfenc does not know is refused in one line naming it: a partly understood pipeline
would give confidently wrong numbers (issue 9). Readers check their config keys against the
keys sentence-transformers 6.2 writes and reads, old and new formats alike.

The result is a value, `STLayout`, made once per model and passed to the Embedder, the lock
planner and `hfenc info`, so they cannot disagree about the pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfenc.errors import ConfigError, ModelLoadError

# sentence-transformers' pooling mode names -> hfenc pooler names. Their order is the order in
# which the legacy boolean keys are concatenated (ST's _LEGACY_POOLING_MODE_KWARGS).
ST_POOLING_MODES = {
    "cls": "cls_last_hidden_state",  # ST's CLS is the first token's state, never pooler_output
    "max": "max",
    "mean": "mean",
    "mean_sqrt_len_tokens": "mean_sqrt_len",
    "weightedmean": "weighted_mean",
    "lasttoken": "last_token",
}
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# The model-level file: keys that do not change the numbers, or that hfenc reads.
_TOP_LEVEL_KEYS = {"__version__", "prompts", "default_prompt_name", "similarity_fn_name", "model_type"}
_SENTENCE = "sentence_embedding"


@dataclass(frozen=True)
class PoolingSpec:
    modes: tuple[str, ...]  # hfenc pooler names, concatenated in this order
    include_prompt: bool = True

    @property
    def pooler(self) -> str:
        return "+".join(self.modes)


@dataclass(frozen=True)
class DenseSpec:
    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str  # dotted torch.nn class name, e.g. torch.nn.modules.activation.Tanh
    residual: bool = False


@dataclass(frozen=True)
class LayerNormSpec:
    path: Path
    dimension: int


@dataclass(frozen=True)
class NormalizeSpec:
    pass


@dataclass(frozen=True)
class WeightedLayerPoolingSpec:
    path: Path
    dimension: int
    layer_start: int
    num_hidden_layers: int


HeadSpec = DenseSpec | LayerNormSpec | NormalizeSpec


@dataclass(frozen=True)
class SpladeSpec:
    """sentence-transformers' SpladePooling over a fill-mask transformer's logits."""

    strategy: str  # "max" | "sum" (the pooler splade_max | splade_sum)
    activation: str  # "relu": log1p(relu(x)); "log1p_relu": log1p(log1p(relu(x)))

    @property
    def pooler(self) -> str:
        return f"splade_{self.strategy}"


@dataclass(frozen=True)
class SparseRoute:
    """One side of a sparse model: a fill-mask transformer + SpladePooling, or a
    SparseStaticEmbedding (the inference-free query side: a weight per vocabulary token)."""

    transformer_path: Path | None = None
    splade: SpladeSpec | None = None
    static_path: Path | None = None  # the SparseStaticEmbedding folder (weights + its own tokenizer)
    max_seq_length: int | None = None
    do_lower_case: bool = False

    @property
    def kind(self) -> str:
        return "static" if self.static_path is not None else "splade"


@dataclass(frozen=True)
class SparseLayout:
    """A sentence-transformers SparseEncoder: one route, or a Router's query and document routes."""

    routes: dict[str, SparseRoute]  # {"": route} when symmetric; else {"query": ..., "document": ...}
    default_route: str | None = None
    max_active_dims: int | None = None

    @property
    def asymmetric(self) -> bool:
        return "" not in self.routes


@dataclass(frozen=True)
class STLayout:
    """What a model folder says beyond its transformer; empty when it is a plain HF folder."""

    transformer_path: Path
    is_sentence_transformers: bool = False
    pooling: PoolingSpec | None = None
    token_stage: tuple[WeightedLayerPoolingSpec, ...] = ()  # between the transformer and pooling
    head: tuple[HeadSpec, ...] = ()  # after pooling, in order (a final Normalize is `normalize`)
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    notes: tuple[str, ...] = ()  # what the user should hear (e.g. a module ST itself ignores)
    sparse: SparseLayout | None = None  # a SparseEncoder folder (hfenc.model.st_sparse)

    @property
    def pooler(self) -> str | None:
        return self.pooling.pooler if self.pooling else None

    @property
    def dense(self) -> tuple[DenseSpec, ...]:
        return tuple(m for m in self.head if isinstance(m, DenseSpec))

    @property
    def module_paths(self) -> list[Path]:
        """Folders holding weights of modules after the transformer (for hashing)."""
        paths = [m.path for m in (*self.token_stage, *self.head) if hasattr(m, "path")]
        routes = self.sparse.routes.values() if self.sparse is not None else ()
        return paths + [p for r in routes for p in (r.static_path, r.transformer_path)
                        if p is not None and p != self.transformer_path]


def shown(path: Path) -> str:
    """A path for a message: relative to the working directory when it is below it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {shown(path)}: {exc}") from exc
    return value


def check_keys(where: Path, config: dict, allowed: set[str]) -> None:
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ModelLoadError(
            f"{shown(where)}: unknown key {unknown[0]!r} in this module's config; hfenc refuses what it "
            f"cannot reproduce exactly (it knows: {', '.join(sorted(allowed))})"
        )


def require(where: Path, config: dict, key: str, allowed: Callable[[Any], bool], what: str) -> None:
    if key in config and not allowed(config[key]):
        raise ModelLoadError(f"{shown(where)}: {key}={config[key]!r} is not supported (hfenc reads {what})")


# ---- module readers: one per sentence-transformers class, registered by name ----------------

Reader = Callable[[Path, dict, "_Builder"], None]
_READERS: dict[str, Reader] = {}


def st_module(name: str) -> Callable[[Reader], Reader]:
    def wrap(fn: Reader) -> Reader:
        if name in _READERS:
            raise ValueError(f"sentence-transformers module {name!r} is registered twice")
        _READERS[name] = fn
        return fn

    return wrap


def st_module_names() -> list[str]:
    return sorted(_READERS)


@dataclass
class _Builder:
    root: Path
    transformer_path: Path | None = None
    pooling: PoolingSpec | None = None
    token_stage: list[WeightedLayerPoolingSpec] = field(default_factory=list)
    head: list[HeadSpec] = field(default_factory=list)
    max_seq_length: int | None = None
    do_lower_case: bool = False
    notes: list[str] = field(default_factory=list)

    def stage(self, where: Path, kind: str, *, before_pooling: bool) -> None:
        if self.transformer_path is None:
            raise ModelLoadError(f"{shown(where)}: the {kind} module comes before any Transformer module")
        if before_pooling and self.pooling is not None:
            raise ModelLoadError(f"{shown(where)}: {kind} after Pooling is not a layout hfenc reproduces")
        if not before_pooling and self.pooling is None:
            raise ModelLoadError(f"{shown(where)}: {kind} before Pooling is not a layout hfenc reproduces")


def module_config(sub: Path, required: bool = True) -> dict:
    file = sub / "config.json"
    if not file.is_file():
        if required:
            raise ModelLoadError(f"{shown(sub)}: missing config.json")
        return {}
    config = read_json(file)
    if not isinstance(config, dict):
        raise ModelLoadError(f"{shown(file)}: not a JSON object")
    return config


_TRANSFORMER_KEYS = {
    "max_seq_length", "do_lower_case", "transformer_task", "modality_config", "module_output_name",
    "processing_kwargs", "unpad_inputs", "query_length", "document_length", "query_expansion",
    "model_args", "tokenizer_args", "config_args", "backend",
}
_MODALITY = {  # what each transformer task reads its tokens through
    "feature-extraction": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
    "fill-mask": {"text": {"method": "forward", "method_output_name": "logits"}},
}


def transformer_config(sub: Path, root: Path, task: str, legacy_task: str | None = None) -> dict:
    """A Transformer module's sentence_bert_config.json, checked for `task` (a config without
    transformer_task means `legacy_task`, else feature-extraction, as sentence-transformers reads it)."""
    file = sub / "sentence_bert_config.json"
    if not file.is_file() and (root / "sentence_bert_config.json").is_file():
        file = root / "sentence_bert_config.json"
    cfg = read_json(file) if file.is_file() else {}
    check_keys(file, cfg, _TRANSFORMER_KEYS)
    found = cfg.get("transformer_task", legacy_task or "feature-extraction")
    if found != task:
        raise ModelLoadError(f"{shown(file)}: transformer_task={found!r} is not supported here (hfenc reads {task})")
    if isinstance(cfg.get("modality_config"), dict) and "message" in cfg["modality_config"]:
        raise ModelLoadError(
            f"{shown(file)}: modality_config has 'message': sentence-transformers runs every text through the "
            "tokenizer's chat template for this model, which hfenc does not implement"
        )
    require(file, cfg, "modality_config", lambda v: v == _MODALITY[task], "text through forward")
    require(file, cfg, "module_output_name", lambda v: v == "token_embeddings", "token_embeddings")
    require(file, cfg, "backend", lambda v: v == "torch", "torch")
    for key in ("processing_kwargs", "model_args", "tokenizer_args", "config_args"):
        require(file, cfg, key, lambda v: not v, "an empty value")
    for key in ("query_length", "document_length", "query_expansion"):
        require(file, cfg, key, lambda v: v is None, "null (multi-vector settings)")
    return cfg


@st_module("Transformer")
def _transformer(sub: Path, _: dict, b: _Builder) -> None:
    if b.transformer_path is not None:
        raise ModelLoadError(f"{shown(sub)}: a second Transformer module (hfenc runs one transformer)")
    cfg = transformer_config(sub, b.root, "feature-extraction")
    b.transformer_path = sub
    b.max_seq_length = cfg.get("max_seq_length")
    b.do_lower_case = bool(cfg.get("do_lower_case", False))


def _width(cfg: dict, where: Path) -> None:
    if "embedding_dimension" in cfg and "word_embedding_dimension" in cfg:
        raise ModelLoadError(f"{shown(where)}: both embedding_dimension and word_embedding_dimension")


@st_module("Pooling")
def _pooling(sub: Path, cfg: dict, b: _Builder) -> None:
    b.stage(sub, "Pooling", before_pooling=True)
    where = sub / "config.json"
    check_keys(where, cfg, {"embedding_dimension", "word_embedding_dimension", "pooling_mode",
                             "include_prompt", *_LEGACY_POOLING_KEYS})
    _width(cfg, where)
    mode = cfg.get("pooling_mode")
    if mode is None:  # the legacy booleans; none set means mean, as sentence-transformers reads it
        modes = tuple(m for key, m in _LEGACY_POOLING_KEYS.items() if cfg.get(key)) or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    bad = [m for m in modes if m not in ST_POOLING_MODES]
    if bad or not modes:
        raise ModelLoadError(
            f"{shown(where)}: unknown pooling mode {bad[0] if bad else mode!r}; "
            f"sentence-transformers modes are: {', '.join(ST_POOLING_MODES)}"
        )
    b.pooling = PoolingSpec(tuple(ST_POOLING_MODES[m] for m in modes), bool(cfg.get("include_prompt", True)))


def _io_names(where: Path, cfg: dict) -> None:
    require(where, cfg, "module_input_name", lambda v: v == _SENTENCE, _SENTENCE)
    require(where, cfg, "module_output_name", lambda v: v in (None, _SENTENCE), _SENTENCE)


@st_module("Dense")
def _dense(sub: Path, cfg: dict, b: _Builder) -> None:
    b.stage(sub, "Dense", before_pooling=False)
    where = sub / "config.json"
    check_keys(where, cfg, {"in_features", "out_features", "bias", "activation_function",
                             "module_input_name", "module_output_name", "use_residual"})
    _io_names(where, cfg)
    # sentence-transformers' Dense defaults to Tanh when the key is absent.
    activation = str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh"))
    if not activation.startswith("torch."):
        raise ModelLoadError(
            f"{shown(where)}: activation {activation!r} is not a torch class; hfenc never imports code "
            "named by a model folder"
        )
    try:
        b.head.append(DenseSpec(sub, int(cfg["in_features"]), int(cfg["out_features"]),
                                bool(cfg.get("bias", True)), activation, bool(cfg.get("use_residual", False))))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{shown(where)}: needs integer in_features and out_features") from exc


@st_module("Normalize")
def _normalize(sub: Path, cfg: dict, b: _Builder) -> None:
    b.stage(sub, "Normalize", before_pooling=False)
    check_keys(sub / "config.json", cfg, {"module_input_name", "module_output_name"})
    _io_names(sub / "config.json", cfg)
    b.head.append(NormalizeSpec())


@st_module("LayerNorm")
def _layer_norm(sub: Path, cfg: dict, b: _Builder) -> None:
    b.stage(sub, "LayerNorm", before_pooling=False)
    check_keys(sub / "config.json", cfg, {"dimension"})
    b.head.append(LayerNormSpec(sub, int(cfg["dimension"])))


@st_module("Dropout")
def _dropout(sub: Path, cfg: dict, b: _Builder) -> None:
    """Identity at inference (sentence-transformers runs eval mode)."""
    check_keys(sub / "config.json", cfg, {"dropout"})


@st_module("WeightedLayerPooling")
def _weighted_layer_pooling(sub: Path, cfg: dict, b: _Builder) -> None:
    b.stage(sub, "WeightedLayerPooling", before_pooling=True)
    where = sub / "config.json"
    check_keys(where, cfg, {"embedding_dimension", "word_embedding_dimension", "layer_start",
                             "num_hidden_layers"})
    _width(cfg, where)
    assert b.transformer_path is not None  # b.stage
    tcfg = read_json(b.transformer_path / "config.json") if (b.transformer_path / "config.json").is_file() else {}
    if not tcfg.get("output_hidden_states", False):
        # sentence-transformers hands this module no hidden states then, and it passes its input on.
        b.notes.append(f"{sub.name}: the transformer does not output hidden states, so this "
                       "WeightedLayerPooling does nothing (as in sentence-transformers)")
        return
    dim = cfg.get("embedding_dimension", cfg.get("word_embedding_dimension"))
    b.token_stage.append(WeightedLayerPoolingSpec(sub, int(dim), int(cfg.get("layer_start", 4)),
                                                  int(cfg.get("num_hidden_layers", 12))))


def _inside(root: Path, rel: Any, index: int) -> Path:
    """The module folder, refused when it would leave the model folder (`..`, absolute, symlink)."""
    if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ModelLoadError(f"{shown(root / 'modules.json')}: module {index} has path {rel!r}, outside the model folder")
    sub = (root / rel).resolve()
    if not sub.is_relative_to(root.resolve()):
        raise ModelLoadError(f"{shown(root / 'modules.json')}: module {index} path {rel!r} leads outside the model folder")
    return root / rel if rel else root


def read_prompts(top_file: Path, top: dict) -> tuple[dict[str, str], str | None]:
    """The model's prompts (name -> text) and its default prompt name."""
    prompts = top.get("prompts") or {}
    if not isinstance(prompts, dict):
        raise ModelLoadError(f"{shown(top_file)}: prompts must be an object")
    prompts = {str(k): "" if v is None else str(v) for k, v in prompts.items()}
    default = top.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise ModelLoadError(f"{shown(top_file)}: default_prompt_name {default!r} is not one of its prompts")
    return prompts, default


def module_entries(path: Path) -> list[tuple[str, Path]]:
    """modules.json as (dotted class name, folder) pairs; a folder outside the model folder is
    refused here."""
    modules_file = path / "modules.json"
    modules = read_json(modules_file)
    if not isinstance(modules, list) or not modules:
        raise ModelLoadError(f"{shown(modules_file)}: expected a non-empty list of modules")
    entries = []
    for i, entry in enumerate(modules):
        if not isinstance(entry, dict):
            raise ModelLoadError(f"{shown(modules_file)}: module {i} is not an object")
        entries.append((str(entry.get("type", "")), _inside(path, entry.get("path", ""), i)))
    return entries


def refuse_module(sub: Path, full: str, known: list[str], kind: str = "SentenceTransformer") -> ModelLoadError:
    return ModelLoadError(
        f"{shown(sub)}: module {full or '(no type)'} is not one hfenc implements; in a {kind} it reads "
        f"sentence-transformers' {', '.join(known)}",
        hint="hfenc refuses rather than approximate: the numbers would differ from sentence-transformers",
    )


def read_top(path: Path) -> tuple[Path, dict]:
    """config_sentence_transformers.json ({} when absent)."""
    top_file = path / "config_sentence_transformers.json"
    top = read_json(top_file) if top_file.is_file() else {}
    if not isinstance(top, dict):
        raise ModelLoadError(f"{shown(top_file)}: not a JSON object")
    return top_file, top


def read_st_layout(path: Path) -> STLayout:
    """The layout of a model folder; a plain Hugging Face folder gives an empty layout."""
    modules_file = path / "modules.json"
    top_file, top = read_top(path)
    kind = top.get("model_type", "SentenceTransformer")
    if kind != "SentenceTransformer":
        raise ModelLoadError(f"{shown(top_file)}: model_type {kind!r} is not one hfenc reads "
                             "(it reads SentenceTransformer and SparseEncoder folders)")
    if not modules_file.is_file():
        return STLayout(path)
    check_keys(top_file, top, _TOP_LEVEL_KEYS)
    b = _Builder(path)
    for full, sub in module_entries(path):
        name = full.rsplit(".", 1)[-1]
        if not full.startswith("sentence_transformers.") or name not in _READERS:
            raise refuse_module(sub, full, st_module_names())
        cfg = {} if name == "Transformer" else module_config(sub, required=name not in ("Normalize", "Dropout"))
        _READERS[name](sub, cfg, b)
    if b.transformer_path is None or b.pooling is None:
        missing = "Transformer" if b.transformer_path is None else "Pooling"
        raise ModelLoadError(f"{shown(modules_file)}: no {missing} module; hfenc needs a transformer and a pooling step")
    head = list(b.head)
    normalize = bool(head) and isinstance(head[-1], NormalizeSpec)
    if normalize:
        head.pop()  # the final normalize is hfenc's own step (after Matryoshka truncation)
    prompts, default = read_prompts(top_file, top)
    return STLayout(
        b.transformer_path, True, b.pooling, tuple(b.token_stage), tuple(head), normalize,
        b.max_seq_length, b.do_lower_case, prompts, default, tuple(b.notes),
    )
