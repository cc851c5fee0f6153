"""Search latency and peak RSS over big indexes, and Parquet vs .npy write throughput (issue 12).

    python benchmarks/bench_search.py --rows 1000000 --dim 384
    python benchmarks/bench_search.py --rows 1000000 --dim 384 --parquet-index   # also a .parquet index
    python benchmarks/bench_search.py --write-rows 262144 --skip-search            # writers only

Indexes are random unit vectors (the work of an exact search does not depend on the values),
written block by block; the binary index is their ubinary codes (48 bytes a row at d=384). Each
search runs in a fresh subprocess that imports hfenc.searching (numpy only: no torch, no model)
and calls search_vectors with random unit queries: first call, then the best of 3 more; peak RSS
is the child's VmHWM (its own peak, from /proc), shown beside a child that only imports and opens
the index.
The page cache holds the index after it is written (warm reads); a cold read is disk-bound.

Writers: RowWriter (.npy) and ParquetWriter (.parquet) are fed the same float32 rows in 16,384-row
chunks through save_state, then finish() publishes; rows/s and MB/s of embedding data, the
model excluded (the engine's rows are what both write).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _sidecar(rows: int, dim: int, quantization: dict | None) -> dict:
    return {"format": "hfenc-embeddings/1", "complete": True, "rows": rows, "dim": dim, "normalize": True,
            "out_dtype": "float32" if quantization is None else "uint8", "quantization": quantization}


def build_indexes(folder: Path, rows: int, dim: int, parquet: bool, block: int = 65536) -> dict[str, Path]:
    from numpy.lib.format import open_memmap

    from hfenc.io.quantize import quantize, stored_width

    rng = np.random.default_rng(0)
    paths = {"float32": folder / "float32.npy", "ubinary": folder / "ubinary.npy"}
    f = open_memmap(paths["float32"], mode="w+", dtype=np.float32, shape=(rows, dim))
    b = open_memmap(paths["ubinary"], mode="w+", dtype=np.uint8, shape=(rows, stored_width("ubinary", dim)))
    writer = None
    if parquet:
        from hfenc.io.parquet import arrow, embedding_array, schema

        a = arrow()
        paths["float32 parquet"] = folder / "float32.parquet"
        writer = a.pq.ParquetWriter(str(paths["float32 parquet"]),
                                    schema(dim, np.dtype(np.float32), False, False, _sidecar(rows, dim, None)),
                                    compression="none", use_dictionary=False, write_statistics=["row"])
    for start in range(0, rows, block):
        n = min(block, rows - start)
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        f[start:start + n] = x
        b[start:start + n] = quantize(x, "ubinary")
        if writer is not None:
            cols = [a.pa.array(np.arange(start, start + n, dtype=np.int64)), embedding_array(x)]
            writer.write_table(a.pa.Table.from_arrays(cols, schema=writer.schema), row_group_size=16384)
    if writer is not None:
        writer.close()
    f.flush(), b.flush()
    del f, b
    q = {"precision": "ubinary", "dim": dim, "stored_width": stored_width("ubinary", dim), "ranges": None,
         "calibration": None}
    paths["float32"].with_name("float32.npy.json").write_text(json.dumps(_sidecar(rows, dim, None)))
    paths["ubinary"].with_name("ubinary.npy.json").write_text(json.dumps(_sidecar(rows, dim, q)))
    return paths


CHILD = r"""
import json, sys, time
import numpy as np
from hfenc.searching import Index, search_vectors

def peak():  # VmHWM: this process's peak RSS since exec (ru_maxrss would count the forked parent)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

path, nq, k, only_open = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
index = Index(path)
if only_open:
    print(json.dumps({"peak": peak()}))
    sys.exit()
rng = np.random.default_rng(1)
q = rng.standard_normal((nq, index.dim)).astype(np.float32)
q /= np.linalg.norm(q, axis=1, keepdims=True)
t = time.perf_counter(); search_vectors(index, q, k); first = time.perf_counter() - t
best = float("inf")
for _ in range(3):
    t = time.perf_counter(); search_vectors(index, q, k); best = min(best, time.perf_counter() - t)
print(json.dumps({"first": first, "best": best, "torch": "torch" in sys.modules, "peak": peak()}))
"""


def search_child(path: Path, nq: int, k: int, only_open: bool = False) -> tuple[dict, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(nq), str(k), "1" if only_open else "0"],
                          capture_output=True, text=True, env=env, check=True)
    result = json.loads(done.stdout)
    return result, result["peak"]


def bench_writers(folder: Path, rows: int, dim: int, chunk: int = 16384) -> list[tuple[str, float, int]]:
    from hfenc.io.outputs import OutputPaths, RowWriter
    from hfenc.io.parquet import ParquetWriter

    rng = np.random.default_rng(2)
    block = rng.standard_normal((chunk, dim), dtype=np.float32)
    results = []
    for name, cls, suffix in (("npy", RowWriter, ".npy"), ("parquet", ParquetWriter, ".parquet")):
        paths = OutputPaths(folder / f"write{suffix}")
        t = time.perf_counter()
        writer = cls(paths, rows, dim, np.dtype(np.float32), {"bench": 1}, False)
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            writer.rows(start, n)[...] = block[:n]
            writer.save_state(start + n, {})
        writer.finish({"format": "hfenc-embeddings/1", "complete": True, "rows": rows, "dim": dim}, [], [])
        seconds = time.perf_counter() - t
        results.append((name, seconds, paths.npy.stat().st_size))
        os.unlink(paths.npy)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", default="1,10,100")
    ap.add_argument("--parquet-index", action="store_true")
    ap.add_argument("--write-rows", type=int, default=262_144)
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--only", default=None, help="Search only these indexes (e.g. ubinary,float32).")
    ap.add_argument("--dir", type=Path, default=None, help="Where to build (default: a temporary directory).")
    args = ap.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="hfenc-bench-search-"))
    folder.mkdir(parents=True, exist_ok=True)
    if not args.skip_search:
        t = time.perf_counter()
        paths = build_indexes(folder, args.rows, args.dim, args.parquet_index)
        print(f"built {args.rows:,} x {args.dim} indexes in {time.perf_counter() - t:.0f} s "
              f"({', '.join(f'{k} {p.stat().st_size / 1e6:,.0f} MB' for k, p in paths.items())})")
        print("| index | queries | first call s | best of 3 s | ms / query | peak RSS MB | RSS opened only MB |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, path in paths.items():
            if args.only and name not in args.only.split(","):
                continue
            _, base = search_child(path, 1, args.k, only_open=True)
            for nq in map(int, args.queries.split(",")):
                timing, rss = search_child(path, nq, args.k)
                assert not timing["torch"]
                print(f"| {name} | {nq} | {timing['first']:.3f} | {timing['best']:.3f} | "
                      f"{timing['best'] / nq * 1000:.1f} | {rss / 1e6:,.0f} | {base / 1e6:,.0f} |", flush=True)
    if args.write_rows:
        print(f"\nwriters, {args.write_rows:,} x {args.dim} float32 ({args.write_rows * args.dim * 4 / 1e6:,.0f} MB "
              "of rows), 16,384-row chunks, through finish():")
        print("| format | seconds | rows/s | MB/s | file MB |")
        print("|---|---:|---:|---:|---:|")
        for name, seconds, size in bench_writers(folder, args.write_rows, args.dim):
            mb = args.write_rows * args.dim * 4 / 1e6
            print(f"| {name} | {seconds:.2f} | {args.write_rows / seconds:,.0f} | {mb / seconds:,.0f} | {size / 1e6:,.0f} |")
    if args.dir is None:
        import shutil

        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
