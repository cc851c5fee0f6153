"""Tiny SparseEncoder (SPLADE) folders, built offline by sentence-transformers itself (a helper
module for tests/test_sparse_parity.py, not a test module).

Every folder starts from a random tiny ``BertForMaskedLM`` over tests/tiny_models.py's vocabulary
(WORDS + [PAD] [UNK] [CLS] [SEP] [MASK], 2 layers, width 32, 64 positions), is wrapped in
sentence-transformers 6.3 modules (``Transformer(transformer_task="fill-mask")``, ``SpladePooling``,
``SparseStaticEmbedding``, ``Router.for_query_document``) and saved with ``SparseEncoder.save``, so
that the files are exactly what the library writes.  The 5.x layout (``legacy_5x``) only exists in
older releases, so it is an ST-saved folder rewritten by hand; tests/test_sparse_parity.py checks that
sentence-transformers 6.3 still loads it and gives the numbers of the folder it came from.

A random MLM head's bias is 0, which leaves 77 to 111 of the 112 dimensions active for TEXTS: the
bias is drawn from normal(-0.3, 0.3) instead, so that rows are really sparse (24 to 44 active).
Every random tensor is seeded, so a folder is the same on every build.

``SPARSE_LAYOUTS`` maps a name to its builder ``save_<name>(folder) -> folder``;
``SPARSE_REFUSALS`` maps a name to (builder, words the hfenc error must contain) for folders
hfenc must refuse.  ``st_reference(folder, texts, side)`` is sentence-transformers' output as a
dense float32 array.  The session fixture ``sparse_models`` builds each folder once (on first use)
under a tmp_path_factory directory; a test module uses it with ``from sparse_models import
sparse_models`` (tests/ is on sys.path, as for tiny_models and st_layouts).

Run ``python tests/sparse_models.py`` to build every folder and print what sentence-transformers
makes of it (timings, active dimensions, pruning margins).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import tiny_models  # noqa: E402

MAX_SEQ_LENGTH = tiny_models.MAX_LEN  # 64: the tokenizer's model_max_length and the MLM's positions
PRUNE_K = 8  # max_active_dims of splade_pruned, and the per-call K of the pruning tests
MLM_SEED = 0  # the MLM of every symmetric folder (so legacy_5x has splade_max's weights)
PROMPTS = {"query": "query: ", "document": "passage: "}  # "query", "passage" and ":" are [UNK]
# Prompts made of words of WORDS: query and document prompts tokenize differently (PROMPTS do not:
# both are [UNK] [UNK]), and default_prompt_name makes plain encode() use the query prompt.
WORD_PROMPTS = {"query": "find the answer to this question ", "document": "read this text "}
QUERY_MAX_LENGTH = 48  # inference_free's query tokenizer (its own folder): shorter than the document side's
N_SPECIAL = 5  # [PAD] [UNK] [CLS] [SEP] [MASK] are ids 0..4 of make_tokenizer("bert")

# Type strings written by sentence-transformers 5.x (still loaded by 6.3 through its deprecated-import map).
LEGACY_TYPES = {
    "Transformer": "sentence_transformers.sparse_encoder.models.MLMTransformer",
    "SpladePooling": "sentence_transformers.sparse_encoder.models.SpladePooling",
}
SPARSE_AUTO_ENCODER = "sentence_transformers.sparse_encoder.modules.sparse_auto_encoder.SparseAutoEncoder"


def _texts() -> list[str]:
    rng = random.Random(11)

    def sentence(n: int, mixed: bool = False) -> str:
        words = [rng.choice(tiny_models.WORDS) for _ in range(n)]
        if mixed:
            words = [w.upper() if i % 5 == 0 else w.capitalize() if i % 3 == 0 else w
                     for i, w in enumerate(words)]
        return " ".join(words)

    return [
        "",
        "hello",
        "Hello World",
        "the cat the cat the cat the cat",  # repeated words (SparseStaticEmbedding: presence, no counts)
        "dog dog dog dog dog dog dog dog dog dog",
        "The BIG Red Dog and a Small cat read a long book at night",
        "hello, world! is this a test? queries, passages & documents",  # [UNK] tokens
        sentence(12),
        sentence(61),  # 63 tokens with [CLS]/[SEP]: just fits
        sentence(62),  # 64 tokens: exactly the limit
        sentence(63, mixed=True),  # 65 tokens: truncated by one on the SPLADE side, not the static side
        sentence(90),  # these two are truncated on both sides
        sentence(150, mixed=True),
        "a",
    ]


TEXTS: list[str] = _texts()


# ---- building blocks ----------------------------------------------------------------------------

def save_tiny_mlm(directory: Path, seed: int = MLM_SEED) -> Path:
    """A 2-layer width-32 BertForMaskedLM (architectures ["BertForMaskedLM"]) + WordLevel tokenizer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_models.tiny_config("bert")  # vocab_size == len(tokenizer), 64 positions
    torch.manual_seed(seed)
    mlm = transformers.BertForMaskedLM(config)
    with torch.no_grad():  # a random init leaves the bias at 0 (nearly all of the vocabulary active)
        mlm.cls.predictions.bias.normal_(-0.3, 0.3)
    mlm.save_pretrained(directory)  # the decoder weight is tied to the word embeddings: not stored
    tiny_models.make_tokenizer("bert").save_pretrained(directory)
    return directory


