"""Sparse (SPLADE) embeddings: parity with sentence-transformers, speed, and memory on many rows.

The model is a SPLADE SparseEncoder of realistic size with random weights, built offline by
sentence-transformers itself (benchmarks/make_splade.py: BERT-base, the real 30,522-token WordPiece
vocabulary, the MLM bias shifted so that a passage has a few hundred active dimensions). The texts
are benchmarks/corpus.py's real texts. Three parts (``--only``):

- parity: N texts through ``SparseEncoder(model_kwargs={"dtype": torch.float32})``'s
  ``encode_document`` / ``encode_query`` (batch 32) and hfenc's ``Embedder(dtype="float32",
  side="document" / "query").encode``. Per side: the max abs difference over all entries, the rows
  whose active sets (values > 1e-6) differ, how many entries differ and the largest value any of
  them has on either side (near 0: a logit at the threshold), and the mean active dimensions.
- speed: ``SparseEncoder.encode(texts, batch_size=32)`` (its default batch) against hfenc's
  ``Embedder.encode(texts)``, float32, plus hfenc ``dtype="bfloat16"`` when torch reports native
  bf16 on this CPU (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``). Both in one process with the
  model loaded and warmed up on a few texts, alternating, best of ``--rounds`` (as bench_embed.py);
  texts already in memory on both sides. Each row's cosine to sentence-transformers float32 and the
  max abs difference come from the timed outputs.
- memory: ``hfenc embed FILE -m SMALL -o out.npz`` as a subprocess on ROWS/10 and ROWS lines of
  short real texts (the corpus's texts of at most 32 words, repeated), with the small SPLADE model
  (make_splade.py --size small: same vocabulary, 4 layers of width 256) so that a million rows take
  minutes; peak RSS of the child from os.wait4 (as bench_memory.py). Every output is read back
  with ``scipy.sparse.load_npz`` and hfenc's ``CsrNpz`` (shape, nnz, the two agree), and its first
  rows are compared with ``Embedder.encode`` of the same texts.

The output is markdown tables ready for benchmarks/README.md, with the machine (lscpu's model
name, the AVX-512 / BF16 / AMX flags) and the package versions.

    python benchmarks/bench_sparse.py --only parity,speed --n 1000 --rounds 2
    python benchmarks/bench_sparse.py --only memory --memory 1000000
    python benchmarks/bench_sparse.py --size small --n 50 --rounds 1 --memory 2000   # a quick check
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from corpus import real_texts  # noqa: E402

EPS = 1e-6  # a dimension is active when its value exceeds this
THREADS = [torch.get_num_threads()]  # CPU threads for both libraries (--threads; default torch's own)
PARTS = ("parity", "speed", "memory")
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


# ---- the machine --------------------------------------------------------------------------------

def machine() -> str:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                name = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except (OSError, subprocess.CalledProcessError):
        pass
    if not flags:
        try:
            with open("/proc/cpuinfo") as fh:
                flags = set(next(l for l in fh if l.startswith("flags")).split(":", 1)[1].split())
        except (OSError, StopIteration):
            pass
    have = [f for f in FLAGS if f in flags]
    lacks = [f for f in FLAGS if f not in flags]
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    import sentence_transformers
    import transformers

    return (f"{name}, {os.cpu_count()} cores; flags: {' '.join(have) or 'none of ' + ', '.join(FLAGS)}"
            f"{'; lacks ' + ' '.join(lacks) if lacks else ''}; torch native bf16: {bf16}; "
            f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; "
            f"torch {torch.__version__}, transformers {transformers.__version__}, "
            f"sentence-transformers {sentence_transformers.__version__}")


def native_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# ---- the two libraries --------------------------------------------------------------------------

def load_st(model: str):
    """Loaded as the parity tests do: float32, CPU, offline."""
    from sentence_transformers import SparseEncoder

    return SparseEncoder(model, device="cpu", local_files_only=True, model_kwargs={"dtype": torch.float32})


def st_csr(st, texts: list[str], side: str | None, batch_size: int):
    """sentence-transformers' rows as a scipy CSR matrix (float32)."""
    from scipy import sparse

    encode = {None: st.encode, "query": st.encode_query, "document": st.encode_document}[side]
    torch.set_num_threads(THREADS[0])  # hfenc's embedders run with the same count
    out = encode(texts, batch_size=batch_size, convert_to_tensor=True, convert_to_sparse_tensor=True,
                 show_progress_bar=False)
    return coo_to_csr(out, sparse)


def coo_to_csr(out: torch.Tensor, sparse):
    out = out.coalesce()
    idx = out.indices().numpy()
    return sparse.csr_matrix((out.values().float().numpy(), (idx[0], idx[1])), shape=tuple(out.shape))


