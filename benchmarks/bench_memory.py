"""Peak RSS of `hfenc embed` does not grow with the input (issue 5).

Runs the real command in a subprocess on inputs of increasing size and reads each child's peak
RSS from os.wait4. Model: a small random BERT (2 layers, width 64) with all-MiniLM-L6-v2's real
tokenizer, built locally; optionally the real all-MiniLM-L6-v2 (--minilm). Inputs repeat a real
corpus to the requested line count.

    python benchmarks/bench_memory.py --lines 100000,1000000
    python benchmarks/bench_memory.py --lines 20000,200000 --minilm
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import real_texts  # noqa: E402


def small_model(directory: Path) -> Path:
    import torch
    import transformers

    import hfenc

    minilm = hfenc.resolve_model(hfenc.DEFAULT_MODEL).path
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm))
    config = transformers.BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=128, max_position_embeddings=512)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def run(cmd: list[str]) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{' '.join(cmd)} failed ({code}): {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024, code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", default="100000,1000000")
    ap.add_argument("--minilm", action="store_true", help="use the real all-MiniLM-L6-v2")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hfenc-mem-"))
    model = "sentence-transformers/all-MiniLM-L6-v2" if args.minilm else str(small_model(tmp / "model"))
    base = real_texts(20000)
    hfenc_cmd = [sys.executable, "-m", "hfenc"]
    print(f"model: {'all-MiniLM-L6-v2' if args.minilm else 'random BERT, 2 layers, width 64, MiniLM tokenizer'}")
    print("| lines | input MB | seconds | texts/s | peak RSS |")
    print("|---:|---:|---:|---:|---:|")
    for n in (int(x) for x in args.lines.split(",")):
        src = tmp / f"in-{n}.txt"
        with open(src, "w", encoding="utf-8") as fh:
            for i in range(n):
                fh.write(base[i % len(base)] + "\n")
        seconds, peak, _ = run([*hfenc_cmd, "embed", str(src), "-m", model, "--device", "cpu", "-q", "--force"])
        print(f"| {n:,} | {src.stat().st_size / 1e6:,.0f} | {seconds:,.1f} | {n / seconds:,.0f} | {peak / 2**20:,.0f} MiB |",
              flush=True)
        src.unlink()
    if not args.keep:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
