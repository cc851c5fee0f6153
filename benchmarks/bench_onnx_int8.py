"""int8 through ONNX Runtime (issue 14): dynamic int8 of all-MiniLM-L6-v2's transformer, against
hfenc float32 on the same texts. Not a dependency of hfenc: it needs
`pip install onnx onnxruntime onnxscript` beside the project's environment.

The transformer is exported with torch.onnx's dynamo exporter (the legacy TorchScript exporter
traces transformers 5's attention mask wrongly: min cosine 0.85 to torch even in float32), then
quantized by `onnxruntime.quantization.quantize_dynamic` (int8 weights, per channel or per
tensor; uint8 activations with one dynamic scale per tensor). ONNX Runtime runs length-sorted
batches of 32 with 2 intra-op threads; mean pooling and normalization in numpy. Reported:
texts/s, ratio to hfenc float32 (`Embedder.encode`, texts in memory), min / 1st-percentile
cosine to hfenc float32, and the STS-like Spearman (tests/data/sts_pairs.tsv) in points.

    python benchmarks/bench_onnx_int8.py --n 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_embed import machine  # noqa: E402
from corpus import real_texts, sts_spearman  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import logging

    import onnxruntime as ort
    import transformers
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import hfenc

    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's pre-processing advice
    folder = str(hfenc.resolve_model(hfenc.DEFAULT_MODEL).path)
    texts = real_texts(args.n)
    print(f"machine: {machine()}; {len(texts):,} texts; all-MiniLM-L6-v2; onnxruntime {ort.__version__}")

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    work = Path(tempfile.mkdtemp(prefix="hfenc-onnx-"))
    fp32 = work / "model.onnx"
    example = tok(["hello world", "a longer text than that one"], padding=True, return_tensors="pt")
    dims = {0: "batch", 1: "sequence"}
    torch.onnx.export(Hidden(model), (example["input_ids"], example["attention_mask"]), str(fp32),
                      input_names=["input_ids", "attention_mask"], output_names=["hidden"],
                      dynamic_axes={"input_ids": dims, "attention_mask": dims, "hidden": dims}, dynamo=True)
    files = {"onnxruntime float32": fp32}
    for name, per_channel in (("onnxruntime int8 per-channel", True), ("onnxruntime int8 per-tensor", False)):
        files[name] = work / f"{name.split()[-1]}.onnx"
        quantize_dynamic(str(fp32), str(files[name]), weight_type=QuantType.QInt8, per_channel=per_channel)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    sessions = {k: ort.InferenceSession(str(v), options, providers=["CPUExecutionProvider"]) for k, v in files.items()}

    def run(session, batch_texts: list[str]) -> np.ndarray:
        enc = tok(batch_texts, truncation=True, max_length=256)
        order = np.argsort([len(x) for x in enc["input_ids"]], kind="stable")
        out = np.zeros((len(batch_texts), model.config.hidden_size), np.float32)
        for i in range(0, len(order), 32):
            rows = order[i:i + 32]
            width = max(len(enc["input_ids"][r]) for r in rows)
            ids = np.zeros((len(rows), width), np.int64)
            mask = np.zeros((len(rows), width), np.int64)
            for k, r in enumerate(rows):
                n = len(enc["input_ids"][r])
                ids[k, :n], mask[k, :n] = enc["input_ids"][r], 1
            hidden = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            vec = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out[rows] = vec / np.linalg.norm(vec, axis=1, keepdims=True)
        return out

    embedder = hfenc.Embedder(folder, device="cpu", dtype="float32")
    runs = {"hfenc float32": embedder.encode, **{k: (lambda t, s=s: run(s, t)) for k, s in sessions.items()}}
    best, outs = {}, {}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            outs[name] = fn(texts)
            best[name] = min(best.get(name, 1e9), time.perf_counter() - t0)

    ref, ref_rho = outs["hfenc float32"].astype(np.float64), sts_spearman(runs["hfenc float32"])
    print("| setting | texts/s | vs hfenc float32 | min cosine | p01 cosine | STS-like Spearman |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, fn in runs.items():
        cos = (outs[name] * ref).sum(1)
        r = sts_spearman(fn)
        print(f"| {name} | {len(texts) / best[name]:,.0f} | {best['hfenc float32'] / best[name]:.2f}x | "
              f"{cos.min():.5f} | {np.quantile(cos, 0.01):.5f} | {r:.4f} ({100 * (r - ref_rho):+.2f}) |")


if __name__ == "__main__":
    main()