def hfenc_embedder(model: str, dtype: str, side: str | None = None, threads: int | None = None):
    from hfenc.compute.embedder import Embedder

    return Embedder(model, device="cpu", dtype=dtype, side=side, threads=THREADS[0] if threads is None else threads)


# ---- comparing rows -----------------------------------------------------------------------------

def compare(ref, got, block: int = 512) -> dict:
    """Row-by-row comparison of two CSR matrices of the same shape (ref: sentence-transformers)."""
    assert ref.shape == got.shape, (ref.shape, got.shape)
    max_abs, rows_differ, entries_differ, largest_differing = 0.0, 0, 0, 0.0
    cosines = []
    for start in range(0, ref.shape[0], block):
        a = ref[start:start + block].toarray()
        b = got[start:start + block].toarray()
        if a.size:
            max_abs = max(max_abs, float(np.abs(a - b).max()))
        xor = (a > EPS) != (b > EPS)
        per_row = xor.sum(axis=1)
        rows_differ += int((per_row > 0).sum())
        entries_differ += int(per_row.sum())
        if xor.any():
            largest_differing = max(largest_differing, float(np.maximum(np.abs(a[xor]), np.abs(b[xor])).max()))
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        na, nb = np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1)
        both = (na > 0) & (nb > 0)
        cos = np.where(both, (a64 * b64).sum(axis=1) / np.where(both, na * nb, 1.0), (na == nb).astype(np.float64))
        cosines.append(cos)
    active_ref = np.diff((ref > EPS).tocsr().indptr) if ref.shape[0] else np.zeros(0)
    active_got = np.diff((got > EPS).tocsr().indptr) if got.shape[0] else np.zeros(0)
    cos = np.concatenate(cosines) if cosines else np.ones(0)
    return {"max_abs": max_abs, "rows_differ": rows_differ, "entries_differ": entries_differ,
            "largest_differing": largest_differing, "active_ref": active_ref, "active_got": active_got,
            "min_cosine": float(cos.min()) if len(cos) else 1.0}


def spread(active: np.ndarray) -> str:
    if not len(active):
        return "-"
    return f"{active.mean():,.1f} ({int(active.min())} / {int(np.median(active))} / {int(active.max())})"


# ---- parts --------------------------------------------------------------------------------------

