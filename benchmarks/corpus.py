"""A large corpus of real English text of mixed length, built offline from docstrings on disk.

Sources, in order: the docstrings of the Python standard library, then those of the installed
packages (numpy, torch, transformers, ...), read with `ast` (nothing is imported or executed).
Each docstring is cut into paragraphs; code, doctest and table lines are dropped. The mix keeps
short texts (titles and first lines, a few words), single sentences, paragraphs and long runs
of paragraphs (hundreds of tokens), like a real corpus for search or RAG. Deterministic for a
given Python installation; what it gives depends on what is installed (the benchmark README
records the machine).
"""

from __future__ import annotations

import ast
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

_SKIP_LINE = re.compile(r"^\s*(>>>|\.\.\.|[-=*~^`|#]{3,}|\+[-+]+|Args:|Returns:|Raises:|Example|\$ )")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _roots() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    roots = [stdlib]
    roots += [site / name for name in ("numpy", "torch", "transformers", "huggingface_hub", "rich", "typer")]
    return [r for r in roots if r.is_dir()]


def _docstrings(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "tests" in path.parts or "site-packages" in path.parts[len(root.parts):]:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


def _paragraphs(doc: str) -> Iterator[str]:
    for block in re.split(r"\n\s*\n", doc):
        lines = block.splitlines()
        if not lines or any(_SKIP_LINE.match(l) or l.startswith(("    ", "\t")) for l in lines):
            continue
        text = " ".join(l.strip() for l in lines)
        letters = sum(c.isalpha() for c in text)
        if len(text) >= 12 and letters >= 0.7 * len(text) and " " in text:
            yield text


def real_texts(n: int) -> list[str]:
    """`n` distinct real texts, mixed: ~25% short, ~45% one sentence, ~25% paragraph, ~5% long."""
    seen: set[str] = set()
    out: list[str] = []
    run: list[str] = []

    def add(text: str) -> None:
        if text not in seen and len(out) < n:
            seen.add(text)
            out.append(text)

    for root in _roots():
        for doc in _docstrings(root):
            paras = list(_paragraphs(doc))
            for para in paras:
                sentences = _SENTENCE_END.split(para)
                if len(sentences[0].split()) <= 8:
                    add(sentences[0])  # a title-like first line
                for sentence in sentences[1:]:
                    add(sentence)
                if len(sentences) >= 2:
                    add(para)
                run.append(para)
                if sum(len(p) for p in run) > 2500:  # a long passage, several hundred tokens
                    add(" ".join(run))
                    run = []
            if len(out) >= n:
                return out
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct texts found on this machine; asked for {n}")
    return out


def sts_spearman(encode) -> float:
    """Spearman of `encode`'s cosines against the 0-5 grades of the 150 STS-like pairs in
    tests/data/sts_pairs.tsv (what the int8 benchmarks report, in points of 0.01)."""
    import numpy as np
    from scipy.stats import spearmanr

    sts = Path(__file__).resolve().parents[1] / "tests" / "data" / "sts_pairs.tsv"
    rows = [line.split("\t") for line in sts.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    a = np.asarray(encode([r[1] for r in rows]), dtype=np.float64)
    b = np.asarray(encode([r[2] for r in rows]), dtype=np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(spearmanr(cos, [float(r[0]) for r in rows]).statistic)


if __name__ == "__main__":
    texts = real_texts(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
    words = sorted(len(t.split()) for t in texts)
    print(f"{len(texts)} texts; words: min {words[0]}, median {words[len(words) // 2]}, "
          f"mean {sum(words) / len(words):.1f}, max {words[-1]}; over 200 words: {sum(w > 200 for w in words)}")