def _fill_mask(mlm_dir: Path):
    from sentence_transformers.sparse_encoder.modules import Transformer

    return Transformer(str(mlm_dir), transformer_task="fill-mask", model_kwargs={"dtype": torch.float32})


def _save_splade(folder: Path, *, strategy: str = "max", activation: str = "relu", with_dim: bool = True,
                 prompts: dict[str, str] | None = None, default_prompt_name: str | None = None,
                 max_active_dims: int | None = None, extra_modules: Callable[[int], list] | None = None) -> Path:
    """Transformer(fill-mask) + SpladePooling (+ `extra_modules(vocab)`), saved by SparseEncoder.save."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        transformer = _fill_mask(save_tiny_mlm(Path(tmp) / "mlm"))
        vocab = transformer.model.config.vocab_size
        pool = SpladePooling(pooling_strategy=strategy, activation_function=activation,
                             embedding_dimension=vocab if with_dim else None)  # None: saved as null
        modules = [transformer, pool, *(extra_modules(vocab) if extra_modules else [])]
        model = SparseEncoder(modules=modules, device="cpu", similarity_fn_name="dot",
                              prompts=prompts, default_prompt_name=default_prompt_name,
                              max_active_dims=max_active_dims)
        model.save(str(folder), create_model_card=False)
    return folder


def _read(path: Path) -> dict | list:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, value: dict | list) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


# ---- the layouts --------------------------------------------------------------------------------

def save_splade_max(folder: Path) -> Path:
    """Max pooling, relu (SPLADE v2/v3), embedding_dimension saved."""
    return _save_splade(folder)


def save_splade_sum(folder: Path) -> Path:
    """Sum pooling, relu (the original SPLADE)."""
    return _save_splade(folder, strategy="sum")


def save_splade_log1p(folder: Path) -> Path:
    """Max pooling, activation_function="log1p_relu" (log1p applied twice, OpenSearch models)."""
    return _save_splade(folder, activation="log1p_relu")


def save_splade_pruned(folder: Path) -> Path:
    """Max pooling with max_active_dims=PRUNE_K in config_sentence_transformers.json."""
    return _save_splade(folder, max_active_dims=PRUNE_K)


def save_splade_prompts(folder: Path) -> Path:
    """Query and document prompts (their words are [UNK] in the tiny vocabulary)."""
    return _save_splade(folder, prompts=dict(PROMPTS))


def save_splade_word_prompts(folder: Path) -> Path:
    """Word prompts (different tokens for query and document), default_prompt_name "query"."""
    return _save_splade(folder, prompts=dict(WORD_PROMPTS), default_prompt_name="query")


def save_splade_null_dim(folder: Path) -> Path:
    """SpladePooling's embedding_dimension saved as null (it means the vocabulary size)."""
    folder = _save_splade(folder, with_dim=False)
    assert _read(folder / "1_SpladePooling" / "config.json")["embedding_dimension"] is None
    return folder


