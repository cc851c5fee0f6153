#!/usr/bin/env bash
# Issue 14: GPU throughput of hfenc vs sentence-transformers' best setting (fp16, batch size
# swept) vs a model-only ceiling (pre-tokenized, sorted, bf16, 256k-token batches), for
# all-MiniLM-L6-v2 and a bert-base-sized model, on 50,000 real texts; prints texts/s, tokens/s and
# min cosine. Meant to finish in under 8 minutes on an H100/H200.
#
#   bash benchmarks/gpu.sh                 # on a GPU machine
#   bash benchmarks/gpu.sh --device cpu    # smoke test: 300 texts, MiniLM + bert-base, one ST batch size
#
# Extra arguments go to benchmarks/bench_gpu.py (e.g. --bert-base DIR for real weights).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export HF_HUB_OFFLINE=1
if [ "${1:-}" = "--device" ] && [ "${2:-}" = "cpu" ]; then
  shift 2
  exec timeout 900 python benchmarks/bench_gpu.py --device cpu --n 300 --st-batches 32 --dtypes bfloat16 \
    --ceiling-tokens 4096 "$@"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 python benchmarks/bench_gpu.py --device cuda --n 50000 "$@"
