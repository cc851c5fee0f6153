"""Which int8 scheme on OpenVINO (issue 14)? all-MiniLM-L6-v2's transformer, int8 variants against
OpenVINO float32 on the same texts. Needs the `openvino` extra (openvino, nncf).

Variants:
- static: `nncf.quantize` (ModelType.TRANSFORMER: SmoothQuant, per-tensor activation scales
  calibrated on --calib other corpus texts), optionally with every `output.dense` MatMul (the
  attention output and FFN down projections) left in float32;
- dynamic: int8 weights (`nncf.compress_weights`, INT8_ASYM per channel, no calibration) with
  activations quantized on the fly per token in groups of G channels (the CPU plugin's
  DYNAMIC_QUANTIZATION_GROUP_SIZE): what `--backend openvino --dtype int8` ships with G = 64.

Reported: texts/s (length-sorted batches of --batch-tokens), ratio to OpenVINO float32, min /
1st-percentile cosine to float32 on --n corpus texts, min cosine on hfenc's probe texts (the
guard's set: short texts are the fragile ones), and the STS-like Spearman in points.

    python benchmarks/bench_openvino_int8.py --n 2000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
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
    ap.add_argument("--calib", type=int, default=300)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    args = ap.parse_args()

    import nncf
    import openvino as ov

    import hfenc
    from hfenc.compute import openvino as openvino_backend
    from hfenc.compute import precision
    from hfenc.compute.engine import pad_rows, plan_batches

    nncf.set_log_level(logging.ERROR)
    texts = real_texts(args.n + args.calib)
    texts, calib_texts = texts[: args.n], texts[args.n :]
    emb = hfenc.Embedder(device="cpu", dtype="float32")
    tok = emb.tokenizer
    print(f"machine: {machine()}; openvino {openvino_backend.version()}, nncf {nncf.__version__}; "
          f"{len(texts):,} texts; all-MiniLM-L6-v2")

    class Pooled(torch.nn.Module):  # the whole model, mean pooling and normalisation included
        def __init__(self, pipeline):
            super().__init__()
            self.pipeline = pipeline

        def forward(self, input_ids, attention_mask):
            return self.pipeline(input_ids, attention_mask)

    probe = tok(list(precision.PROBE_TEXTS[:2]))
    ids, mask = pad_rows(probe, np.arange(2), tok.pad_id)
    with torch.no_grad():
        model = ov.convert_model(Pooled(emb.pipeline).eval(), example_input={
            "input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask.astype(np.int64))})
    core = ov.Core()
    base = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(torch.get_num_threads()),
            "PERFORMANCE_HINT": "LATENCY"}

    def batches(batch_texts, budget):
        t = tok(batch_texts)
        order = np.argsort(-t.lengths, kind="stable")
        for start, end in plan_batches(t.lengths[order], budget):
            rows = order[start:end]
            i, m = pad_rows(t, rows, tok.pad_id)
            yield rows, i, m.astype(np.int64)

    def runner(compiled):
        request = compiled.create_infer_request()

        def run(batch_texts):
            out = np.empty((len(batch_texts), emb.dim), np.float32)
            for rows, i, m in batches(list(batch_texts), args.batch_tokens):
                out[rows] = request.infer({"input_ids": i, "attention_mask": m})[0]
            return out
        return run

    calibration = nncf.Dataset([{"input_ids": i, "attention_mask": m} for _, i, m in batches(calib_texts, 256)])

    def static(ignore_output_dense: bool):
        scope = nncf.IgnoredScope(patterns=[r".*output\.dense.*"], validate=False) if ignore_output_dense else None
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            q = nncf.quantize(model, calibration, model_type=nncf.ModelType.TRANSFORMER, subset_size=10**6,
                              **({"ignored_scope": scope} if scope else {}))
        return core.compile_model(q, "CPU", base)

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        compressed = nncf.compress_weights(model.clone(), mode=nncf.CompressWeightsMode.INT8_ASYM)
    variants = {
        "OpenVINO float32": core.compile_model(model, "CPU", base),
        "static int8 (SmoothQuant, per-tensor activations)": static(False),
        "static int8, output.dense MatMuls in float32": static(True),
        "int8 weights only (no dynamic quantization)": core.compile_model(
            compressed, "CPU", {**base, "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}),
        **{f"dynamic int8, groups of {g}": core.compile_model(
            compressed, "CPU", {**base, "DYNAMIC_QUANTIZATION_GROUP_SIZE": str(g)}) for g in (32, 64, 128)},
    }
    runs = {name: runner(c) for name, c in variants.items()}
    ref_name = "OpenVINO float32"
    ref, ref_probe = runs[ref_name](texts).astype(np.float64), runs[ref_name](precision.PROBE_TEXTS).astype(np.float64)
    ref_rho = sts_spearman(runs[ref_name])
    best = {}
    for _ in range(2):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run(texts)
            best[name] = min(best.get(name, 1e9), time.perf_counter() - t0)
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| setting | texts/s | vs float32 | min cosine | p01 cosine | min cosine, probe texts | STS-like Spearman |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, run in runs.items():
        cos = (run(texts) * ref).sum(1)
        cos_probe = (run(precision.PROBE_TEXTS) * ref_probe).sum(1)
        r = sts_spearman(run)
        print(f"| {name} | {len(texts) / best[name]:,.0f} | {best[ref_name] / best[name]:.2f}x | {cos.min():.5f} | "
              f"{np.quantile(cos, 0.01):.5f} | {cos_probe.min():.5f} | {r:.4f} ({100 * (r - ref_rho):+.2f}) |")


if __name__ == "__main__":
    main()