def save_inference_free(folder: Path) -> Path:
    """Router.for_query_document: SparseStaticEmbedding on the query side (seeded distinct weights,
    0 on the special tokens; its tokenizer truncates at QUERY_MAX_LENGTH tokens, no special tokens),
    Transformer(fill-mask) + SpladePooling max on the document side (another seed's MLM)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import Router, SparseStaticEmbedding, SpladePooling

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        document = _fill_mask(save_tiny_mlm(Path(tmp) / "mlm", seed=MLM_SEED + 1))
        tokenizer = tiny_models.make_tokenizer("bert")  # its own object, as after a reload
        tokenizer.model_max_length = QUERY_MAX_LENGTH  # so only the query folder's own tokenizer fits
        vocab = len(tokenizer.get_vocab())
        assert vocab == document.model.config.vocab_size
        g = torch.Generator().manual_seed(1)
        weight = torch.rand(vocab, generator=g) * 3 + 0.01  # distinct float32 values: no top-k ties
        weight[:N_SPECIAL] = 0.0
        query = SparseStaticEmbedding(tokenizer=tokenizer, weight=weight, frozen=True)
        pool = SpladePooling("max", activation_function="relu", embedding_dimension=vocab)
        router = Router.for_query_document(query_modules=[query], document_modules=[document, pool])
        model = SparseEncoder(modules=[router], device="cpu", similarity_fn_name="dot")
        model.save(str(folder), create_model_card=False)
    return folder


def save_legacy_5x(folder: Path) -> Path:
    """splade_max rewritten to the 5.x format: MLMTransformer / models.SpladePooling types,
    sentence_bert_config.json {"max_seq_length": 64, "do_lower_case": false} and
    word_embedding_dimension."""
    folder = save_splade_max(folder)
    modules = _read(folder / "modules.json")
    for entry in modules:
        entry["type"] = LEGACY_TYPES[entry["type"].rsplit(".", 1)[-1]]
    _write(folder / "modules.json", modules)
    _write(folder / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    pool_file = folder / "1_SpladePooling" / "config.json"
    pool = _read(pool_file)
    pool["word_embedding_dimension"] = pool.pop("embedding_dimension")
    _write(pool_file, pool)
    top_file = folder / "config_sentence_transformers.json"
    top = _read(top_file)
    top["__version__"]["sentence_transformers"] = "5.1.0"
    _write(top_file, top)
    return folder


SPARSE_LAYOUTS: dict[str, Callable[[Path], Path]] = {
    "splade_max": save_splade_max,
    "splade_sum": save_splade_sum,
    "splade_log1p": save_splade_log1p,
    "splade_pruned": save_splade_pruned,
    "splade_prompts": save_splade_prompts,
    "splade_word_prompts": save_splade_word_prompts,
    "splade_null_dim": save_splade_null_dim,
    "inference_free": save_inference_free,
    "legacy_5x": save_legacy_5x,
}
ASYMMETRIC = ("inference_free",)  # Router models: compared on the "query" and "document" sides only


def sides(name: str) -> tuple[str | None, ...]:
    """The sides to compare for layout `name`: None (plain encode), "query", "document"."""
    return ("query", "document") if name in ASYMMETRIC else (None, "query", "document")


# ---- folders hfenc must refuse ------------------------------------------------------------------

def save_sparse_auto_encoder(folder: Path) -> Path:
    """splade_max followed by a (seeded, random) SparseAutoEncoder: a module hfenc does not implement.
    sentence-transformers loads and runs it (top-k of a random projection)."""
    from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder

    def extra(vocab: int) -> list:
        torch.manual_seed(2)
        return [SparseAutoEncoder(input_dim=vocab, hidden_dim=64, k=8, k_aux=16)]

    return _save_splade(folder, extra_modules=extra)


def save_pooling_unknown_key(folder: Path) -> Path:
    """splade_max whose 1_SpladePooling/config.json has an unknown key "foo" (SpladePooling.__init__
    raises TypeError on it in sentence-transformers)."""
    folder = save_splade_max(folder)
    pool_file = folder / "1_SpladePooling" / "config.json"
    _write(pool_file, {**_read(pool_file), "foo": 1})
    return folder


# name -> (builder, strings the hfenc ModelLoadError message must contain)
SPARSE_REFUSALS: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "sparse_auto_encoder": (save_sparse_auto_encoder, ("SparseAutoEncoder",)),
    "pooling_unknown_key": (save_pooling_unknown_key, ("SpladePooling", "foo")),
}


# ---- the reference ------------------------------------------------------------------------------

_ST_MODELS: dict[str, object] = {}
_ST_LOCK = threading.Lock()


def load_st(folder: Path):
    """SparseEncoder loaded from `folder` in float32 on the CPU, offline; one per folder per process."""
    from sentence_transformers import SparseEncoder

    key = str(Path(folder).resolve())
    with _ST_LOCK:
        if key not in _ST_MODELS:
            _ST_MODELS[key] = SparseEncoder(str(folder), device="cpu", local_files_only=True,
                                            model_kwargs={"dtype": torch.float32})
        return _ST_MODELS[key]


def st_reference(folder: Path, texts: list[str], side: str | None, *, max_active_dims: int | None = None,
                 batch_size: int = 4) -> np.ndarray:
    """sentence-transformers' rows for `texts`, dense float32 (n, V): side None -> encode(),
    "query" -> encode_query(), "document" -> encode_document().  `batch_size` 4 makes several padded
    batches (ST sorts by length first)."""
    model = load_st(folder)
    encode = {None: model.encode, "query": model.encode_query, "document": model.encode_document}[side]
    out = encode(list(texts), batch_size=batch_size, convert_to_tensor=True, convert_to_sparse_tensor=False,
                 max_active_dims=max_active_dims, show_progress_bar=False)
    if out.is_sparse:
        out = out.to_dense()
    return out.detach().float().cpu().numpy()


# ---- the fixture --------------------------------------------------------------------------------

class SparseFolders:
    """`folders[name]` -> the folder of layout or refusal `name`, built once, on first use."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._built: dict[str, Path] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Path:
        with self._lock:
            if name not in self._built:
                build = SPARSE_LAYOUTS[name] if name in SPARSE_LAYOUTS else SPARSE_REFUSALS[name][0]
                self._built[name] = build(self.root / name)
            return self._built[name]

    def build_all(self) -> dict[str, Path]:
        return {name: self[name] for name in [*SPARSE_LAYOUTS, *SPARSE_REFUSALS]}


