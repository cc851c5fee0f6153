"""GPU throughput (issue 14): hfenc vs sentence-transformers' best setting vs a model-only ceiling.

For each model it prints texts/s, tokens/s and the min row cosine to sentence-transformers float32:

- sentence-transformers fp16 (`model.half()`), `encode(batch_size=B)` for each B of --st-batches;
  the best B is its row ("best setting");
- hfenc `Embedder(dtype=bfloat16 | float16).encode(texts)`: texts in memory, as sentence-
  transformers gets them; tokenization (threaded) and the GPU overlap;
- the model-only ceiling: ids pre-tokenized, length-sorted, already on the device, the whole model
  cast to bf16 (no mixed scheme), --ceiling-tokens per batch (256k), mean pooling: what the GPU
  can do with no host work at all.

Models: all-MiniLM-L6-v2 (packaged) and a bert-base-sized model built here from
hfenc/configs/bert-base-uncased.json with random weights (no download is possible on the machines
that built this; pass --bert-base DIR for a real one), saved as a sentence-transformers folder
(mean pooling, Normalize) with MiniLM's tokenizer (the same bert-base-uncased vocabulary).

    python benchmarks/bench_gpu.py --device cuda --n 50000
    python benchmarks/bench_gpu.py --device cpu --n 200 --st-batches 32 --models minilm   # smoke test
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_embed import machine  # noqa: E402
from corpus import real_texts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_bert_base(folder: Path, tokenizer_dir: Path) -> Path:
    """A bert-base-sized sentence-transformers model with random weights (seed 0)."""
    import transformers
    from sentence_transformers import SentenceTransformer, models

    if (folder / "modules.json").is_file():
        return folder
    hf = folder / "hf"
    config = transformers.BertConfig(**{k: v for k, v in json.loads(
        (ROOT / "hfenc/configs/bert-base-uncased.json").read_text()).items() if k != "architectures"})
    torch.manual_seed(0)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(hf)
    transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(hf)
    word = models.Transformer(str(hf), max_seq_length=256)
    st = SentenceTransformer(modules=[word, models.Pooling(768, "mean"), models.Normalize()], device="cpu")
    st.save(str(folder))
    return folder


def ceiling(model_dir: Path, texts: list[str], device: str, budget: int, embedder) -> tuple[float, np.ndarray]:
    """Seconds for the whole-bf16 model alone over pre-tokenized, sorted batches on the device."""
    import transformers

    from hfenc.compute.engine import pad_rows, plan_batches

    dtype = torch.bfloat16 if device != "cpu" or embedder.device.type == "cpu" else torch.float32
    path = embedder.layout.transformer_path
    model = transformers.AutoModel.from_pretrained(str(path), dtype=dtype).to(device).eval()
    tok = embedder.tokenizer(texts, threads=4)
    order = np.argsort(-tok.lengths, kind="stable")
    batches = []
    for start, end in plan_batches(tok.lengths[order], budget):
        ids, mask = pad_rows(tok, order[start:end], embedder.tokenizer.pad_id)
        batches.append((torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device), order[start:end]))
    out = torch.empty((len(texts), model.config.hidden_size), device=device)
    with torch.inference_mode():
        model(input_ids=batches[-1][0], attention_mask=batches[-1][1])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for ids, mask, rows in batches:
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1).float() / mask.sum(1, keepdim=True).clamp(min=1)
            out[torch.from_numpy(rows).to(device)] = torch.nn.functional.normalize(pooled, dim=-1)
        sync(device)
        dt = time.perf_counter() - t0
    return dt, out.cpu().numpy()


def bench_model(name: str, model_dir: Path, texts: list[str], args) -> list[tuple]:
    import hfenc
    from sentence_transformers import SentenceTransformer

    rows = []
    ref_model = SentenceTransformer(str(model_dir), device=args.device)
    ref_model.max_seq_length = 256
    reference = ref_model.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
    del ref_model
    st = SentenceTransformer(str(model_dir), device=args.device)
    st.max_seq_length = 256
    if args.device != "cpu":
        st = st.half()
    st_label = "fp16" if args.device != "cpu" else "float32"
    best = None
    for batch in [int(b) for b in args.st_batches.split(",")]:
        st.encode(texts[:batch], batch_size=batch)  # warm-up
        sync(args.device)
        t0 = time.perf_counter()
        got = st.encode(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)
        sync(args.device)
        dt = time.perf_counter() - t0
        cos = float(np.min(np.sum(got.astype(np.float64) * reference, 1)))
        rows.append((name, f"sentence-transformers {st_label} batch {batch}", dt, cos))
        best = dt if best is None else min(best, dt)
    del st
    ntokens = None
    emb = None
    for dtype in args.dtypes.split(","):
        emb = hfenc.Embedder(str(model_dir), device=args.device, dtype=dtype, max_length=256,
                             batch_tokens=args.batch_tokens)
        emb.encode(texts[:512])  # warm-up
        sync(args.device)
        t0 = time.perf_counter()
        got = emb.encode(texts)
        sync(args.device)
        dt = time.perf_counter() - t0
        ntokens = int(emb.tokenizer(texts, threads=4).lengths.sum())
        rows.append((name, f"hfenc {emb.settings.dtype} ({emb.engine.batch_tokens:,}-token batches, "
                           f"{emb.engine.tokenize_threads} tokenizer threads)", dt,
                     float(np.min(np.sum(got.astype(np.float64) * reference, 1)))))
    dt, got = ceiling(model_dir, texts, args.device, args.ceiling_tokens, emb)
    rows.append((name, f"model-only ceiling bf16 ({args.ceiling_tokens:,}-token batches, pre-tokenized, sorted)",
                 dt, float(np.min(np.sum(got.astype(np.float64) * reference, 1)))))
    return [(r[0], r[1], r[2], r[3], ntokens, best) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--models", default="minilm,bert-base")
    ap.add_argument("--bert-base", default=None, help="a real bert-base-sized sentence-transformers folder")
    ap.add_argument("--st-batches", default="64,128,256,512")
    ap.add_argument("--dtypes", default="bfloat16,float16")
    ap.add_argument("--batch-tokens", type=int, default=None, help="hfenc's budget (default: the engine's)")
    ap.add_argument("--ceiling-tokens", type=int, default=262144)
    args = ap.parse_args()

    import hfenc

    minilm = hfenc.resolve_model(hfenc.DEFAULT_MODEL).path
    texts = real_texts(args.n)
    print(f"machine: {machine()}")
    print(f"corpus: {len(texts):,} real texts (benchmarks/corpus.py); device {args.device}")
    models = {"all-MiniLM-L6-v2": minilm}
    if "bert-base" in args.models:
        folder = Path(args.bert_base) if args.bert_base else build_bert_base(
            Path(tempfile.gettempdir()) / "hfenc-bench-bert-base", minilm)
        models["bert-base (random weights)" if not args.bert_base else "bert-base"] = folder
    if "minilm" not in args.models:
        models.pop("all-MiniLM-L6-v2")
    results = []
    for name, folder in models.items():
        t0 = time.perf_counter()
        results += bench_model(name, Path(folder), texts, args)
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr)
    print("| model | setting | texts/s | tokens/s | vs ST best | min cosine vs ST fp32 |")
    print("|---|---|---:|---:|---:|---:|")
    for name, label, dt, cos, ntok, best in results:
        print(f"| {name} | {label} | {len(texts) / dt:,.0f} | {ntok / dt:,.0f} | {best / dt:.2f}x | {cos:.6f} |")
    for name in models:
        mine = [r for r in results if r[0] == name]
        ceil = next(r[2] for r in mine if r[1].startswith("model-only"))
        for r in mine:
            if r[1].startswith("hfenc"):
                print(f"{name}: {r[1].split(' (')[0]} = {ceil / r[2]:.0%} of the model-only ceiling")


if __name__ == "__main__":
    main()
