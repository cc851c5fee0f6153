"""Tiny random Hugging Face models for tests (a helper module, not a test module).

``save_tiny_model(model_type, directory)`` writes config.json, model.safetensors and
the tokenizer files of a ~tens-of-KB random model, so that tests exercise the normal
offline ``from_pretrained`` path.  Nothing is downloaded: the tokenizer is a
lowercasing ``tokenizers`` WordLevel model over ``WORDS`` plus the family's special
tokens (for qwen2/qwen3 a byte-level BPE in which every word of WORDS is one token; for
gemma3_text a Gemma-style "▁" BPE with byte fallback, likewise one token per word).

``EXTRA_MODEL_TYPES`` are families that ``save_tiny_model`` builds but that are kept out of
``MODEL_TYPES`` (which the architecture-table tests compare with hfenc's ARCHS one to one).

Run ``python tests/tiny_models.py`` for a self-check of all families.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import (Regex, Tokenizer, decoders, models, normalizers,  # noqa: E402
                        pre_tokenizers, processors, trainers)

MODEL_TYPES: tuple[str, ...] = (
    "bert", "roberta", "xlm-roberta", "camembert", "distilbert", "mpnet", "electra",
    "deberta-v2", "modernbert", "t5", "mt5", "umt5", "m2m_100",
    "qwen2", "qwen3", "mistral", "llama",
)
# Built on request only (e.g. by tests/st_layouts.py); not part of MODEL_TYPES, see the docstring.
EXTRA_MODEL_TYPES: tuple[str, ...] = ("gemma3_text",)

WORDS: list[str] = """
the a an and or but of to in on at for with from by is are was were be been it this
that these those i you he she we they my your our their hello world good bad new old
big small long short fast slow red blue green black white cat dog bird fish tree house
car road city river sea sky sun moon star day night time year man woman child people
book word text sentence question answer language model test data code read write run
walk eat drink see make take give find think know say go come very not all some
""".split()

MAX_LEN = 64  # tokenizer model_max_length and (where applicable) max positions
HIDDEN, LAYERS, HEADS, FFN = 32, 2, 4, 37

# Family groups.
BERT_LIKE = ("bert", "distilbert", "electra", "deberta-v2", "modernbert")
ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert", "mpnet")
T5_LIKE = ("t5", "mt5", "umt5")
DECODERS = ("qwen2", "qwen3", "mistral", "llama")
ENC_DEC = T5_LIKE + ("m2m_100",)
# Families whose models take token_type_ids (the others must not receive them).
WITH_TOKEN_TYPES = ("bert", "electra", "deberta-v2")
LANG_TOKENS = ["eng_Latn", "fra_Latn", "deu_Latn"]  # NLLB-style language codes

# Special tokens per family, in vocabulary order (ids 0, 1, 2, ... as in the real
# vocabularies; for qwen they follow the BPE vocab), used as PreTrainedTokenizerFast kwargs.
_BERT_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                  "sep_token": "[SEP]", "mask_token": "[MASK]"}
_ROBERTA_SPECIALS = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
                     "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>",
                     "mask_token": "<mask>"}
_SPECIALS: dict[str, dict[str, str | None]] = {
    **dict.fromkeys(BERT_LIKE, _BERT_SPECIALS),
    **dict.fromkeys(ROBERTA_LIKE, _ROBERTA_SPECIALS),
    **dict.fromkeys(T5_LIKE, {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}),
    "m2m_100": {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
                "unk_token": "<unk>", "mask_token": "<mask>"},
    **dict.fromkeys(("llama", "mistral"),
                    {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}),
    **dict.fromkeys(("qwen2", "qwen3"),  # Qwen2.5-instruct style; byte-level BPE has no unk
                    {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "unk_token": None}),
    # Gemma 3 / EmbeddingGemma ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4.
    "gemma3_text": {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>",
                    "unk_token": "<unk>", "mask_token": "<mask>"},
}


def _template(model_type: str, sp: dict[str, str]) -> tuple[str, str]:
    """(single, pair) TemplateProcessing strings mimicking the real family."""
    if model_type in BERT_LIKE:
        return "[CLS]:0 $A:0 [SEP]:0", "[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1"
    if model_type in ROBERTA_LIKE:
        return "<s> $A </s>", "<s> $A </s> </s> $B </s>"
    if model_type in T5_LIKE:
        return "$A </s>", "$A </s> $B </s>"
    if model_type == "m2m_100":  # NLLB: source language code first, then EOS
        return "eng_Latn $A </s>", "eng_Latn $A $B </s>"
    if model_type in ("llama", "mistral"):  # BOS as in Llama, plus appended EOS
        return "<s> $A </s>", "<s> $A </s> <s> $B </s>"
    if model_type == "gemma3_text":  # EmbeddingGemma: BOS first, EOS appended
        return "<bos> $A <eos>", "<bos> $A <eos> $B <eos>"
    eos = sp["eos_token"]  # qwen: no BOS, EOS appended
    return f"$A {eos}", f"$A {eos} $B {eos}"


def _word_level(special_list: list[str], unk: str) -> Tokenizer:
    """Lowercasing WordLevel tokenizer: special tokens first, then WORDS."""
    vocab = {tok: i for i, tok in enumerate(special_list + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


# Qwen's pre-tokenizer split pattern (transformers' Qwen2Tokenizer uses the same one).
_QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
               r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def _byte_level_bpe(special_list: list[str]) -> Tokenizer:
    """Qwen-style byte-level BPE whose merges make every word of WORDS (bare, after a
    space, capitalised) one token.  transformers 5 always loads model_type "qwen2" with
    Qwen2Tokenizer, which rebuilds this exact pipeline from vocab + merges and would
    mangle a WordLevel tokenizer.json, so the qwen families cannot use WordLevel."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    corpus = [v for w in WORDS for c in (w, w.capitalize()) for v in (c, " " + c)]
    trainer = trainers.BpeTrainer(vocab_size=10_000, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)  # deterministic (~800 tokens), ~20 ms
    tok.add_special_tokens(special_list)  # like Qwen: special tokens after the BPE vocab
    return tok


