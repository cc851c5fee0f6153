"""Tiny sentence-transformers folders in every layout hfenc claims, built by sentence-transformers
(a helper module for tests/test_st_layouts.py, not a test module).

Each folder starts from a random tiny model of tests/tiny_models.py (2 layers, width 32, vocabulary
WORDS + specials), is wrapped in sentence-transformers 6.2 modules (``Transformer``, ``Pooling``,
``Dense``, ``Normalize``, ...) and saved with ``SentenceTransformer.save``, so that the files are
exactly what the library writes.  Where a layout only exists in older releases (legacy pooling
flags, a ``0_Transformer/`` folder, a Dense config without ``activation_function``), the folder is
written by hand next to an ST-saved one, and tests/test_st_layouts.py checks that
sentence-transformers still loads it and what it makes of it.

``LAYOUTS`` are folders hfenc must embed with sentence-transformers' numbers; ``REFUSALS`` are
folders it must refuse, each with the word its error has to name and what sentence-transformers
itself does with the folder (several load there with a silent substitute, which is why hfenc
refuses them instead of guessing).  ``FolderBuilder(root).get(name)`` builds one folder once.

Trade-offs: the Transformer module of every layout is limited to ``MAX_SEQ_LENGTH`` (24) tokens so
that ``TEXTS`` has truncated rows, and random weights mean that only the pipeline is tested, not
any trained behaviour.  Every random module is seeded, so a folder is the same on every build.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import tiny_models  # noqa: E402

MAX_SEQ_LENGTH = 24  # the Transformer module's max_seq_length in every layout
WIDTH = tiny_models.HIDDEN
# A prompt made of words of WORDS, so that it is several real tokens in every tiny vocabulary.
WORD_PROMPT = "find the answer to this question "

# Real model prompts (their words mostly fall outside WORDS: unknown or byte-level tokens).
E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
RETRIEVAL_QUERY = {"query": "Represent this sentence for searching relevant passages: "}
NOMIC_PROMPTS = {"query": "search_query: ", "document": "search_document: "}
QWEN3_PROMPTS = {"query": "Instruct: Given a web search query, retrieve relevant passages\nQuery:"}
GEMMA_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: ",
                 "Classification": "task: classification | query: "}


def _texts() -> list[str]:
    rng = random.Random(7)

    def sentence(n: int, mixed: bool) -> str:
        words = [rng.choice(tiny_models.WORDS) for _ in range(n)]
        if mixed:
            words = [w.upper() if i % 5 == 0 else w.capitalize() if i % 3 == 0 else w
                     for i, w in enumerate(words)]
        return " ".join(words)

    return [
        "",
        "hello",
        "Hello World",
        "the cat is on the road",
        "The BIG Red Dog and a Small cat",
        "i think you know the answer to this question",
        "hello, world! is this a test?",  # punctuation: unknown or byte-level tokens
        "a",
        sentence(40, mixed=False),  # these three are longer than MAX_SEQ_LENGTH tokens
        sentence(60, mixed=True),
        sentence(33, mixed=True),
        "Good Night",
    ]


TEXTS: list[str] = _texts()


# ---- registries ---------------------------------------------------------------------------------

Build = Callable[[Path, "FolderBuilder"], None]


@dataclass(frozen=True)
class Layout:
    """A folder hfenc must embed exactly as sentence-transformers does."""

    name: str
    build: Build
    doc: str
    truncate_dim: int | None = None  # a Matryoshka truncation to check as well


@dataclass(frozen=True)
class Refusal:
    """A folder hfenc must refuse, naming `needle`; `st_error`: the exception sentence-transformers
    6.2 raises when loading or encoding with it, or None where it loads and encodes (with what, in
    `doc`)."""

    name: str
    build: Build
    doc: str
    needle: str
    st_error: str | None


LAYOUTS: dict[str, Layout] = {}
REFUSALS: dict[str, Refusal] = {}


def _doc(fn: Callable) -> str:
    return (fn.__doc__ or "").strip().splitlines()[0]


def layout(name: str, *, truncate_dim: int | None = None) -> Callable[[Build], Build]:
    def register(fn: Build) -> Build:
        assert name not in LAYOUTS and name not in REFUSALS, name
        LAYOUTS[name] = Layout(name, fn, _doc(fn), truncate_dim)
        return fn

    return register


def refusal(name: str, *, needle: str, st_error: str | None) -> Callable[[Build], Build]:
    def register(fn: Build) -> Build:
        assert name not in LAYOUTS and name not in REFUSALS, name
        REFUSALS[name] = Refusal(name, fn, _doc(fn), needle, st_error)
        return fn

    return register


# ---- building -----------------------------------------------------------------------------------

class FolderBuilder:
    """Builds each tiny base model and each layout folder once, under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._folders: dict[str, Path] = {}

    def base(self, model_type: str, *, config: dict[str, Any] | None = None, cased: bool = False) -> Path:
        """The tiny HF model of `model_type`; `config` overrides config.json keys and `cased`
        drops the tokenizer's lowercasing (a copy per variant)."""
        plain = self.root / "_base" / model_type
        if not (plain / "config.json").is_file():
            tiny_models.save_tiny_model(model_type, plain)
        if not config and not cased:
            return plain
        tag = "-".join([*(f"{k}={v}" for k, v in sorted((config or {}).items())), *(["cased"] if cased else [])])
        folder = self.root / "_base" / f"{model_type}-{tag}"
        if not folder.is_dir():
            shutil.copytree(plain, folder)
            if config:
                _edit_json(folder / "config.json", lambda c: c.update(config))
            if cased:
                _edit_json(folder / "tokenizer.json", lambda t: t.update(normalizer=None))
        return folder

    def get(self, name: str) -> Path:
        """The folder of layout or refusal `name`, built on first use."""
        if name not in self._folders:
            entry = LAYOUTS.get(name) or REFUSALS.get(name)
            if entry is None:
                raise LookupError(f"unknown layout {name!r}; known: {', '.join([*LAYOUTS, *REFUSALS])}")
            folder = self.root / name / "model"
            if folder.exists():
                shutil.rmtree(folder)
            folder.parent.mkdir(parents=True, exist_ok=True)
            entry.build(folder, self)
            self._folders[name] = folder
        return self._folders[name]


