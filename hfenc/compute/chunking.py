"""Long documents cut into chunks that the model takes whole (issue 23).

A document is tokenized once with the model's own tokenizer, without truncation, keeping each
token's character offsets. Chunks are runs of its tokens cut only between words (a cut falls
where the text has a space or punctuation between two tokens, never inside a word), each small
enough that the chunk's text, tokenized on its own with the prompt and the special tokens as
every row is, takes at most `max_tokens`: that is checked by tokenizing it, not estimated, since
a BPE tokenizer may tokenize a word differently at the start of a text. Consecutive chunks
overlap by about `overlap` tokens (to the nearest cut between words). `text[char_start:char_end]`
is a chunk's text; what lies between chunks is whitespace only.

Late chunking (Günther et al., 2024) keeps the same chunks but embeds them differently: the
document goes through the transformer whole (`Chunker.windows`: in overlapping windows of the
model's maximum length when it is longer) and each chunk is the mean of its own tokens' hidden
states in that pass, so a chunk's vector sees the words around it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

import numpy as np

from hfenc.errors import ConfigError, UnknownChoiceError

CHUNK_BY = ("tokens", "sentences")
PLAN_FIELDS = ("doc_row", "chunk", "char_start", "char_end", "token_start", "token_end")


@dataclass(frozen=True)
class ChunkOptions:
    """How an embedding job cuts its records (`hfenc embed --chunk-tokens N ...`)."""

    tokens: int  # at most this many model tokens per chunk, prompt and special tokens included
    overlap: int = 0  # about this many tokens shared by consecutive chunks
    by: str = "tokens"  # or "sentences": end a chunk at a sentence or paragraph end where one fits
    late: bool = False  # pool each chunk from one pass over the whole document (late chunking)
    doc_vectors: bool = False  # also one vector per document: the mean of its chunks' vectors

    def check(self) -> None:
        """What needs no model: the model's own limits are checked by Chunker."""
        if self.by not in CHUNK_BY:
            raise UnknownChoiceError("--chunk-by value", self.by, CHUNK_BY)
        if self.tokens < 1:
            raise ConfigError(f"--chunk-tokens {self.tokens} must be a positive number")
        if not 0 <= self.overlap < self.tokens:
            raise ConfigError(f"--chunk-overlap {self.overlap} must be at least 0 and less than --chunk-tokens "
                              f"{self.tokens}")

    def record(self) -> dict[str, Any]:
        """The sidecar's and the resume fingerprint's "chunking": the settings, and the version of
        the library that cut the chunks (a resumed run must cut them the same)."""
        import tokenizers

        return {"tokens": self.tokens, "overlap": self.overlap, "by": self.by, "late": self.late,
                "doc_vectors": self.doc_vectors, "tokenizers_version": tokenizers.__version__}
# A sentence ends with one of _STOPS, then up to three of _CLOSERS (`end."` `end.)`); a paragraph
# with a blank line.
_STOPS = np.array([ord(c) for c in ".!?…。！？"], dtype=np.uint32)
_CLOSERS = np.array([ord(c) for c in "'\")]"], dtype=np.uint32)


@dataclass(frozen=True)
class Span:
    """One chunk of a document: characters [char_start, char_end) of its text, tokens
    [token_start, token_end) of the document's own tokens (no prompt, no special tokens)."""

    chunk: int
    char_start: int
    char_end: int
    token_start: int
    token_end: int