def _gemma_tokenizer(special_list: list[str]) -> transformers.PreTrainedTokenizerBase:
    """Gemma-style BPE: spaces become "▁" (no prefix space, no pre-tokenizer split), byte
    fallback through <0x00>..<0xFF>, and merges that make every word of WORDS (bare, after a
    space, capitalised) one token.  transformers 5 loads model_type "gemma3_text" with
    GemmaTokenizer, which rebuilds its own BPE pipeline from tokenizer.json's vocab + merges
    (keeping only the post-processor), so a WordLevel tokenizer.json would be mangled; this
    one is built in exactly that pipeline."""
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.normalizer = normalizers.Replace(" ", "\u2581")
    corpus = [v for w in WORDS for c in (w, w.capitalize()) for v in (c, " " + c)]
    trainer = trainers.BpeTrainer(vocab_size=10_000, min_frequency=1, show_progress=False,
                                  special_tokens=special_list + byte_tokens)
    bpe.train_from_iterator(corpus, trainer)  # deterministic (~870 tokens), words never merge
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    sp = _SPECIALS["gemma3_text"]
    tok = transformers.GemmaTokenizer(vocab=state["vocab"], merges=merges, model_max_length=MAX_LEN,
                                      padding_side="right", **sp)
    single, pair = _template("gemma3_text", sp)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair,
        special_tokens=[(t, tok.convert_tokens_to_ids(t)) for t in ("<bos>", "<eos>")])
    return tok