def _edit_json(path: Path, change: Callable[[Any], object]) -> None:
    """Rewrite a JSON file after `change` has modified its content in place."""
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _st():
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    return SentenceTransformer, modules


def transformer(b: FolderBuilder, model_type: str = "bert", *, padding_side: str | None = None,
                config: dict[str, Any] | None = None, cased: bool = False):
    _, m = _st()
    # padding_side goes through the tokenizer's init kwargs: transformers 5 saves only those, so
    # `t.tokenizer.padding_side = "left"` after loading would be lost on save.
    kwargs = {"processor_kwargs": {"padding_side": padding_side}} if padding_side else {}
    return m.Transformer(str(b.base(model_type, config=config, cased=cased)), max_seq_length=MAX_SEQ_LENGTH,
                         **kwargs)


def pooling(mode: str | tuple[str, ...], dim: int = WIDTH, **kwargs: Any):
    return _st()[1].Pooling(dim, mode, **kwargs)


def dense(in_features: int, out_features: int, seed: int, **kwargs: Any):
    torch.manual_seed(seed)
    return _st()[1].Dense(in_features, out_features, **kwargs)


def normalize():
    return _st()[1].Normalize()


def save(folder: Path, modules: list, prompts: dict[str, str] | None = None,
         default_prompt_name: str | None = None) -> None:
    SentenceTransformer, _ = _st()
    model = SentenceTransformer(modules=modules, prompts=prompts, default_prompt_name=default_prompt_name,
                                device="cpu")
    model.save(str(folder), create_model_card=False)


def module_path(folder: Path, class_name: str, occurrence: int = 0) -> Path:
    """The folder of the `occurrence`-th module of type `class_name` in modules.json."""
    entries = json.loads((folder / "modules.json").read_text())
    paths = [e["path"] for e in entries if e["type"].rsplit(".", 1)[-1] == class_name]
    return folder / paths[occurrence]


def identity() -> torch.nn.Module:
    return torch.nn.Identity()


# ---- layouts of published models (tiny versions) -----------------------------------------------

@layout("bge")
def _bge(folder: Path, b: FolderBuilder) -> None:
    """BAAI/bge-*: BERT, CLS pooling, Normalize."""
    save(folder, [transformer(b), pooling("cls"), normalize()])


