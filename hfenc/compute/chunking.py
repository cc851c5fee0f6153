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

import re
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
        """The sidecar's and the resume fingerprint's "chunking"."""
        return {"tokens": self.tokens, "overlap": self.overlap, "by": self.by, "late": self.late,
                "doc_vectors": self.doc_vectors}
_SENTENCE_END = re.compile(r"[.!?…。！？]['\")\]]*$")


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
        tok = self.tokenizer([text])
        return int(tok.lengths[0]) + int(tok.truncated[0])

    def spans_many(self, texts: list[str]) -> list[list[Span]]:
        """spans() of each text; the texts are tokenized together (in parallel, in Rust)."""
        encodings = self.bare.encode_batch(texts, add_special_tokens=False)
        return [self.spans(text, e.offsets) for text, e in zip(texts, encodings)]

    def spans(self, text: str, offsets: list[tuple[int, int]] | None = None) -> list[Span]:
        """The chunks of `text`, in order (one empty chunk for a text with no tokens).
        `offsets`: the text's tokens' character offsets, when spans_many has them."""
        if offsets is None:
            offsets = self.bare.encode(text, add_special_tokens=False).offsets
        n = len(offsets)
        if n == 0:
            return [Span(0, 0, 0, 0, 0)]
        cuts = [i for i in range(1, n) if _between_words(text, offsets[i - 1], offsets[i])] + [n]
        room = self.max_tokens - self.overhead
        spans: list[Span] = []
        start = 0
        while True:
            end = self._end(text, offsets, cuts, start, room)
            spans.append(Span(len(spans), offsets[start][0], offsets[end - 1][1], start, end))
            if end >= n:
                return spans
            start = self._next_start(cuts, start, end)

    def _end(self, text: str, offsets: list[tuple[int, int]], cuts: list[int], start: int, room: int) -> int:
        """The furthest cut after `start` whose chunk fits (checked by tokenizing it); with
        by=sentences, the furthest sentence end in the second half of that, where there is one."""
        candidates = cuts[bisect_right(cuts, start):bisect_right(cuts, start + room)]
        if not candidates:  # one word longer than a chunk: it is cut inside (the only such cut)
            candidates = [min(start + room, cuts[-1])]
        fitting = None
        for end in reversed(candidates):
            if self._count(text[offsets[start][0]:offsets[end - 1][1]]) <= self.max_tokens:
                fitting = end
                break
        if fitting is None:  # even the shortest run of whole words is over: take tokens one by one
            fitting, limit = start + 1, min(start + room, len(offsets))
            while fitting < limit and self._count(text[offsets[start][0]:offsets[fitting][1]]) <= self.max_tokens:
                fitting += 1
        if self.by == "sentences" and fitting < cuts[-1]:
            sentence_ends = [c for c in candidates if start + room // 2 < c <= fitting and _ends_sentence(text, offsets, c)]
            if sentence_ends:
                return sentence_ends[-1]
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
        tok = self.tokenizer
        offsets = self.bare.encode(text, add_special_tokens=False).offsets
        room = tok.max_length - self.overhead
        windows: list[Window] = []
        first = 0
        while first < len(spans):
            length = spans[first].token_end - spans[first].token_start
            # shrink until the window tokenizes whole (a BPE may take more tokens for a text on its own)
            for fit in [*range(room, length, -max(1, room // 16)), length]:
                back = max(0, min(fit // 4, fit - length)) if windows else 0
                start = max(0, spans[first].token_start - back)
                end = min(len(offsets), start + fit)
                last = first + 1
                while last < len(spans) and spans[last].token_end <= end:
                    last += 1
                window = self._window(text, offsets, start, end, spans[first:last])
                if window is not None:
                    break
            else:  # not even the chunk alone: cannot happen, a chunk fits by construction
                raise ConfigError(f"late chunking: chunk {first} does not fit the model's window")
            windows.append(window)
            first = last
        return windows

    def _window(self, text: str, offsets: list[tuple[int, int]], start: int, end: int,
                spans: list[Span]) -> Window | None:
        """The window over document tokens [start, end) as a row of the model (prompt and special
        tokens added, as every row), and each chunk's token positions in it; None when that row
        would be truncated."""
        tok = self.tokenizer
        c0 = offsets[start][0] if offsets else 0
        c1 = offsets[end - 1][1] if offsets else 0
        encoding = tok.fast.encode(tok.prefix + text[c0:c1])
        if encoding.overflowing:
            return None
        shift = c0 - len(tok.prefix)  # window offsets -> document offsets
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


@dataclass(frozen=True)
class Window:
    """One pass of late chunking: the row's token ids and, for each of its chunks in order, the
    [start, end) positions of that chunk's tokens in the row."""

    ids: np.ndarray
    positions: list[tuple[int, int]]


def _ends_sentence(text: str, offsets: list[tuple[int, int]], cut: int) -> bool:
    """Whether the text before the cut ends a sentence (.!? and closing quotes) or a paragraph."""
    before = text[:offsets[cut - 1][1]]
    gap = text[offsets[cut - 1][1]:offsets[cut][0] if cut < len(offsets) else len(text)]
    return bool(_SENTENCE_END.search(before[-4:])) or "\n\n" in gap


def _between_words(text: str, left: tuple[int, int], right: tuple[int, int]) -> bool:
    """Whether a cut between two tokens falls between words: space between them, or punctuation
    on either side (`word,` | `(word`), never two pieces of one word (`embed` | `##dings`)."""
    if right[0] > left[1]:
        return True
    before, after = text[left[1] - 1:left[1]], text[right[0]:right[0] + 1]
    return not (before.isalnum() and after.isalnum())