@pytest.fixture(scope="session")
def sparse_models(tmp_path_factory: pytest.TempPathFactory) -> SparseFolders:
    """The tiny SparseEncoder folders (SPARSE_LAYOUTS and SPARSE_REFUSALS), each built once per session."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" / "Loading weights"
    return SparseFolders(tmp_path_factory.mktemp("sparse_models"))


# ---- self-check ---------------------------------------------------------------------------------

def kth_margin(rows: np.ndarray, k: int) -> float:
    """The smallest gap, over rows with more than k actives, between the k-th and (k+1)-th largest
    |value| (inf when no row has more than k): a pruning with a margin well above the float noise
    keeps the same dimensions whatever the implementation."""
    margin = float("inf")
    for row in np.abs(rows):
        if (row > 0).sum() > k:
            top = np.sort(row)[::-1]
            margin = min(margin, float(top[k - 1] - top[k]))
    return margin


def _self_check() -> None:
    import time

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    tokenizer = tiny_models.make_tokenizer("bert")
    lengths = [len(ids) for ids in tokenizer(TEXTS, truncation=False)["input_ids"]]
    print("token lengths with specials:", lengths)
    with tempfile.TemporaryDirectory() as tmp:
        folders = SparseFolders(Path(tmp))
        start = time.perf_counter()
        built = folders.build_all()
        print(f"built {len(built)} folders in {time.perf_counter() - start:.1f}s")
        for name in SPARSE_LAYOUTS:
            for side in sides(name):
                t = time.perf_counter()
                rows = st_reference(built[name], TEXTS, side)
                active = (rows > 0).sum(axis=1)
                print(f"{name:16s} {side!s:9s} {rows.shape} {rows.dtype} actives min/median/max "
                      f"{active.min()}/{int(np.median(active))}/{active.max()} "
                      f"margin@{PRUNE_K} {kth_margin(rows, PRUNE_K):.2e} ({time.perf_counter() - t:.2f}s)")


if __name__ == "__main__":
    _self_check()
