"""Long documents cut into chunks (issue 23; jobs over them: test_chunked.py): every chunk fits the model whole,
cuts fall between words, chunks overlap by about the asked number of tokens, and together they
cover the document. On real text, with a WordPiece tokenizer (MiniLM, lowercasing) and a
byte-level BPE one (a tiny Qwen2), with and without a prompt."""

from __future__ import annotations

import pytest

import tiny_models
from corpus import real_sentences
from hfenc.compute.chunking import Chunker, Span
from hfenc.compute.engine import TextTokenizer
from hfenc.errors import ConfigError, UnknownChoiceError


@pytest.fixture(scope="module")
def tokenizers(minilm_dir):
    from transformers import AutoTokenizer

    minilm = AutoTokenizer.from_pretrained(str(minilm_dir))
    return {
        "minilm": lambda prefix="": TextTokenizer(minilm, 256, prefix, lowercase=True),
        "qwen2-bpe": lambda prefix="": TextTokenizer(tiny_models.make_tokenizer("qwen2"), 512, prefix),
    }


@pytest.fixture(scope="module")
def documents() -> list[str]:
    texts = real_sentences(1500)
    docs = [" ".join(texts[i:i + 60]) for i in range(0, 600, 60)]  # joined into pages
    docs.append("\n\n".join(texts[700:760]))  # paragraphs
    docs.append("supercalifragilisticexpialidocious" * 30 + " and then some words")  # a word longer than a chunk
    return docs


def _word_tokens(chunker: Chunker, text: str, at: int) -> int:
    """Tokens of the word (run of letters and digits) around character `at`."""
    start, end = at, at
    while start > 0 and text[start - 1].isalnum():
        start -= 1
    while end < len(text) and text[end].isalnum():
        end += 1
    return len(chunker.bare.encode(text[start:end], add_special_tokens=False).ids)


def _word_lengths(chunker: Chunker, text: str) -> int:
    """The most tokens one word takes in `text` (the overlap is exact give or take one word)."""
    enc = chunker.bare.encode(text, add_special_tokens=False)
    longest, run = 1, 1
    for left, right in zip(enc.offsets, enc.offsets[1:]):
        glued = right[0] == left[1] and text[left[1] - 1:left[1]].isalnum() and text[right[0]:right[0] + 1].isalnum()
        run = run + 1 if glued else 1
        longest = max(longest, run)
    return longest


@pytest.mark.parametrize("name", ["minilm", "qwen2-bpe"])
@pytest.mark.parametrize("max_tokens, overlap, by, prefix", [
    (32, 0, "tokens", ""), (64, 16, "tokens", ""), (128, 32, "sentences", ""), (48, 8, "tokens", "query: "),
    (256, 64, "sentences", "Represent this passage: "),
])
def test_chunks_fit_cut_between_words_overlap_and_cover(tokenizers, documents, name, max_tokens, overlap, by, prefix):
    chunker = Chunker(tokenizers[name](prefix), max_tokens, overlap, by)
    for doc in documents:
        spans = chunker.spans(doc)
        n = len(chunker.bare.encode(doc, add_special_tokens=False).ids)
        assert spans[0].token_start == 0 and spans[-1].token_end == n
        assert [s.chunk for s in spans] == list(range(len(spans)))
        covered = [False] * len(doc)
        word = _word_lengths(chunker, doc)
        for s, nxt in zip(spans, [*spans[1:], None]):
            piece = doc[s.char_start:s.char_end]
            assert chunker._count(piece) <= max_tokens  # prompt and specials counted, nothing truncated
            for cut in (s.char_start, s.char_end):  # between words, unless one word is longer than a chunk
                inside = 0 < cut < len(doc) and doc[cut - 1].isalnum() and doc[cut].isalnum()
                assert not inside or _word_tokens(chunker, doc, cut) > max_tokens - chunker.overhead
            for i in range(s.char_start, s.char_end):
                covered[i] = True
            if nxt is not None:
                assert s.token_start < nxt.token_start < s.token_end + 1
                shared = s.token_end - nxt.token_start
                assert abs(shared - overlap) <= word, (shared, overlap, word)
        assert all(c or ch.isspace() for c, ch in zip(covered, doc))  # only whitespace is left out


