"""Issue 23 on a GPU: chunked jobs' numbers (against sentence-transformers; late chunking against
transformers' own forward pass) and speed (the cutting pass against embedding on the device).

    python benchmarks/gpu_chunks.py cuda 2000 MODEL_DIR TEXTS_FILE

Records: SCALE (2000) of 40 lines of TEXTS_FILE each, drawn with a fixed seed. MODEL_DIR: an
all-MiniLM-L6-v2 folder (the figures in benchmarks/README.md used one whose weights were stored in
bf16 to travel to the GPU machine: sentence-transformers and transformers load it in float32
here, as hfenc does). `cpu 12` runs the same on a CPU, small.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

DEVICE = sys.argv[1] if len(sys.argv) > 1 else "cuda"
SCALE = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
MODEL = sys.argv[3] if len(sys.argv) > 3 else ".devbench/minilm"
work = Path("/tmp/g23")
work.mkdir(exist_ok=True)
texts = Path(sys.argv[4] if len(sys.argv) > 4 else ".devbench/texts.txt").read_text(encoding="utf-8").splitlines()
rng = np.random.default_rng(0)
docs = [" ".join(texts[j] for j in rng.choice(len(texts), 40, replace=False)) for _ in range(SCALE)]
src = work / "docs.jsonl"
src.write_text("".join(json.dumps({"id": f"d{i}", "text": d}) + "\n" for i, d in enumerate(docs)))

from hfenc import ChunkOptions, Embedder, InputSpec, JobOptions, embed_file  # noqa: E402
from hfenc.io.inputs import scan  # noqa: E402
from hfenc.jobs.chunked import chunker_for, make_plan  # noqa: E402

print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("cpu cores", os.cpu_count())


def job(out, model, chunking):
    t0 = time.perf_counter()
    r = embed_file(JobOptions(InputSpec(str(src), id_field="id"), work / out, force=True, chunking=chunking), model)
    return r, time.perf_counter() - t0


# ---- speed: default dtype (auto: bf16 on the GPU)
auto = Embedder(MODEL, device=DEVICE)
print("auto dtype", auto.settings.dtype, "batch_tokens", auto.settings.batch_tokens)
spec = InputSpec(str(src)); info = scan(spec)
chunker = chunker_for(auto, ChunkOptions(256, 32))
t0 = time.perf_counter(); plan = make_plan(spec, info, chunker, work / "plan.bin", None); cut = time.perf_counter() - t0
tokens = sum(len(e.ids) for e in chunker.bare.encode_batch(docs, add_special_tokens=False))
print(f"cutting: {SCALE} records, {tokens:,} tokens -> {plan.rows:,} chunks in {cut:.2f} s ({tokens / cut:,.0f} tokens/s)")
job("warm.npy", auto, ChunkOptions(256, 32))  # warm-up (cuda kernels)
for name, chunking in (("plain 256/32", ChunkOptions(256, 32)), ("late 256/32", ChunkOptions(256, 32, late=True)),
                       ("truncate (no chunking)", None)):
    r, seconds = job("speed.npy", auto, chunking)
    print(f"{name}: rows {r.rows:,}, job {seconds:.2f} s, embed {r.embed_seconds:.2f} s, tokens {r.tokens:,}, "
          f"{r.tokens / r.embed_seconds:,.0f} tokens/s embedding")

# ---- numbers: float32
f32 = Embedder(MODEL, device=DEVICE, dtype="float32")
r, _ = job("f32.npy", f32, ChunkOptions(128, 16))
table = np.loadtxt(work / "f32.chunks.tsv", dtype=np.int64, skiprows=1)
chunk_texts = [docs[d][a:b] for d, a, b in table[:, [1, 3, 4]]][:3000]
from sentence_transformers import SentenceTransformer  # noqa: E402

st = SentenceTransformer(MODEL, device=DEVICE, model_kwargs={"dtype": torch.float32})  # weights stored in bf16
t0 = time.perf_counter()
expected = st.encode(chunk_texts, batch_size=128)
print(f"sentence-transformers float32 on {len(chunk_texts)} chunk texts: {time.perf_counter() - t0:.2f} s")
print("plain chunks vs sentence-transformers (float32): max abs diff",
      float(np.abs(np.load(work / "f32.npy")[:len(chunk_texts)] - expected).max()))

# late chunking: short records (one pass) against transformers' own forward pass
from transformers import AutoModel, AutoTokenizer  # noqa: E402

short = [" ".join(texts[i:i + 4]) for i in range(0, 400, 4)]
short = [d for d in short if len(AutoTokenizer.from_pretrained(MODEL)(d)["input_ids"]) <= 256][:60]
src_short = work / "short.jsonl"
src_short.write_text("".join(json.dumps({"text": d}) + "\n" for d in short))
out = work / "late.npy"
embed_file(JobOptions(InputSpec(str(src_short)), out, force=True, chunking=ChunkOptions(48, 8, late=True)), f32)
late, plan_rows = np.load(out), np.loadtxt(work / "late.chunks.tsv", dtype=np.int64, skiprows=1, ndmin=2)
tok = AutoTokenizer.from_pretrained(MODEL)
model = AutoModel.from_pretrained(MODEL, dtype=torch.float32).to(DEVICE).eval()
worst = 0.0
for d, text in enumerate(short):
    enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"].to(DEVICE),
                       attention_mask=enc["attention_mask"].to(DEVICE)).last_hidden_state[0].float().cpu()
    ends = enc["offset_mapping"][0][:, 1].numpy()
    real = enc["special_tokens_mask"][0].numpy() == 0
    for row in plan_rows[plan_rows[:, 1] == d]:
        inside = real & (ends > row[3]) & (ends <= row[4])
        vec = torch.nn.functional.normalize(hidden[torch.from_numpy(inside)].mean(0), dim=0).numpy()
        worst = max(worst, float(np.abs(late[row[0]] - vec).max()))
print(f"late chunking vs transformers (float32, {len(plan_rows)} chunks of {len(short)} records): max abs diff {worst:.2e}")
r, _ = job("late_auto.npy", auto, ChunkOptions(256, 32, late=True))
r2, _ = job("late_f32.npy", f32, ChunkOptions(256, 32, late=True))
a, b = np.load(work / "late_auto.npy"), np.load(work / "late_f32.npy")
print(f"late chunking {auto.settings.dtype} vs float32: min cosine {float((a * b).sum(1).min()):.5f} over {len(a):,} chunks")