def part_parity(model: str, texts: list[str], args) -> None:
    print(f"\n### Parity: hfenc float32 vs sentence-transformers float32, {len(texts):,} real texts\n")
    print(f"    python benchmarks/bench_sparse.py --only parity --n {len(texts)}{args.model_flag}\n")
    st = load_st(model)
    rows = []
    for side in ("document", "query"):
        ref = st_csr(st, texts, side, args.st_batch)
        emb = hfenc_embedder(model, "float32", side, args.threads)
        got = emb.encode(texts).to_scipy()
        del emb
        gc.collect()
        rows.append((side, compare(ref, got)))
    del st
    gc.collect()
    print("| side | rows | max abs diff | rows whose active set differs (> 1e-6) | entries that differ | "
          "largest value of a differing entry | active dims, ST: mean (min / median / max) | active dims, hfenc |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for side, c in rows:
        print(f"| {side} | {len(texts):,} | {c['max_abs']:.2e} | {c['rows_differ']:,} | {c['entries_differ']:,} | "
              f"{c['largest_differing']:.2e} | {spread(c['active_ref'])} | {spread(c['active_got'])} |")


def part_speed(model: str, texts: list[str], args) -> None:
    from scipy import sparse

    st = load_st(model)
    settings = {"float32": hfenc_embedder(model, "float32", None, args.threads)}
    bf16_note = ""
    if "bfloat16" in args.dtypes:
        if native_bf16():
            emb = hfenc_embedder(model, "bfloat16", None, args.threads)
            settings[f"{emb.settings.dtype} ({emb.settings.batch_tokens:,}-token batches)"] = emb
        else:
            bf16_note = ("bfloat16 not run: this CPU has no native bf16 "
                         "(torch.ops.mkldnn._is_mkldnn_bf16_supported() is False)")
    first = settings.pop("float32")
    settings = {f"float32 ({first.settings.batch_tokens:,}-token batches)": first, **settings}
    tokenized = first.engine.tokenizer(texts)
    ntokens = int(tokenized.lengths.sum())
    truncated = int((tokenized.lengths >= first.max_length).sum())
    warm = texts[:16]
    torch.set_num_threads(THREADS[0])
    st.encode(warm, batch_size=args.st_batch, show_progress_bar=False)
    for emb in settings.values():
        emb.encode(warm)
    st_key = f"sentence-transformers float32 batch {args.st_batch}"
    best: dict[str, float] = {}
    outputs: dict[str, object] = {}
    for _ in range(args.rounds):
        torch.set_num_threads(THREADS[0])  # hfenc's embedders run with the same count
        t0 = time.perf_counter()
        out = st.encode(texts, batch_size=args.st_batch, show_progress_bar=False)
        best[st_key] = min(best.get(st_key, float("inf")), time.perf_counter() - t0)
        outputs[st_key] = out
        for name, emb in settings.items():
            t0 = time.perf_counter()
            rows = emb.encode(texts)
            key = f"hfenc {name}"
            best[key] = min(best.get(key, float("inf")), time.perf_counter() - t0)
            outputs[key] = rows
    ref = coo_to_csr(outputs[st_key], sparse)
    checks = {key: compare(ref, rows.to_scipy()) for key, rows in outputs.items() if key != st_key}
    base = best[st_key]
    print(f"\n### Speed: hfenc vs sentence-transformers, {len(texts):,} real texts, {ntokens:,} tokens "
          f"({truncated} truncated at {first.max_length})\n")
    print(f"    python benchmarks/bench_sparse.py --only speed --n {len(texts)} --rounds {args.rounds}"
          f"{' --dtypes ' + ','.join(args.dtypes) if args.dtypes != ['float32', 'bfloat16'] else ''}{args.model_flag}\n")
    print("| setting | texts/s | tokens/s | vs ST | min cosine vs ST fp32 | max abs diff vs ST fp32 | "
          "rows whose active set differs | mean active dims |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, dt in best.items():
        c = checks.get(key)
        active = np.diff((ref > EPS).tocsr().indptr) if c is None else c["active_got"]
        print(f"| {key} | {len(texts) / dt:,.1f} | {ntokens / dt:,.0f} | {base / dt:.2f}x | "
              f"{'-' if c is None else format(c['min_cosine'], '.6f')} | {'-' if c is None else format(c['max_abs'], '.2e')} | "
              f"{'-' if c is None else format(c['rows_differ'], ',')} | {active.mean():,.1f} |")
    print(f"\nBest of {args.rounds} alternating round(s) in one process, after a warm-up on 16 texts; "
          f"both libraries on {THREADS[0]} CPU thread(s); load average {os.getloadavg()[0]:.1f}.")
    if bf16_note:
        print(bf16_note)


def run_child(cmd: list[str], log: Path) -> tuple[float, int, int, str]:
    """Run `cmd`; (seconds, peak RSS in bytes, exit code, stderr). The peak is the child's VmHWM,
    read from /proc every 20 ms while it runs (the high-water mark only grows, so the last read
    misses at most the final 20 ms). Not os.wait4's ru_maxrss: Linux carries the parent's peak into
    a child at exec, and this process holds models of its own."""
    t0 = time.perf_counter()
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        peak = 0
        status = Path(f"/proc/{proc.pid}/status")
        while True:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.02)
    return time.perf_counter() - t0, peak, proc.returncode, log.read_text("utf-8", "replace")


def short_texts(n_base: int, max_words: int = 32) -> list[str]:
    return [t for t in real_texts(n_base) if len(t.split()) <= max_words]


def part_memory(small: str, total: int, tmp: Path, args) -> bool:
    import scipy
    from scipy import sparse

    from hfenc.io.npz import CsrNpz

    base = short_texts(20000)
    sizes = sorted({max(1, total // 10), total})
    check_rows = min(200, sizes[0])
    reference = hfenc_embedder(small, "float32").encode(base[:check_rows]).to_scipy()
    words = [len(t.split()) for t in base]
    build = json.loads((Path(small) / "splade_build.json").read_text()) if (Path(small) / "splade_build.json").is_file() \
        else {"size": "?", "config": {}}
    cfg = build.get("config", {})
    print("\n### Memory: `hfenc embed FILE -m SPLADE -o out.npz`, whole process\n")
    print(f"    python benchmarks/bench_sparse.py --only memory --memory {total}"
          f"{' --small-model DIR' if args.small_model else ''}\n")
    print(f"Input: {len(base):,} distinct real texts of at most 32 words (median {int(np.median(words))}, "
          f"mean {np.mean(words):.1f}), repeated to each row count. Model: make_splade.py --size {build.get('size')} "
          f"({cfg.get('num_hidden_layers')} layers, width {cfg.get('hidden_size')}, 30,522-token vocabulary), "
          f"float32, `--device cpu`; scipy {scipy.__version__}.\n")
    print("| rows | input MB | output MB | nnz | mean active dims | seconds | texts/s | peak RSS | "
          "scipy load_npz | CsrNpz | first rows vs Embedder.encode |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    ok = True
    for n in sizes:
        src, out = tmp / f"in-{n}.txt", tmp / f"out-{n}.npz"
        with open(src, "w", encoding="utf-8") as fh:
            fh.writelines(base[i % len(base)] + "\n" for i in range(n))
        cmd = [sys.executable, "-m", "hfenc", "embed", str(src), "-m", small, "-o", str(out),
               "--device", "cpu", "--dtype", "float32", "-q", "--force"]
        seconds, peak, code, err = run_child(cmd, tmp / "stderr.txt")
        if code != 0:
            print(f"| {n:,} | {src.stat().st_size / 1e6:,.1f} | - | - | - | {seconds:,.1f} | - | "
                  f"{peak / 2**20:,.0f} MiB | - | - | - |")
            tail = "\n    ".join(err.strip().splitlines()[-6:])
            print(f"\n`{' '.join(cmd[1:])}` failed (exit {code}):\n    {tail}")
            ok = False
            break
        m = sparse.load_npz(out)
        npz = CsrNpz(out)
        expected = (n, reference.shape[1])
        scipy_ok = m.shape == expected and m.format == "csr"
        head = npz.rows_at(np.arange(check_rows)).to_scipy()
        npz_ok = ((npz.rows, npz.dim) == expected and npz.nnz == m.nnz and int(npz.indptr[-1]) == m.nnz
                  and (head != m[:check_rows]).nnz == 0)
        sidecar = Path(str(out) + ".json")
        diff = float(np.abs((m[:check_rows] - reference).toarray()).max()) if check_rows else 0.0
        ok &= scipy_ok and npz_ok and sidecar.exists() and diff <= 1e-5
        print(f"| {n:,} | {src.stat().st_size / 1e6:,.1f} | {out.stat().st_size / 1e6:,.1f} | {m.nnz:,} | "
              f"{m.nnz / n:,.1f} | {seconds:,.1f} | {n / seconds:,.0f} | {peak / 2**20:,.0f} MiB | "
              f"{'ok' if scipy_ok else 'WRONG'} {m.shape[0]:,} x {m.shape[1]:,} | "
              f"{'ok' if npz_ok else 'WRONG'} nnz {npz.nnz:,} | {check_rows} rows, max abs diff {diff:.1e} |",
              flush=True)
        if not sidecar.exists():
            print(f"(no sidecar {sidecar.name})")
        del m, npz
        src.unlink()
        out.unlink()
        sidecar.unlink(missing_ok=True)
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(PARTS), help=f"parts to run, of {','.join(PARTS)} (all)")
    ap.add_argument("--model", default=None, help="SPLADE folder for parity and speed "
                    "(default: make_splade.py --size SIZE built in a temp dir)")
    ap.add_argument("--size", choices=("base", "small"), default="base", help="the model built when --model is not given")
    ap.add_argument("--small-model", default=None, help="SPLADE folder for the memory part "
                    "(default: make_splade.py --size small built in a temp dir)")
    ap.add_argument("--n", type=int, default=1000, help="real texts for parity and speed (1000)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating speed rounds; the best is reported (2)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="hfenc dtypes for speed (bfloat16 only with native bf16)")
    ap.add_argument("--st-batch", type=int, default=32, help="sentence-transformers batch size (its default, 32)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads of both libraries in parity and speed (default: torch's own, all cores)")
    ap.add_argument("--memory", type=int, default=1_000_000, metavar="ROWS",
                    help="rows of the memory part's larger run; the smaller is ROWS/10 (1,000,000)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (built models)")
    args = ap.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    if bad := [p for p in parts if p not in PARTS]:
        ap.error(f"unknown part(s) {', '.join(bad)}; choose from {', '.join(PARTS)}")
    if args.threads:
        THREADS[0] = args.threads
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    args.model_flag = "" if args.model is None and args.size == "base" else (
        " --model DIR" if args.model else f" --size {args.size}")

    import transformers

    import make_splade

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    tmp = Path(tempfile.mkdtemp(prefix="hfenc-sparse-bench-"))
    ok = True
    try:
        print(f"machine: {machine()}")
        print(f"load average {os.getloadavg()[0]:.1f}; temp dir {tmp}")
        if "parity" in parts or "speed" in parts:
            model = args.model or str(make_splade.build(tmp / f"splade-{args.size}", args.size))
            built = Path(model) / "splade_build.json"
            if built.exists():
                info = json.loads(built.read_text())
                print(f"model: {model}: make_splade --size {info['size']} (seed {info['seed']}), "
                      f"MLM bias mean {info['bias']['mean']:.3f} std {info['bias']['std']:.3f}")
            texts = real_texts(args.n)
            words = sorted(len(t.split()) for t in texts)
            print(f"texts: {len(texts):,} real texts (benchmarks/corpus.py), words median {words[len(words) // 2]}, "
                  f"mean {np.mean(words):.1f}, max {words[-1]}")
            if "parity" in parts:
                part_parity(model, texts, args)
            if "speed" in parts:
                part_speed(model, texts, args)
        if "memory" in parts:
            small = args.small_model or str(make_splade.build(tmp / "splade-small", "small"))
            ok = part_memory(small, args.memory, tmp, args)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