@layout("e5")
def _e5(folder: Path, b: FolderBuilder) -> None:
    """intfloat/e5-*: BERT, mean pooling, Normalize, "query: " / "passage: " prompts."""
    save(folder, [transformer(b), pooling("mean"), normalize()], prompts=E5_PROMPTS)


@layout("gte")
def _gte(folder: Path, b: FolderBuilder) -> None:
    """thenlper/gte-*: BERT, mean pooling, Normalize."""
    save(folder, [transformer(b), pooling("mean"), normalize()])


@layout("mxbai", truncate_dim=16)
def _mxbai(folder: Path, b: FolderBuilder) -> None:
    """mixedbread-ai/mxbai-embed-large-v1: BERT, CLS pooling, no Normalize, a query prompt (Matryoshka)."""
    save(folder, [transformer(b), pooling("cls")], prompts=RETRIEVAL_QUERY)


@layout("arctic", truncate_dim=16)
def _arctic(folder: Path, b: FolderBuilder) -> None:
    """Snowflake/snowflake-arctic-embed-m: BERT, CLS, Normalize, a query prompt, no default prompt."""
    save(folder, [transformer(b), pooling("cls"), normalize()], prompts=RETRIEVAL_QUERY, default_prompt_name=None)


@layout("nomic", truncate_dim=16)
def _nomic(folder: Path, b: FolderBuilder) -> None:
    """nomic-ai/modernbert-embed-base: ModernBERT, mean, Normalize, search_query/search_document prompts."""
    save(folder, [transformer(b, "modernbert"), pooling("mean"), normalize()], prompts=NOMIC_PROMPTS)


@layout("qwen3", truncate_dim=16)
def _qwen3(folder: Path, b: FolderBuilder) -> None:
    """Qwen/Qwen3-Embedding: Qwen3 decoder, last-token pooling, Normalize, left padding, instruct prompt."""
    save(folder, [transformer(b, "qwen3", padding_side="left"), pooling("lasttoken"), normalize()],
         prompts=QWEN3_PROMPTS)


def _gemma_modules(b: FolderBuilder) -> list:
    return [transformer(b, "gemma3_text"), pooling("mean"),
            dense(WIDTH, 2 * WIDTH, seed=11, bias=False, activation_function=identity()),
            dense(2 * WIDTH, WIDTH, seed=12, bias=False, activation_function=identity()),
            normalize()]


@layout("embeddinggemma", truncate_dim=16)
def _embeddinggemma(folder: Path, b: FolderBuilder) -> None:
    """google/embeddinggemma-300m: bidirectional Gemma 3, mean, Dense 32->64->32 (Identity), Normalize."""
    save(folder, _gemma_modules(b), prompts=GEMMA_PROMPTS)


@layout("embeddinggemma_default_prompt")
def _embeddinggemma_default(folder: Path, b: FolderBuilder) -> None:
    """EmbeddingGemma with default_prompt_name "query": the query prompt applies when none is given."""
    save(folder, _gemma_modules(b), prompts=GEMMA_PROMPTS, default_prompt_name="query")


@layout("sentence_t5")
def _sentence_t5(folder: Path, b: FolderBuilder) -> None:
    """sentence-transformers/sentence-t5 and gtr-t5: T5 encoder, mean, Dense 32->32 without bias, Normalize."""
    save(folder, [transformer(b, "t5"), pooling("mean"),
                  dense(WIDTH, WIDTH, seed=13, bias=False, activation_function=identity()), normalize()])


@layout("default_prompt")
def _default_prompt(folder: Path, b: FolderBuilder) -> None:
    """BERT, mean, Normalize, e5 prompts with default_prompt_name "query"."""
    save(folder, [transformer(b), pooling("mean"), normalize()], prompts=E5_PROMPTS, default_prompt_name="query")


# ---- every pooling mode, alone and concatenated (no Normalize: it would hide a scale error) ----

POOLING_MODES: tuple[str, ...] = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
POOLING_CONCATS: tuple[tuple[str, ...], ...] = (("cls", "mean", "max"), ("mean", "lasttoken"))


def _register_pooling(modes: str | tuple[str, ...]) -> None:
    name = "pool_" + (modes if isinstance(modes, str) else "_".join(modes))

    def build(folder: Path, b: FolderBuilder) -> None:
        save(folder, [transformer(b), pooling(modes)])

    build.__doc__ = f"BERT, Pooling {modes!r}, nothing after it."
    layout(name)(build)


