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

    @property
    def pooler(self) -> str | None:
        return self.pooling.pooler if self.pooling else None

    @property
    def dense(self) -> tuple[DenseSpec, ...]:
        return tuple(m for m in self.head if isinstance(m, DenseSpec))

    @property
    def module_paths(self) -> list[Path]:
        """Folders holding weights of modules after the transformer (for hashing)."""
        return [m.path for m in (*self.token_stage, *self.head) if hasattr(m, "path")]


def _p(path: Path) -> str:
    """A path for a message: relative to the working directory when it is below it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {_p(path)}: {exc}") from exc
    return value


def _check_keys(where: Path, config: dict, allowed: set[str]) -> None:
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ModelLoadError(
            f"{_p(where)}: unknown key {unknown[0]!r} in this module's config; hfenc refuses what it "
            f"cannot reproduce exactly (it knows: {', '.join(sorted(allowed))})"
        )


def _require(where: Path, config: dict, key: str, allowed: Callable[[Any], bool], what: str) -> None:
    if key in config and not allowed(config[key]):
        raise ModelLoadError(f"{_p(where)}: {key}={config[key]!r} is not supported (hfenc reads {what})")


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
            raise ModelLoadError(f"{_p(where)}: the {kind} module comes before any Transformer module")
        if before_pooling and self.pooling is not None:
            raise ModelLoadError(f"{_p(where)}: {kind} after Pooling is not a layout hfenc reproduces")
        if not before_pooling and self.pooling is None:
            raise ModelLoadError(f"{_p(where)}: {kind} before Pooling is not a layout hfenc reproduces")


def _module_config(sub: Path, required: bool = True) -> dict:
    file = sub / "config.json"
    if not file.is_file():
        if required:
            raise ModelLoadError(f"{_p(sub)}: missing config.json")
        return {}
    config = read_json(file)
    if not isinstance(config, dict):
        raise ModelLoadError(f"{_p(file)}: not a JSON object")
    return config


_TRANSFORMER_KEYS = {
    "max_seq_length", "do_lower_case", "transformer_task", "modality_config", "module_output_name",
    "processing_kwargs", "unpad_inputs", "query_length", "document_length", "query_expansion",
    "model_args", "tokenizer_args", "config_args", "backend",
}
_TEXT_MODALITY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}


@st_module("Transformer")
def _transformer(sub: Path, _: dict, b: _Builder) -> None:
    if b.transformer_path is not None:
        raise ModelLoadError(f"{_p(sub)}: a second Transformer module (hfenc runs one transformer)")
    file = sub / "sentence_bert_config.json"
    if not file.is_file() and (b.root / "sentence_bert_config.json").is_file():
        file = b.root / "sentence_bert_config.json"
    cfg = read_json(file) if file.is_file() else {}
    _check_keys(file, cfg, _TRANSFORMER_KEYS)
    _require(file, cfg, "transformer_task", lambda v: v == "feature-extraction", "feature-extraction")
    if isinstance(cfg.get("modality_config"), dict) and "message" in cfg["modality_config"]:
        raise ModelLoadError(
            f"{_p(file)}: modality_config has 'message': sentence-transformers runs every text through the "
            "tokenizer's chat template for this model, which hfenc does not implement"
        )
    _require(file, cfg, "modality_config", lambda v: v == _TEXT_MODALITY, "text through forward")
    _require(file, cfg, "module_output_name", lambda v: v == "token_embeddings", "token_embeddings")
    _require(file, cfg, "backend", lambda v: v == "torch", "torch")
    for key in ("processing_kwargs", "model_args", "tokenizer_args", "config_args"):
        _require(file, cfg, key, lambda v: not v, "an empty value")
    for key in ("query_length", "document_length", "query_expansion"):
        _require(file, cfg, key, lambda v: v is None, "null (multi-vector settings)")
    b.transformer_path = sub
    b.max_seq_length = cfg.get("max_seq_length")
    b.do_lower_case = bool(cfg.get("do_lower_case", False))


def _width(cfg: dict, where: Path) -> None:
    if "embedding_dimension" in cfg and "word_embedding_dimension" in cfg:
        raise ModelLoadError(f"{_p(where)}: both embedding_dimension and word_embedding_dimension")


@st_module("Pooling")
def _pooling(sub: Path, cfg: dict, b: _Builder) -> None:
    b.stage(sub, "Pooling", before_pooling=True)
    where = sub / "config.json"
    _check_keys(where, cfg, {"embedding_dimension", "word_embedding_dimension", "pooling_mode",
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
            f"{_p(where)}: unknown pooling mode {bad[0] if bad else mode!r}; "
            f"sentence-transformers modes are: {', '.join(ST_POOLING_MODES)}"
        )
    b.pooling = PoolingSpec(tuple(ST_POOLING_MODES[m] for m in modes), bool(cfg.get("include_prompt", True)))


def _io_names(where: Path, cfg: dict) -> None:
    _require(where, cfg, "module_input_name", lambda v: v == _SENTENCE, _SENTENCE)
    _require(where, cfg, "module_output_name", lambda v: v in (None, _SENTENCE), _SENTENCE)


@st_module("Dense")
def _dense(sub: Path, cfg: dict, b: _Builder) -> None:
    b.stage(sub, "Dense", before_pooling=False)
    where = sub / "config.json"
    _check_keys(where, cfg, {"in_features", "out_features", "bias", "activation_function",
                             "module_input_name", "module_output_name", "use_residual"})
    _io_names(where, cfg)
    # sentence-transformers' Dense defaults to Tanh when the key is absent.
    activation = str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh"))
    if not activation.startswith("torch."):
        raise ModelLoadError(
            f"{_p(where)}: activation {activation!r} is not a torch class; hfenc never imports code "
            "named by a model folder"
        )
    try:
        b.head.append(DenseSpec(sub, int(cfg["in_features"]), int(cfg["out_features"]),
                                bool(cfg.get("bias", True)), activation, bool(cfg.get("use_residual", False))))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{_p(where)}: needs integer in_features and out_features") from exc


@st_module("Normalize")
def _normalize(sub: Path, cfg: dict, b: _Builder) -> None:
    b.stage(sub, "Normalize", before_pooling=False)
    _check_keys(sub / "config.json", cfg, {"module_input_name", "module_output_name"})
    _io_names(sub / "config.json", cfg)
    b.head.append(NormalizeSpec())


@st_module("LayerNorm")
def _layer_norm(sub: Path, cfg: dict, b: _Builder) -> None:
    b.stage(sub, "LayerNorm", before_pooling=False)
    _check_keys(sub / "config.json", cfg, {"dimension"})
    b.head.append(LayerNormSpec(sub, int(cfg["dimension"])))


@st_module("Dropout")
def _dropout(sub: Path, cfg: dict, b: _Builder) -> None:
    """Identity at inference (sentence-transformers runs eval mode)."""
    _check_keys(sub / "config.json", cfg, {"dropout"})


@st_module("WeightedLayerPooling")
def _weighted_layer_pooling(sub: Path, cfg: dict, b: _Builder) -> None:
    b.stage(sub, "WeightedLayerPooling", before_pooling=True)
    where = sub / "config.json"
    _check_keys(where, cfg, {"embedding_dimension", "word_embedding_dimension", "layer_start",
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
        raise ModelLoadError(f"{_p(root / 'modules.json')}: module {index} has path {rel!r}, outside the model folder")
    sub = (root / rel).resolve()
    if not sub.is_relative_to(root.resolve()):
        raise ModelLoadError(f"{_p(root / 'modules.json')}: module {index} path {rel!r} leads outside the model folder")
    return root / rel if rel else root


def read_st_layout(path: Path) -> STLayout:
    """The layout of a model folder; a plain Hugging Face folder gives an empty layout."""
    modules_file = path / "modules.json"
    top_file = path / "config_sentence_transformers.json"
    top = read_json(top_file) if top_file.is_file() else {}
    if not isinstance(top, dict):
        raise ModelLoadError(f"{_p(top_file)}: not a JSON object")
    kind = top.get("model_type", "SentenceTransformer")
    if kind != "SentenceTransformer":
        raise ModelLoadError(f"{_p(top_file)}: this is a sentence-transformers {kind}, not a SentenceTransformer; "
                             "hfenc makes dense embeddings only")
    if not modules_file.is_file():
        return STLayout(path)
    _check_keys(top_file, top, _TOP_LEVEL_KEYS)
    modules = read_json(modules_file)
    if not isinstance(modules, list) or not modules:
        raise ModelLoadError(f"{_p(modules_file)}: expected a non-empty list of modules")
    b = _Builder(path)
    for i, entry in enumerate(modules):
        if not isinstance(entry, dict):
            raise ModelLoadError(f"{_p(modules_file)}: module {i} is not an object")
        full = str(entry.get("type", ""))
        name = full.rsplit(".", 1)[-1]
        sub = _inside(path, entry.get("path", ""), i)
        if not full.startswith("sentence_transformers.") or name not in _READERS:
            raise ModelLoadError(
                f"{_p(sub)}: module {full or '(no type)'} is not one hfenc implements; it reads "
                f"sentence-transformers' {', '.join(st_module_names())}",
                hint="hfenc refuses rather than approximate: the numbers would differ from sentence-transformers",
            )
        cfg = {} if name == "Transformer" else _module_config(sub, required=name not in ("Normalize", "Dropout"))
        _READERS[name](sub, cfg, b)
    if b.transformer_path is None or b.pooling is None:
        missing = "Transformer" if b.transformer_path is None else "Pooling"
        raise ModelLoadError(f"{_p(modules_file)}: no {missing} module; hfenc needs a transformer and a pooling step")
    head = list(b.head)
    normalize = bool(head) and isinstance(head[-1], NormalizeSpec)
    if normalize:
        head.pop()  # the final normalize is hfenc's own step (after Matryoshka truncation)
    prompts = top.get("prompts") or {}
    if not isinstance(prompts, dict):
        raise ModelLoadError(f"{_p(top_file)}: prompts must be an object")
    prompts = {str(k): "" if v is None else str(v) for k, v in prompts.items()}
    default = top.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise ModelLoadError(f"{_p(top_file)}: default_prompt_name {default!r} is not one of its prompts")
    return STLayout(
        b.transformer_path, True, b.pooling, tuple(b.token_stage), tuple(head), normalize,
        b.max_seq_length, b.do_lower_case, prompts, default, tuple(b.notes),
    )