def make_tokenizer(model_type: str) -> transformers.PreTrainedTokenizerFast:
    """A fast tokenizer over WORDS with the family's special tokens and template."""
    if model_type not in _SPECIALS:
        raise ValueError(f"unknown model type {model_type!r}")
    sp = _SPECIALS[model_type]
    special_list = [t for t in dict.fromkeys(sp.values()) if t]  # unique, in order
    if model_type == "gemma3_text":
        return _gemma_tokenizer(special_list)
    if model_type == "m2m_100":
        special_list += LANG_TOKENS
    if model_type in ("qwen2", "qwen3"):
        tok = _byte_level_bpe(special_list)
    else:
        tok = _word_level(special_list, sp["unk_token"])
        tok.add_special_tokens(special_list)
    single, pair = _template(model_type, sp)
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair,
        special_tokens=[(t, tok.token_to_id(t)) for t in special_list if t in single + pair])
    kwargs = dict(sp)
    if model_type in ("llama", "mistral"):
        kwargs["pad_token"] = sp["eos_token"]  # no pad token: users set pad = eos
    if model_type == "m2m_100":
        kwargs["additional_special_tokens"] = LANG_TOKENS
    names = ["input_ids", "attention_mask"]
    if model_type in WITH_TOKEN_TYPES:
        names.insert(1, "token_type_ids")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=MAX_LEN, model_input_names=names, **kwargs)


def tiny_config(model_type: str) -> transformers.PretrainedConfig:
    """A 2-layer, width-32 config whose vocabulary matches make_tokenizer(model_type)."""
    tk = make_tokenizer(model_type)
    ids = dict(vocab_size=len(tk), pad_token_id=tk.pad_token_id)
    ids.update({f"{n}_token_id": getattr(tk, f"{n}_token_id") for n in ("bos", "eos")
                if getattr(tk, f"{n}_token_id") is not None})
    bert_dims = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=FFN, max_position_embeddings=MAX_LEN)
    if model_type in ("bert", "electra"):
        extra = {"embedding_size": 16} if model_type == "electra" else {}  # ELECTRA projects
        return transformers.AutoConfig.for_model(model_type, **bert_dims, **extra, **ids)
    if model_type in ROBERTA_LIKE:
        # Position ids start after padding_idx, so real checkpoints use 512 + 2 positions.
        bert_dims["max_position_embeddings"] = MAX_LEN + 2
        extra = {} if model_type == "mpnet" else {"type_vocab_size": 1}  # as published
        return transformers.AutoConfig.for_model(model_type, **bert_dims, **extra, **ids)
    if model_type == "distilbert":
        return transformers.DistilBertConfig(
            dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
            max_position_embeddings=MAX_LEN, **ids)
    if model_type == "deberta-v2":  # DeBERTa-v3 style relative attention
        return transformers.DebertaV2Config(
            **bert_dims, type_vocab_size=0, relative_attention=True, position_buckets=16,
            pos_att_type=["p2c", "c2p"], position_biased_input=False,
            norm_rel_ebd="layer_norm", share_att_key=True, max_relative_positions=-1, **ids)
    if model_type == "modernbert":  # published config: bos = [CLS], eos = [SEP]
        ids.update(bos_token_id=tk.cls_token_id, eos_token_id=tk.sep_token_id,
                   cls_token_id=tk.cls_token_id, sep_token_id=tk.sep_token_id)
        return transformers.ModernBertConfig(
            **bert_dims, global_attn_every_n_layers=2, local_attention=16, **ids)
    if model_type in T5_LIKE:
        return transformers.AutoConfig.for_model(
            model_type, d_model=HIDDEN, d_kv=8, d_ff=FFN, num_layers=LAYERS,
            num_decoder_layers=LAYERS, num_heads=HEADS, relative_attention_num_buckets=8,
            # t5-small style relu vs mT5/umT5 gated-gelu.  (transformers 5 forces
            # tie_word_embeddings=True for the T5 family, so no lm_head.weight is saved.)
            feed_forward_proj="relu" if model_type == "t5" else "gated-gelu",
            decoder_start_token_id=tk.pad_token_id, **ids)
    if model_type == "m2m_100":
        return transformers.M2M100Config(
            d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
            encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
            encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, max_position_embeddings=MAX_LEN,
            scale_embedding=True, decoder_start_token_id=tk.eos_token_id, **ids)
    if model_type == "gemma3_text":  # EmbeddingGemma: Gemma 3 with bidirectional attention
        return transformers.Gemma3TextConfig(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            num_key_value_heads=1, head_dim=HIDDEN // HEADS, intermediate_size=FFN,
            max_position_embeddings=MAX_LEN, query_pre_attn_scalar=HIDDEN // HEADS,
            # One sliding and one global layer; the window (8) is shorter than the texts.
            sliding_window=8, layer_types=["sliding_attention", "full_attention"],
            use_bidirectional_attention=True, tie_word_embeddings=True, **ids)
    if model_type in DECODERS:
        return transformers.AutoConfig.for_model(
            model_type, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=2, head_dim=HIDDEN // HEADS,
            intermediate_size=FFN, max_position_embeddings=MAX_LEN,
            tie_word_embeddings=model_type.startswith("qwen"), **ids)
    raise ValueError(f"unknown model type {model_type!r}")


