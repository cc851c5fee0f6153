"""hfenc vs sentence-transformers on the same corpus, model and device, alternating in one run.

hfenc is timed end to end as a user runs it: a text file on disk -> `embed_file` -> a finished
.npy with its sidecar (model loaded beforehand, like sentence-transformers'). sentence-transformers
is timed on `encode(texts)` with the texts already in memory. For each setting it prints
texts/s, tokens/s, the speed ratio to sentence-transformers, the minimum row cosine to
sentence-transformers float32, and the process's peak RSS during the run. A setting is a compute
dtype, or BACKEND:DTYPE for another backend (openvino:int8); with --sts, also each setting's
STS-like Spearman (tests/data/sts_pairs.tsv) and its distance from the first setting in points.

    python benchmarks/bench_embed.py --n 4000 --device cpu --dtypes float32,bfloat16
    python benchmarks/bench_embed.py --n 2000 --dtypes float32,openvino:float32,openvino:bfloat16,openvino:int8 --sts
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from corpus import real_texts, sts_spearman  # noqa: E402


class PeakRSS:
    """Peak resident set size of the process while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}"


def model_ceiling(embedder, texts: list[str]) -> float:
    """Seconds for the model alone: pre-tokenized, length-sorted batches already on the device."""
    from hfenc.compute.engine import pad_rows, plan_batches

    engine = embedder.engine
    tok = engine.tokenizer(texts)
    order = np.argsort(-tok.lengths, kind="stable")
    batches = []
    for start, end in plan_batches(tok.lengths[order], engine.batch_tokens):
        ids, mask = pad_rows(tok, order[start:end], engine.tokenizer.pad_id)
        batches.append((torch.from_numpy(ids).to(engine.device), torch.from_numpy(mask).to(engine.device)))
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        engine.module(*batches[-1])  # warm-up
        sync()
        t0 = time.perf_counter()
        for ids, mask in batches:
            engine.module(ids, mask)
        sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model dir (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="hfenc compute dtypes to run")
    ap.add_argument("--st-batch", type=int, default=32)
    ap.add_argument("--st-dtype", default="float32", help="sentence-transformers dtype (float32/float16)")
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is reported")
    ap.add_argument("--ceiling", action="store_true", help="also time the model alone (GPU ceiling)")
    ap.add_argument("--sts", action="store_true", help="also the STS-like Spearman of each setting")
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    import hfenc
    from hfenc.io.inputs import InputSpec
    from hfenc.jobs.local import JobOptions, embed_file

    model = args.model or str(hfenc.resolve_model(hfenc.DEFAULT_MODEL).path)
    texts = real_texts(args.n)
    tmp = Path(tempfile.mkdtemp(prefix="hfenc-bench-"))
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    print(f"machine: {machine()}")
    print(f"corpus: {len(texts)} texts, {corpus.stat().st_size / 1e6:.1f} MB; model: {model}; device: {args.device}")

    st = SentenceTransformer(model, device=args.device)
    st_ref32 = SentenceTransformer(model, device=args.device)
    if args.st_dtype == "float16":
        st = st.half()
    reference = st_ref32.encode(texts, batch_size=args.st_batch, normalize_embeddings=True, convert_to_numpy=True)
    embedders = {}
    for setting in args.dtypes.split(","):
        backend, _, dtype = setting.rpartition(":")
        emb = hfenc.Embedder(model, device=args.device, dtype=dtype, batch_tokens=args.batch_tokens,
                             backend=backend or "torch")
        name = f"{backend} {emb.settings.dtype}".strip() + f" ({emb.settings.batch_tokens:,}-token batches)"
        embedders[name if name not in embedders else f"{name} [asked: {setting}]"] = emb
    ntokens = None
    best: dict[str, tuple[float, int]] = {}
    cosines: dict[str, float] = {}
    for _ in range(args.rounds):
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            st.encode(texts, batch_size=args.st_batch, normalize_embeddings=True, convert_to_numpy=True)
            dt = time.perf_counter() - t0
        key = f"sentence-transformers {args.st_dtype} batch {args.st_batch}"
        best[key] = min(best.get(key, (dt, rss.peak)), (dt, rss.peak))
        for name, emb in embedders.items():
            out = tmp / f"hfenc-{name}.npy"
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                result = embed_file(JobOptions(InputSpec(str(corpus)), out, force=True), emb)
                dt = time.perf_counter() - t0
            ntokens = result.tokens
            key = f"hfenc {name}"
            best[key] = min(best.get(key, (dt, rss.peak)), (dt, rss.peak))
            got = np.load(out)
            cosines[key] = float(np.min(np.sum(got * reference, axis=1)))
    if args.ceiling:
        for name, emb in embedders.items():
            best[f"model-only ceiling {name}"] = (min(model_ceiling(emb, texts) for _ in range(args.rounds)), 0)
    base = best[f"sentence-transformers {args.st_dtype} batch {args.st_batch}"][0]
    first = best[f"hfenc {next(iter(embedders))}"][0]
    rho = {f"hfenc {k}": sts_spearman(e.encode) for k, e in embedders.items()} if args.sts else {}
    rho0 = next(iter(rho.values()), 0.0)
    print(f"tokens (hfenc tokenizer, after truncation): {ntokens:,}; load average {os.getloadavg()[0]:.1f}")
    print(f"| setting | texts/s | tokens/s | vs ST | vs first hfenc | min cosine vs ST fp32 |{' STS-like Spearman |' * bool(rho)} peak RSS during run |")
    print(f"|---|---:|---:|---:|---:|---:|{'---:|' * bool(rho)}---:|")
    for key, (dt, peak) in best.items():
        cos = cosines.get(key)
        sts = (f" {rho[key]:.4f} ({100 * (rho[key] - rho0):+.2f}) |" if key in rho else " - |") if rho else ""
        print(f"| {key} | {len(texts) / dt:,.0f} | {ntokens / dt:,.0f} | {base / dt:.2f}x | "
              f"{'-' if key not in cosines else f'{first / dt:.2f}x'} | "
              f"{'-' if cos is None else f'{cos:.6f}'} |{sts} {'-' if not peak else f'{peak / 2**20:,.0f} MiB'} |")
    print("(peak RSS is the whole benchmark process, both libraries loaded; see bench_memory.py for hfenc alone)")


if __name__ == "__main__":
    main()