for _modes in (*POOLING_MODES, *POOLING_CONCATS):
    _register_pooling(_modes)


# ---- include_prompt=False: the prompt's tokens are left out of the pooling ----------------------

def _register_exclude_prompt(mode: str, model_type: str = "bert", padding_side: str | None = None) -> None:
    name = f"exclude_prompt_{mode}" + ("" if model_type == "bert" else f"_{model_type}")

    def build(folder: Path, b: FolderBuilder) -> None:
        save(folder, [transformer(b, model_type, padding_side=padding_side),
                      pooling(mode, include_prompt=False)], prompts={"query": WORD_PROMPT})

    build.__doc__ = (f"{model_type}, Pooling {mode!r} with include_prompt=False"
                     + (f", {padding_side} padding" if padding_side else "") + ", a query prompt.")
    layout(name)(build)


for _mode in ("mean", "weightedmean", "cls"):
    _register_exclude_prompt(_mode)
# Left padding: ST shifts the weighted-mean positions by each row's padding and drops pad + prompt.
_register_exclude_prompt("weightedmean", "qwen3", padding_side="left")


# ---- legacy configs written by older sentence-transformers -------------------------------------

_LEGACY_FLAGS = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                 "pooling_mode_mean_sqrt_len_tokens")


def _legacy_pooling(true_flags: tuple[str, ...], extra_flags: tuple[str, ...] = ()) -> dict[str, Any]:
    # Flags in the order the config lists them; ST concatenates in its own fixed order instead.
    config: dict[str, Any] = {"word_embedding_dimension": WIDTH}
    for flag in (*true_flags, *_LEGACY_FLAGS, *extra_flags):
        config.setdefault(flag, flag in true_flags)
    return config


def _register_legacy(name: str, doc: str, config: dict[str, Any]) -> None:
    def build(folder: Path, b: FolderBuilder) -> None:
        save(folder, [transformer(b), pooling("mean")])
        _write_json(module_path(folder, "Pooling") / "config.json", config)

    build.__doc__ = doc
    layout(name)(build)


_register_legacy("legacy_pool_mean", "BERT, legacy 1_Pooling/config.json: pooling_mode_mean_tokens true.",
                 _legacy_pooling(("pooling_mode_mean_tokens",)))
_register_legacy("legacy_pool_lasttoken", "BERT, legacy pooling config with pooling_mode_lasttoken true.",
                 _legacy_pooling(("pooling_mode_lasttoken",), ("pooling_mode_weightedmean_tokens",)))
_register_legacy("legacy_pool_all_false", "BERT, legacy pooling config with every flag false (ST: mean).",
                 _legacy_pooling(()))
_register_legacy("legacy_pool_mean_cls",
                 "BERT, legacy config: mean and cls true, mean listed first (ST concatenates cls, mean).",
                 _legacy_pooling(("pooling_mode_mean_tokens", "pooling_mode_cls_token")))