class Chunker:
    """Cuts documents for one model's tokenizer (a hfenc.compute.engine.TextTokenizer)."""

    def __init__(self, tokenizer: Any, max_tokens: int, overlap: int = 0, by: str = "tokens") -> None:
        if by not in CHUNK_BY:
            raise UnknownChoiceError("chunking", by, CHUNK_BY)
        if tokenizer.fast is None:
            raise ConfigError("chunking needs a fast (Rust) tokenizer, and this model has only a Python one")
        self.tokenizer, self.max_tokens, self.overlap, self.by = tokenizer, int(max_tokens), int(overlap), by
        self.bare = tokenizer.fast.__class__.from_str(tokenizer.fast.to_str())  # offsets, no truncation
        self.bare.no_truncation()
        self.bare.no_padding()
        self.overhead = self._count("")  # the prompt and the special tokens every row carries
        if self.max_tokens > tokenizer.max_length:
            raise ConfigError(f"--chunk-tokens {self.max_tokens} is more than the model takes ({tokenizer.max_length})",
                              hint=f"use --chunk-tokens {tokenizer.max_length} or less")
        if self.max_tokens <= self.overhead:
            raise ConfigError(f"--chunk-tokens {self.max_tokens} leaves no room for text: the prompt and special "
                              f"tokens take {self.overhead}", hint=f"use --chunk-tokens {self.overhead + 1} or more")
        if not 0 <= self.overlap < self.max_tokens - self.overhead:
            raise ConfigError(f"--chunk-overlap {self.overlap} must be at least 0 and less than the "
                              f"{self.max_tokens - self.overhead} tokens of text a chunk holds")

    def _count(self, text: str) -> int:
        """Tokens of `text` as a row of the model: the prompt and special tokens included (one more
        than the model's maximum for a text it would truncate)."""
        return int(self._counts([text])[0])

    def _counts(self, texts: list[str]) -> np.ndarray:
        """_count of each text, in one call to the tokenizer (in parallel, in Rust)."""
        tok = self.tokenizer(texts)
        return tok.lengths + tok.truncated

    def spans(self, text: str) -> list[Span]:
        """The chunks of `text`, in order (one empty chunk for a text with no tokens)."""
        return self.spans_many([text])[0]

    def spans_many(self, texts: list[str]) -> list[list[Span]]:
        """spans() of each text. Made together, for speed: the texts are tokenized in one call
        (in parallel, in Rust), and so are the checks of the chunks' counts. Each record's chunks
        are first proposed as if a chunk's text took the tokens it has in the record (each ends
        at the furthest cut within the room); all proposals are then tokenized at once, and the
        first one of a record that does not fit after all (a BPE may tokenize a word differently
        at the start of a text) is cut again check by check, its record's later chunks proposed
        again from there. The chunks are those of checking each chunk on its own."""
        encodings = self.bare.encode_batch(texts, add_special_tokens=False)
        records = [_Record(text, e.offsets) for text, e in zip(texts, encodings)]
        chunks: list[list[Span]] = [[] if r.n else [Span(0, 0, 0, 0, 0)] for r in records]
        room = self.max_tokens - self.overhead
        starts = {i: 0 for i, r in enumerate(records) if r.n}
        while starts:
            proposals = []  # (record, start, the furthest cut that fits by the record's count)
            for i, start in starts.items():
                r = records[i]
                while True:
                    fitting = self._candidates(r.cuts, start, room)[-1]
                    proposals.append((i, start, fitting))
                    end = self._sentence_end(r, start, room, fitting)
                    if end >= r.n:
                        break
                    start = self._next_start(r.cuts, start, end)
            counts = self._counts([records[i].text[records[i].offsets[start][0]:records[i].offsets[fitting - 1][1]]
                                   for i, start, fitting in proposals])
            again: dict[int, int] = {}
            finished: set[int] = set()
            for (i, start, fitting), count in zip(proposals, counts.tolist()):
                if i in again or i in finished:
                    continue
                r = records[i]
                over = count > self.max_tokens
                if over:
                    fitting = self._fitting(r, start, room)
                end = self._sentence_end(r, start, room, fitting)
                chunks[i].append(Span(len(chunks[i]), r.offsets[start][0], r.offsets[end - 1][1], start, end))
                if end >= r.n:
                    finished.add(i)
                elif over:
                    again[i] = self._next_start(r.cuts, start, end)
            starts = again
        return chunks

    @staticmethod
    def _candidates(cuts: list[int], start: int, room: int) -> list[int]:
        """The cuts a chunk from `start` may end at: those within the room by the record's count;
        for one word longer than a chunk, a cut inside it (the only such cut)."""
        return cuts[bisect_right(cuts, start):bisect_right(cuts, start + room)] or [min(start + room, cuts[-1])]

    def _fitting(self, r: _Record, start: int, room: int) -> int:
        """The furthest cut after `start` whose chunk fits, checked cut by cut from the furthest."""
        text, offsets = r.text, r.offsets
        for end in reversed(self._candidates(r.cuts, start, room)):
            if self._count(text[offsets[start][0]:offsets[end - 1][1]]) <= self.max_tokens:
                return end
        # even the shortest run of whole words is over: take tokens one by one
        fitting, limit = start + 1, min(start + room, r.n)
        while fitting < limit and self._count(text[offsets[start][0]:offsets[fitting][1]]) <= self.max_tokens:
            fitting += 1
        return fitting

    def _sentence_end(self, r: _Record, start: int, room: int, fitting: int) -> int:
        """With by=sentences, the furthest sentence end in the second half of the room up to
        `fitting`, where there is one; else `fitting`."""
        if self.by == "sentences" and fitting < r.cuts[-1]:
            ends = r.sentence_cuts()
            at = bisect_right(ends, fitting) - 1
            if at >= 0 and ends[at] > start + room // 2:
                return ends[at]
        return fitting

    def _next_start(self, cuts: list[int], start: int, end: int) -> int:
        """The cut nearest to `overlap` tokens before `end`, after `start` (so chunks advance)."""
        if self.overlap == 0:
            return end
        target = end - self.overlap
        lo, hi = bisect_right(cuts, start), bisect_left(cuts, end)  # the cuts strictly inside the chunk
        if lo == hi:
            return end
        at = min(max(bisect_left(cuts, target, lo, hi), lo), hi - 1)
        near = cuts[max(at - 1, lo):min(at + 2, hi)]  # the cut nearest the target is one of these
        return min(near, key=lambda c: (abs(c - target), -c))


    def windows(self, text: str, spans: list[Span]) -> list[Window]:
        """Late chunking: the passes over `text` that embed its chunks `spans` (as spans() cut
        them). One pass when the whole document fits the model; else windows of the model's
        maximum length, each holding whole chunks, every one after the first starting a quarter
        window before its first chunk so that chunk has words before it too."""
        return self.windows_many([text], [spans])[0]

    def windows_many(self, texts: list[str], spans_list: list[list[Span]]) -> list[list[Window]]:
        """windows() of each text, made together (as spans_many: one tokenizer call for the
        texts, one for every window of the model's full length; a window that does not tokenize
        whole after all is shrunk check by check, and its document's later windows with it)."""
        tok = self.tokenizer
        room = tok.max_length - self.overhead
        records = [_Record(text, e.offsets) for text, e in zip(texts, self.bare.encode_batch(texts, add_special_tokens=False))]
        proposals = []  # (document, window over its tokens [start, end) holding chunks [first, last))
        for i, (spans, r) in enumerate(zip(spans_list, records)):
            first = 0
            while first < len(spans):
                start, end, last = self._place(spans, r, first, room)
                proposals.append((i, start, end, first, last))
                first = last
        rows = [tok.prefix + self._window_text(records[i], start, end) for i, start, end, _, _ in proposals]
        found: list[list[Window]] = [[] for _ in texts]
        shrunk: set[int] = set()
        for (i, start, end, first, last), encoding in zip(proposals, tok.fast.encode_batch(rows)):
            if i in shrunk:
                continue
            r, spans = records[i], spans_list[i]
            if not encoding.overflowing:
                found[i].append(self._window(encoding, r.offsets[start][0] if r.n else 0, spans[first:last]))
                continue
            shrunk.add(i)  # a BPE took more tokens for the window on its own: from here, one by one
            while first < len(spans):
                window, first = self._shrunk(r, spans, first, room)
                found[i].append(window)
        return found

    @staticmethod
    def _place(spans: list[Span], r: _Record, first: int, fit: int) -> tuple[int, int, int]:
        """A window of at most `fit` document tokens from chunk `first` on, starting and ending
        between words: (start, end, the chunk after the last it holds whole)."""
        chunk = spans[first]
        back = max(0, min(fit // 4, fit - (chunk.token_end - chunk.token_start))) if first else 0
        at = bisect_left(r.cuts, chunk.token_start - back)
        start = min(r.cuts[at], chunk.token_start) if chunk.token_start - back > 0 else 0
        at = bisect_right(r.cuts, min(r.n, start + fit)) - 1
        end = max(r.cuts[at] if at >= 0 else 0, chunk.token_end)
        last = first + 1
        while last < len(spans) and spans[last].token_end <= end:
            last += 1
        return start, end, last

    def _shrunk(self, r: _Record, spans: list[Span], first: int, room: int) -> tuple[Window, int]:
        """The window from chunk `first`, shrunk until it tokenizes whole; and the next chunk."""
        tok = self.tokenizer
        length = spans[first].token_end - spans[first].token_start
        for fit in [*range(room, length, -max(1, room // 16)), length]:
            start, end, last = self._place(spans, r, first, fit)
            encoding = tok.fast.encode(tok.prefix + self._window_text(r, start, end))
            if not encoding.overflowing:
                return self._window(encoding, r.offsets[start][0] if r.n else 0, spans[first:last]), last
        # not even the chunk alone: cannot happen, a chunk fits by construction
        raise ConfigError(f"late chunking: chunk {first} does not fit the model's window")

    @staticmethod
    def _window_text(r: _Record, start: int, end: int) -> str:
        return r.text[r.offsets[start][0]:r.offsets[end - 1][1]] if r.n else ""

    def _window(self, encoding: Any, c0: int, spans: list[Span]) -> Window:
        """A window's row (prompt and special tokens added, as every row; it starts at document
        character `c0`), and each of its chunks' token positions in it."""
        shift = c0 - len(self.tokenizer.prefix)  # window offsets -> document offsets
        ends = np.array([e for _, e in encoding.offsets], np.int64) + shift
        real = np.array(encoding.special_tokens_mask, bool) == 0
        positions = []
        for span in spans:
            # a chunk's tokens: the real tokens that end inside it (a byte-level token carries the
            # space before its word, so it may start one character early)
            inside = np.flatnonzero(real & (ends > span.char_start) & (ends <= span.char_end))
            if len(inside) == 0:  # an empty document: its one chunk is the whole (empty) row
                inside = np.flatnonzero(np.ones(len(ends), bool))
            positions.append((int(inside[0]), int(inside[-1]) + 1))
        return Window(np.asarray(encoding.ids, np.int64), positions)


class _Record:
    """A text, its tokens' character offsets, and where a chunk may end (between words)."""

    def __init__(self, text: str, offsets: list[tuple[int, int]]) -> None:
        self.text, self.offsets, self.n = text, offsets, len(offsets)
        self._sentence_cuts: list[int] | None = None
        if not offsets:
            self.cuts = [0]
            return
        # _between_words for every pair of tokens at once: a space between them, or a character
        # that is not a letter or digit on either side of the cut
        self.at = at = np.asarray(offsets, dtype=np.int64)
        self.codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        between = at[1:, 0] > at[:-1, 1]
        # tokens that touch: a cut unless inside a word (tokens that overlap, the bytes of one
        # character, never are)
        touch = np.flatnonzero(at[1:, 0] == at[:-1, 1])
        if len(touch):
            before = _alnum(self.codes[np.maximum(at[touch, 1] - 1, 0)])
            after = _alnum(self.codes[np.minimum(at[touch + 1, 0], len(self.codes) - 1)])
            between[touch] = ~(before & after)
        self.cuts = (np.flatnonzero(between) + 1).tolist() + [self.n]

    def sentence_cuts(self) -> list[int]:
        """The cuts after which a sentence or a paragraph ends (by=sentences), found once."""
        if self._sentence_cuts is None:
            cuts = np.array(self.cuts[:-1], dtype=np.int64)
            ends = self.at[cuts - 1, 1]  # where the text before each cut ends
            codes = np.concatenate((np.zeros(4, np.uint32), self.codes))  # codes[ends + 3] is text[ends - 1]
            closed = np.ones(len(cuts), bool)  # only closers so far, looking back from the end
            sentence = np.zeros(len(cuts), bool)
            for back in range(4):
                char = codes[ends + 3 - back]
                sentence |= closed & np.isin(char, _STOPS)
                closed &= np.isin(char, _CLOSERS)
            # a blank line in the whitespace before the next token, whether or not the tokenizer
            # makes tokens of it: between the last other character and the next token's start
            blank = (self.codes[:-1] == 10) & (self.codes[1:] == 10)  # "\n\n" starting at each position
            seen = np.concatenate(([0], np.cumsum(blank)))
            visible = np.flatnonzero(~_space(self.codes))
            nexts = self.at[cuts, 0]
            after = np.searchsorted(visible, nexts) - 1  # the last other character before the next token
            since = np.where(after >= 0, visible[np.maximum(after, 0)] + 1, 0)
            sentence |= seen[np.maximum(nexts - 1, since)] > seen[since]
            self._sentence_cuts = cuts[sentence].tolist()
        return self._sentence_cuts


def _each(codes: np.ndarray, test: Any) -> np.ndarray:
    """`test` (str.isalnum, str.isspace) of each code point: ASCII by a table, the rest one by one."""
    table = np.array([test(chr(c)) for c in range(128)])
    found = np.zeros(len(codes), bool)
    ascii_ = codes < 128
    found[ascii_] = table[codes[ascii_]]
    for i in np.flatnonzero(~ascii_).tolist():
        found[i] = test(chr(int(codes[i])))
    return found


def _alnum(codes: np.ndarray) -> np.ndarray:
    return _each(codes, str.isalnum)


def _space(codes: np.ndarray) -> np.ndarray:
    return _each(codes, str.isspace)


@dataclass(frozen=True)
class Window:
    """One pass of late chunking: the row's token ids and, for each of its chunks in order, the
    [start, end) positions of that chunk's tokens in the row."""

    ids: np.ndarray
    positions: list[tuple[int, int]]


def _between_words(text: str, left: tuple[int, int], right: tuple[int, int]) -> bool:
    """Whether a cut between two tokens falls between words: space between them, or punctuation
    on either side (`word,` | `(word`), never two pieces of one word (`embed` | `##dings`)."""
    if right[0] > left[1]:
        return True
    before, after = text[left[1] - 1:left[1]], text[right[0]:right[0] + 1]
    return not (before.isalnum() and after.isalnum())
