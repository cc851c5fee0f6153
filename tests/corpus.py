"""Real English text for tests and benchmarks, from the Python docs shipped with the stdlib.

`pydoc_data.topics.topics` holds the reference manual's topics as plain text (the text `help()`
shows). `real_sentences(n)` cuts it into a deterministic mix of items:

- headings (a few words),
- single sentences,
- whole paragraphs,
- runs of consecutive paragraphs joined into one long text (hundreds of word pieces, so a
  256-token model truncates them).

Code blocks (indented lines), grammar productions and heading underlines are dropped; whitespace
is collapsed. The same Python installation always gives the same list.
"""

from __future__ import annotations

import re
from functools import lru_cache

_UNDERLINE = re.compile(r"^[*=\-~^\"]{3,}$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(])")
_LONG_CHARS = 2000  # ~400+ word pieces for English prose: well past a 256-token limit


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _is_prose(block: str) -> bool:
    lines = block.splitlines()
    if any(line.startswith((" ", "\t")) for line in lines):  # code, grammar, literal blocks
        return False
    text = _clean(block)
    letters = sum(c.isalpha() for c in text)
    return len(text) >= 20 and letters >= 0.6 * len(text) and " " in text


@lru_cache(maxsize=1)
def _pools() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    from pydoc_data.topics import topics

    headings: list[str] = []
    sentences: list[str] = []
    paragraphs: list[str] = []
    long_texts: list[str] = []
    seen: set[str] = set()

    def add(pool: list[str], text: str) -> None:
        if text and text not in seen:
            seen.add(text)
            pool.append(text)

    for key in sorted(topics):
        run: list[str] = []  # consecutive prose paragraphs of this topic
        for block in re.split(r"\n\s*\n", topics[key]):
            lines = block.strip("\n").splitlines()
            if len(lines) == 2 and _UNDERLINE.match(lines[1].strip()):
                add(headings, _clean(lines[0]))
                continue
            if not _is_prose(block):
                continue
            para = _clean(block)
            parts = [s for s in _SENTENCE_END.split(para) if len(s.split()) >= 3]
            for sentence in parts:
                add(sentences, sentence)
            if len(parts) >= 2:
                add(paragraphs, para)
            run.append(para)
            if sum(map(len, run)) >= _LONG_CHARS:
                add(long_texts, " ".join(run))
                run = []
    return tuple(headings), tuple(sentences), tuple(paragraphs), tuple(long_texts)


# Out of every 40 items: 4 headings, 29 sentences, 6 paragraphs, 1 long multi-paragraph text
# (1,200 items: ~44k MiniLM word pieces after truncation at 256, 30 of them truncated).
_PATTERN = "hsssspsssshssspsssshssssspsssshsspsssspl"


def real_sentences(n: int) -> list[str]:
    """`n` real English texts (n <= ~3,000) of mixed length, deterministic, no duplicates."""
    pools = dict(zip("hspl", _pools()))
    cursor = dict.fromkeys(pools, 0)
    out: list[str] = []
    i = 0
    while len(out) < n:
        kind = _PATTERN[i % len(_PATTERN)]
        i += 1
        if cursor[kind] >= len(pools[kind]):
            if all(cursor[k] >= len(pools[k]) for k in pools):
                raise ValueError(f"the stdlib docs give only {len(out)} texts; asked for {n}")
            continue
        out.append(pools[kind][cursor[kind]])
        cursor[kind] += 1
    return out


if __name__ == "__main__":
    import sys

    texts = real_sentences(int(sys.argv[1]) if len(sys.argv) > 1 else 1200)
    lengths = sorted(len(t.split()) for t in texts)
    print(f"{len(texts)} texts; words min {lengths[0]}, median {lengths[len(lengths) // 2]}, "
          f"max {lengths[-1]}; > 200 words: {sum(x > 200 for x in lengths)}")
    for t in texts[:20]:
        print(repr(t[:120]))