def _register_old_folder(name: str, do_lower_case: bool) -> None:
    def build(folder: Path, b: FolderBuilder) -> None:
        # sentence-transformers 0.x-2.x: the transformer in its own 0_Transformer/ folder, old class
        # paths, a legacy pooling config, no config.json at the root, no 2_Normalize/ folder.
        shutil.copytree(b.base("bert", cased=True), folder / "0_Transformer")
        _write_json(folder / "0_Transformer" / "sentence_bert_config.json",
                    {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": do_lower_case})
        _write_json(folder / "1_Pooling" / "config.json", _legacy_pooling(("pooling_mode_mean_tokens",)))
        _write_json(folder / "modules.json", [
            {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ])
        _write_json(folder / "config_sentence_transformers.json",
                    {"__version__": {"sentence_transformers": "2.0.0", "transformers": "4.6.1", "pytorch": "1.8.1"}})

    build.__doc__ = (f"Old 0_Transformer/ layout, cased tokenizer, sentence_bert_config do_lower_case "
                     f"{str(do_lower_case).lower()}, max_seq_length {MAX_SEQ_LENGTH}, legacy mean pooling.")
    layout(name)(build)


_register_old_folder("legacy_0_transformer", do_lower_case=True)
_register_old_folder("legacy_0_transformer_cased", do_lower_case=False)


# ---- modules after the pooling ------------------------------------------------------------------

@layout("dense_tanh")
def _dense_tanh(folder: Path, b: FolderBuilder) -> None:
    """BERT, mean, Dense 32->16 with ST's default activation (Tanh), saved by ST."""
    save(folder, [transformer(b), pooling("mean"), dense(WIDTH, 16, seed=21)])


@layout("dense_default_tanh")
def _dense_default_tanh(folder: Path, b: FolderBuilder) -> None:
    """dense_tanh with "activation_function" removed from the Dense config (ST then uses Tanh)."""
    _dense_tanh(folder, b)
    _edit_json(module_path(folder, "Dense") / "config.json", lambda c: c.pop("activation_function"))


@layout("dense_residual_same")
def _dense_residual_same(folder: Path, b: FolderBuilder) -> None:
    """BERT, mean, Dense 32->32 (Tanh) with use_residual=True: out = tanh(Wx + b) + x."""
    save(folder, [transformer(b), pooling("mean"), dense(WIDTH, WIDTH, seed=22, use_residual=True)])


@layout("dense_residual_proj")
def _dense_residual_proj(folder: Path, b: FolderBuilder) -> None:
    """BERT, mean, Dense 32->16 (Tanh) with use_residual=True: out = tanh(Wx + b) + R x."""
    save(folder, [transformer(b), pooling("mean"), dense(WIDTH, 16, seed=23, use_residual=True)])


@layout("layer_norm")
def _layer_norm(folder: Path, b: FolderBuilder) -> None:
    """BERT, mean, LayerNorm(32) with random weight and bias, Normalize."""
    _, m = _st()
    torch.manual_seed(24)
    norm = m.LayerNorm(WIDTH)
    with torch.no_grad():
        norm.norm.weight.normal_(1.0, 0.5)
        norm.norm.bias.normal_(0.0, 0.5)
    save(folder, [transformer(b), pooling("mean"), norm, normalize()])


def _weighted_layer_pooling(folder: Path, b: FolderBuilder, hidden_states: bool) -> None:
    _, m = _st()
    config = {"output_hidden_states": True} if hidden_states else None
    # hidden_states = (embeddings, layer 1, layer 2); layer_start=0 weights all three, unevenly.
    weights = torch.nn.Parameter(torch.tensor([2.0, 0.5, 1.0]))
    wlp = m.WeightedLayerPooling(WIDTH, num_hidden_layers=tiny_models.LAYERS, layer_start=0, layer_weights=weights)
    save(folder, [transformer(b, config=config), wlp, pooling("mean")])


@layout("weighted_layer_pooling")
def _wlp(folder: Path, b: FolderBuilder) -> None:
    """BERT with output_hidden_states=True, WeightedLayerPooling (all 3 hidden states, weights 2, .5, 1), mean."""
    _weighted_layer_pooling(folder, b, hidden_states=True)


@layout("weighted_layer_pooling_inactive")
def _wlp_inactive(folder: Path, b: FolderBuilder) -> None:
    """WeightedLayerPooling on a config without output_hidden_states: ST passes the last layer through."""
    _weighted_layer_pooling(folder, b, hidden_states=False)


# ---- folders hfenc must refuse ------------------------------------------------------------------

@refusal("cnn", needle="CNN", st_error=None)
def _cnn(folder: Path, b: FolderBuilder) -> None:
    """BERT, CNN, mean pooling over the CNN's channels."""
    _, m = _st()
    torch.manual_seed(31)
    cnn = m.CNN(WIDTH, out_channels=8, kernel_sizes=[1, 3])
    save(folder, [transformer(b), cnn, pooling("mean", dim=cnn.get_embedding_dimension())])


@refusal("lstm", needle="LSTM", st_error="KeyError")
def _lstm(folder: Path, b: FolderBuilder) -> None:
    """BERT, bidirectional LSTM, mean pooling (ST loads it; encode fails: the LSTM wants the
    "sentence_lengths" that only WordEmbeddings provides)."""
    _, m = _st()
    torch.manual_seed(32)
    lstm = m.LSTM(WIDTH, hidden_dim=8)
    save(folder, [transformer(b), lstm, pooling("mean", dim=lstm.get_embedding_dimension())])


@refusal("bow", needle="BoW", st_error=None)
def _bow(folder: Path, b: FolderBuilder) -> None:
    """A bag-of-words model: BoW over WORDS, no transformer at all."""
    _, m = _st()
    save(folder, [m.BoW(vocab=list(tiny_models.WORDS))])


@refusal("word_embeddings", needle="WordEmbeddings", st_error=None)
def _word_embeddings(folder: Path, b: FolderBuilder) -> None:
    """GloVe-style: WordEmbeddings over WORDS with a whitespace tokenizer, mean pooling."""
    from sentence_transformers.sentence_transformer.modules.tokenizer import WhitespaceTokenizer

    _, m = _st()
    torch.manual_seed(33)
    weights = torch.randn(len(tiny_models.WORDS) + 1, WIDTH).numpy()
    words = m.WordEmbeddings(WhitespaceTokenizer(list(tiny_models.WORDS)), weights)
    save(folder, [words, pooling("mean")])


@refusal("foreign_module", needle="my_package.MyModule", st_error="ValueError")
def _foreign_module(folder: Path, b: FolderBuilder) -> None:
    """bge plus a module of type "my_package.MyModule" (ST: needs trust_remote_code=True)."""
    _bge(folder, b)
    _write_json(folder / "3_MyModule" / "config.json", {})
    _edit_json(folder / "modules.json", lambda e: e.append(
        {"idx": len(e), "name": str(len(e)), "path": "3_MyModule", "type": "my_package.MyModule"}))


def _legacy_folder_with(folder: Path, b: FolderBuilder, pooling_config: dict[str, Any]) -> None:
    save(folder, [transformer(b), pooling("mean")])
    _write_json(module_path(folder, "Pooling") / "config.json", pooling_config)


@refusal("pooling_unknown_mode", needle="pooling_mode_foo", st_error="TypeError")
def _pooling_unknown_mode(folder: Path, b: FolderBuilder) -> None:
    """A legacy pooling config with an extra "pooling_mode_foo": true (ST: TypeError)."""
    _legacy_folder_with(folder, b, {**_legacy_pooling(("pooling_mode_mean_tokens",)), "pooling_mode_foo": True})


@refusal("pooling_unknown_key", needle="foo", st_error="TypeError")
def _pooling_unknown_key(folder: Path, b: FolderBuilder) -> None:
    """A pooling config with an unknown key "foo": 1 (ST: TypeError)."""
    _legacy_folder_with(folder, b, {"embedding_dimension": WIDTH, "pooling_mode": "mean",
                                    "include_prompt": True, "foo": 1})


@refusal("dense_unknown_activation", needle="my_pkg.Act", st_error=None)
def _dense_unknown_activation(folder: Path, b: FolderBuilder) -> None:
    """dense_tanh with activation "my_pkg.Act" (ST: not trusted, warns and falls back to Tanh)."""
    _dense_tanh(folder, b)
    _edit_json(module_path(folder, "Dense") / "config.json", lambda c: c.update(activation_function="my_pkg.Act"))


@refusal("sparse_encoder", needle="SparseAutoEncoder", st_error=None)
def _sparse_encoder(folder: Path, b: FolderBuilder) -> None:
    """A CSR SparseEncoder (Transformer + Pooling + SparseAutoEncoder), saved by SparseEncoder: hfenc
    reads SPLADE SparseEncoders (tests/test_sparse_parity.py) but not this module (ST: loads it as a
    SentenceTransformer by replacing its modules with Transformer + mean pooling)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder

    _, m = _st()
    torch.manual_seed(34)
    transformer = m.Transformer(str(b.base("bert")), max_seq_length=MAX_SEQ_LENGTH)
    width = transformer.get_embedding_dimension() if hasattr(transformer, "get_embedding_dimension") \
        else transformer.get_word_embedding_dimension()
    SparseEncoder(modules=[transformer, m.Pooling(width, "mean"), SparseAutoEncoder(width, 4 * width, k=8)],
                  device="cpu").save(str(folder), create_model_card=False)
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert config["model_type"] == "SparseEncoder", config


@refusal("path_escape", needle="../x", st_error="ValueError")
def _path_escape(folder: Path, b: FolderBuilder) -> None:
    """bge whose modules.json sends the Pooling module to "../x", a real folder outside the model."""
    _bge(folder, b)
    shutil.copytree(module_path(folder, "Pooling"), folder.parent / "x")

    def escape(entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            if entry["type"].endswith(".Pooling"):
                entry["path"] = "../x"

    _edit_json(folder / "modules.json", escape)