def _model_class(model_type: str):
    """The auto class of the saved model: what published checkpoints contain."""
    return (transformers.AutoModelForSeq2SeqLM if model_type in ENC_DEC else
            transformers.AutoModelForCausalLM if model_type in DECODERS else transformers.AutoModel)


def save_tiny_model(model_type: str, directory: str | Path, seed: int = 0) -> Path:
    """Build a random tiny model + tokenizer and save them into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_config(model_type)
    torch.manual_seed(seed)
    model = _model_class(model_type).from_config(config)
    model.save_pretrained(directory)  # config.json + model.safetensors
    make_tokenizer(model_type).save_pretrained(directory)
    return directory


def _hidden(model, model_type: str, batch) -> torch.Tensor:
    """Last hidden states of the encoder (enc-dec), base model or decoder stack."""
    with torch.no_grad():
        if model_type in ENC_DEC:
            return model.get_encoder()(**batch).last_hidden_state
        return model(**batch, output_hidden_states=True).hidden_states[-1]


def _prefixes(keys) -> list[str]:
    """Parameter names cut at the first layer index or before the last part."""
    out = set()
    for key in keys:
        parts = key.split(".")
        cut = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        out.add(".".join(parts[:cut] if cut is not None else parts[:-1]) + ".*")
    return sorted(out)


def _self_check() -> None:
    import tempfile
    import time

    from safetensors import safe_open

    sentences = ["Hello world", "the big red dog and a small cat read a long book at night"]
    assert all(w in WORDS for s in sentences for w in s.lower().split())
    transformers.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for mt in MODEL_TYPES + EXTRA_MODEL_TYPES:
            d = save_tiny_model(mt, Path(tmp) / mt)
            tok = transformers.AutoTokenizer.from_pretrained(d)
            cfg = transformers.AutoConfig.from_pretrained(d)
            model = _model_class(mt).from_pretrained(d).eval()
            assert cfg.model_type == mt and model.config.vocab_size == len(tok), mt
            assert model.config.pad_token_id == tok.pad_token_id is not None, mt
            # Every word is one known token, alone and inside a sentence.
            ids = tok(WORDS, add_special_tokens=False)["input_ids"]
            assert [tok.convert_ids_to_tokens(i) for i in ids] == [[w] for w in WORDS], mt
            for s in sentences:
                assert len(tok(s, add_special_tokens=False)["input_ids"]) == len(s.split())
            batch = tok(sentences, padding=True, return_tensors="pt")
            mask = batch["attention_mask"]
            assert mask[0].sum() < mask[1].sum() == mask.shape[1], mt
            assert tok.unk_token_id is None or tok.unk_token_id not in batch["input_ids"]
            # Padded batch: finite, width 32, and the short row matches an unpadded run.
            out = _hidden(model, mt, batch)
            assert out.shape == (2, mask.shape[1], 32) and torch.isfinite(out).all(), mt
            single = _hidden(model, mt, tok(sentences[:1], return_tensors="pt"))
            n = int(mask[0].sum())
            torch.testing.assert_close(out[0, :n], single[0], atol=1e-4, rtol=1e-4)
            with safe_open(d / "model.safetensors", "pt") as f:
                prefixes = _prefixes(f.keys())
            shown = tok.convert_ids_to_tokens(batch["input_ids"][0][: n + 1])
            print(f"OK {mt:11s} {type(model).__name__:31s} {type(tok).__name__:18s} "
                  f"{shown} {prefixes}")
    print(f"all {len(MODEL_TYPES + EXTRA_MODEL_TYPES)} OK in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    _self_check()