def test_sentences_prefers_sentence_ends(tokenizers, documents):
    def share(by: str) -> float:
        chunker = Chunker(tokenizers["minilm"](), 128, 0, by)
        ends = [d[s.char_end - 1] for d in documents[:10] for s in chunker.spans(d)[:-1]]
        return sum(e in ".!?\"')" for e in ends) / len(ends)

    assert share("sentences") > 0.8 and share("sentences") > share("tokens") + 0.3


def test_an_empty_document_is_one_empty_chunk(tokenizers):
    chunker = Chunker(tokenizers["minilm"](), 32)
    assert chunker.spans("") == chunker.spans("   ") == [Span(0, 0, 0, 0, 0)]


def test_bad_settings_are_one_clear_error(tokenizers):
    tok = tokenizers["minilm"]("query: ")
    overhead = Chunker(tok, 32).overhead
    assert overhead == len(tok.hf("query: ")["input_ids"])  # [CLS] query : [SEP], as every row carries them
    with pytest.raises(ConfigError, match="leaves no room"):
        Chunker(tok, overhead)
    with pytest.raises(ConfigError, match=f"--chunk-overlap {32 - overhead} "):
        Chunker(tok, 32, 32 - overhead)
    with pytest.raises(ConfigError, match="--chunk-overlap -1 "):
        Chunker(tok, 32, -1)
    with pytest.raises(ConfigError, match="more than the model takes"):
        Chunker(tok, 1000)
    with pytest.raises(UnknownChoiceError):
        Chunker(tok, 32, 0, "paragraphs")


@pytest.mark.parametrize("name", ["minilm", "qwen2-bpe"])
@pytest.mark.parametrize("prefix", ["", "passage: "])
def test_late_chunking_windows_fit_the_model_and_hold_every_chunk_once(tokenizers, documents, name, prefix):
    """Chunker.windows: each pass is a row the model takes whole (prompt and special tokens
    included), each chunk is pooled in exactly one pass, from the tokens of its own text, and a
    document longer than the model's window gets several passes that overlap."""
    tok = tokenizers[name](prefix)
    chunker = Chunker(tok, 64, 8)
    several = 0
    for doc in documents:
        spans = chunker.spans(doc)
        windows = chunker.windows(doc, spans)
        assert sum(len(w.positions) for w in windows) == len(spans)  # in order: window by window
        for window in windows:
            assert len(window.ids) <= tok.max_length
        pooled = [(w, p) for w in windows for p in w.positions]
        for span, (window, (start, end)) in zip(spans, pooled):
            piece = doc[span.char_start:span.char_end]
            got = tok.fast.decode(window.ids[start:end].tolist()).strip()
            if name == "minilm":  # WordPiece: a word's tokens do not depend on what is around it
                assert window.ids[start:end].tolist() == chunker.bare.encode(piece, add_special_tokens=False).ids
            else:  # byte-level BPE: the chunk's own text, whatever its first token
                assert got == piece.strip(), (got[:40], piece[:40])
        if len(windows) > 1:
            several += 1
            assert len(chunker.bare.encode(doc, add_special_tokens=False).ids) > tok.max_length - chunker.overhead
    assert several >= 3


def test_paragraph_ends_are_found_where_the_tokenizer_makes_tokens_of_newlines(tokenizers):
    from hfenc.compute.chunking import _Record

    text = "Heading one\n\nsome body text here\n\nanother paragraph. Final words here"
    for name in ("minilm", "qwen2-bpe"):
        fast = tokenizers[name]().fast
        offsets = fast.encode(text, add_special_tokens=False).offsets
        ends = {offsets[c - 1][1] for c in _Record(text, offsets).sentence_cuts()}
        # the text before each found cut ends a paragraph or a sentence (blank lines may follow)
        assert {text[:e].rstrip()[-4:] for e in ends} == {" one", "here", "aph."}, name
