"""`verify`'s second and third layers: the files' layout agrees with the sidecar, and a sample of
rows embedded again agrees with the stored rows (see hfenc.verification)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hfenc.errors import HfencError
from hfenc.io.outputs import OutputPaths
from hfenc.io.parquet import arrow
from hfenc.verification.sparse import check_sparse_layout, check_sparse_rows, is_sparse, stored_rows

PROVENANCE = ("doc_row", "chunk", "char_start", "char_end", "token_start", "token_end")
# Per row, by the dtype the rows are computed in: the cosine float rows must reach, and
# (scalar, binary) for quantized rows compared as codes (a code may tip over to its neighbour)
TOLERANCE = {"float32": 0.99999, "float16": 0.999, "bfloat16": 0.999, "int8": 0.99}
_QUANTIZED = {"float32": (0.9999, 0.98), "float16": (0.999, 0.95), "bfloat16": (0.999, 0.95), "int8": (0.98, 0.9)}
LISTED = 20  # rows named one by one before "and N more"


# ---- layout -------------------------------------------------------------------------------------

def check_layout(path: Path, sidecar: dict[str, Any], report: Any) -> None:
    rows, width = report.rows, _width(sidecar)
    dtype = str(sidecar.get("out_dtype"))
    sparse = is_sparse(path, sidecar)
    if sparse and path.suffix.lower() == ".npy":
        report.problems.append(f"{path.name} is an array of dense rows; the sidecar describes a sparse model's")
        return
    files = [path / s["file"] for s in sidecar.get("shards") or []] if path.is_dir() else [path]
    if path.suffix.lower() == ".npz":
        check_sparse_layout(path, sidecar, report, files)
        _side_files(path, sidecar, report)
        return
    if sparse and not check_sparse_layout(path, sidecar, report, files):
        return  # a sparse Parquet file whose column or entries could not be read
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            report.problems.append(f"cannot read {path.name} as a .npy file: {' '.join(str(exc).split())}")
            return
        if array.shape != (rows, width) or str(array.dtype) != dtype:
            report.problems.append(f"{path.name} holds {array.shape} {array.dtype}; the sidecar says "
                                   f"({rows}, {width}) {dtype}")
        _side_files(path, sidecar, report)
        return
    seen = np.zeros(rows, np.int64)
    for f in files:
        try:
            pq = arrow().pq
            schema = pq.read_schema(f)
            index = pq.read_table(f, columns=["row"]).column("row").to_numpy()
        except Exception as exc:  # noqa: BLE001 (pyarrow raises several kinds for a damaged file)
            report.problems.append(f"cannot read {f.name} as Parquet: {' '.join(str(exc).split())[:200]}")
            return
        kind = schema.field("embedding").type
        if not sparse and (not arrow().pa.types.is_fixed_size_list(kind) or kind.list_size != width  # sparse: above
                           or str(kind.value_type.to_pandas_dtype().__name__) != dtype):
            report.problems.append(f"{f.name} stores {kind}; the sidecar says {width} x {dtype}")
        inside = index[(index >= 0) & (index < rows)]
        np.add.at(seen, inside, 1)
        if len(inside) != len(index):
            report.problems.append(f"{f.name} holds rows outside 0..{rows - 1}")
    if (seen != 1).any():
        bad = np.flatnonzero(seen != 1)
        report.problems.append(f"rows {', '.join(map(str, bad[:5].tolist()))}{', ...' if len(bad) > 5 else ''} "
                               f"are not held exactly once ({len(bad):,} rows)")


def _width(sidecar: dict[str, Any]) -> int:
    q = sidecar.get("quantization")
    return int(q.get("stored_width") or sidecar["dim"]) if isinstance(q, dict) else int(sidecar["dim"])


def _side_files(path: Path, sidecar: dict[str, Any], report: Any) -> None:
    """A .npy (or sparse .npz) output's side files have a line or row per row of the output."""
    folder, rows = path.parent, report.rows
    for key, shape in (("hashes_file", (rows, 32)), ("lines_file", (rows,))):
        name = sidecar.get(key)
        if name and (folder / name).is_file():
            found = np.load(folder / name, mmap_mode="r", allow_pickle=False).shape
            if found != shape:
                report.problems.append(f"{name} holds {found}, not {shape}")
    for key, extra in (("ids_file", 0), ("chunks_file", 1)):  # chunks.tsv has a header
        name = sidecar.get(key)
        if name and (folder / name).is_file():
            with open(folder / name, "rb") as fh:
                lines = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
            if lines != rows + extra:
                report.problems.append(f"{name} has {lines - extra:,} lines; the output has {rows:,} rows")


# ---- rows embedded again ------------------------------------------------------------------------

def check_rows(path: Path, sidecar: dict[str, Any], report: Any, *, sample: int | None, input: Any,
               device: str, seed: int) -> None:
    from hfenc.io.quantize import SCALAR, Quantization, dequantize, unpack_bits
    from hfenc.io.sidecar import recorded_embedder

    rows = report.rows
    if input is None and (sidecar.get("input") or {}).get("path") in ("-", "(--text)"):
        report.notes.append("rows were not embedded again: the input was standard input or --text, which is not kept")
        return
    picks = np.arange(rows) if sample is None or sample >= rows else \
        np.sort(np.random.default_rng(seed).choice(rows, sample, replace=False))
    if not len(picks):
        return
    table = _Rows(path, sidecar)
    try:
        embedder = recorded_embedder(sidecar, path if path.is_dir() else path.parent, query_prompt=False,
                                     device=device)
        fresh = _embed_again(table, sidecar, embedder, picks, input)
    except HfencError as exc:
        report.problems.append(f"cannot embed the rows again: {exc}" + (f" ({exc.hint})" if exc.hint else ""))
        return
    computed = embedder.settings.dtype
    if table.sparse:
        check_sparse_rows(table.stored(picks), fresh, picks, computed, TOLERANCE[computed],
                          sidecar.get("max_active_dims"), report, LISTED)
        report.notes.extend(embedder.notes)
        return
    stored = table.stored(picks)
    q = sidecar.get("quantization")
    if q is not None:
        quant = Quantization.from_record(q)
        codes = quant(fresh)
        if quant.precision in SCALAR:
            a, b = dequantize(stored, quant.precision, quant.ranges), dequantize(codes, quant.precision, quant.ranges)
        else:
            a = unpack_bits(stored, quant.precision, quant.dim) * 2.0 - 1
            b = unpack_bits(codes, quant.precision, quant.dim) * 2.0 - 1
        bound = _QUANTIZED[computed][0 if quant.precision in SCALAR else 1]
    else:
        a, b, bound = stored.astype(np.float32), fresh, TOLERANCE[computed]
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    report.sampled, report.min_cosine = len(picks), float(cos.min())
    report.tolerance, report.computed_in = bound, computed
    bad = np.flatnonzero(cos < bound)
    for i in bad[:LISTED].tolist():
        report.problems.append(f"row {int(picks[i])}: embedded again, its cosine to the stored row is {cos[i]:.6f} "
                               f"({computed} allows >= {bound})")
    if len(bad) > LISTED:
        report.problems.append(f"and {len(bad) - LISTED:,} more rows below {bound}")
    report.notes.extend(embedder.notes)


def _embed_again(table: _Rows, sidecar: dict[str, Any], embedder: Any, picks: np.ndarray, input: Any) -> Any:
    """The rows `picks` embedded again: an array, or SparseRows for a sparse model."""
    chunking = sidecar.get("chunking")
    late = isinstance(chunking, dict) and chunking.get("late")
    if table.has("text") and not late:  # --keep-text: the rows' own texts (a chunk's, when chunked)
        return embedder.encode(table.column(picks, "text"))
    if not isinstance(chunking, dict):
        return embedder.encode(_records(sidecar, picks, input))
    spans = table.provenance(picks)
    docs = np.unique(spans["doc_row"])
    texts = dict(zip(docs.tolist(), _records(sidecar, docs, input)))
    if not late:
        return embedder.encode([texts[int(s["doc_row"])][int(s["char_start"]):int(s["char_end"])] for s in spans])
    return _late(table, chunking, embedder, picks, docs, texts)


def _late(table: _Rows, chunking: dict[str, Any], embedder: Any, picks: np.ndarray, docs: np.ndarray,
          texts: dict[int, str]) -> np.ndarray:
    """Late chunks, as `embed` made them: each of their documents in one pass (or its windows)."""
    from hfenc.compute.chunking import Chunker, Span
    from hfenc.jobs.chunked import LateDocs, late_tokenizer

    every = table.provenance(None)
    mine = np.flatnonzero(np.isin(every["doc_row"], docs))
    work = LateDocs([], [])
    for d in docs.tolist():
        rows = mine[every["doc_row"][mine] == d]
        work.texts.append(texts[d])
        work.spans.append([Span(*(int(every[name][r]) for name in PROVENANCE[1:])) for r in rows])
    chunker = Chunker(embedder.tokenizer, chunking["tokens"], chunking.get("overlap", 0), chunking.get("by", "tokens"))
    tok = late_tokenizer(chunker)(work)
    dest = np.zeros((tok.rows, embedder.dim), np.float32)
    embedder.engine.embed_tokenized(tok, dest)
    return dest[np.searchsorted(mine, picks)]


def _records(sidecar: dict[str, Any], wanted: np.ndarray, input: Any) -> list[str]:
    """The texts of input records `wanted` (ascending), read as `embed` read them; the input must
    be the very bytes it embedded (its recorded SHA-256)."""
    from hfenc.errors import InputError
    from hfenc.io.inputs import Tally, records
    from hfenc.io.sidecar import recorded_spec

    recorded = sidecar.get("input") or {}
    paths = [f["path"] for f in recorded.get("files") or []] or [recorded.get("path")]
    if input is not None:
        if len(paths) > 1:
            raise InputError(f"the output was embedded from {len(paths)} files; --input names one")
        paths = [str(input)]
    if not paths[0] or paths[0] == "(--text)" or not all(Path(p).is_file() for p in paths):
        missing = next((p for p in paths if not p or not Path(p).is_file()), paths[0])
        raise InputError(f"the input {missing} is not here", hint="give it with --input PATH, or --sample 0")
    spec = recorded_spec(recorded, paths)
    want, found, tally = set(wanted.tolist()), {}, Tally()
    for i, record in enumerate(records(spec, tally)):
        if i in want:
            found[i] = record.text
    if recorded.get("sha256") and tally.sha256 != recorded["sha256"]:
        raise InputError(f"{', '.join(paths)} is not the input the output was embedded from (its SHA-256 differs)",
                         hint="give the input it was embedded from with --input PATH")
    return [found[i] for i in wanted.tolist()]


class _Rows:
    """Stored rows and their columns by row number: an .npy or a sparse .npz (+ OUT.chunks.tsv),
    a Parquet file, or a --ray directory's shards."""

    def __init__(self, path: Path, sidecar: dict[str, Any]) -> None:
        self.path, self.sidecar = path, sidecar
        self.npy = path.suffix.lower() in (".npy", ".npz")  # an array file: the columns are side files
        self.sparse = is_sparse(path, sidecar)
        self.files = [path / s["file"] for s in sidecar.get("shards") or []] if path.is_dir() else [path]

    def has(self, column: str) -> bool:
        if self.npy:
            return False
        return column in arrow().pq.read_schema(self.files[0]).names

    def _read(self, picks: np.ndarray, columns: list[str]) -> dict[str, np.ndarray]:
        """`columns` of rows `picks` (ascending), file by file."""
        pq = arrow().pq

        out: dict[str, list[Any]] = {c: [None] * len(picks) for c in columns}
        for f in self.files:
            index = pq.read_table(f, columns=["row"]).column("row").to_numpy()
            at = np.searchsorted(picks, index)
            hit = np.flatnonzero((at < len(picks)) & (picks[np.minimum(at, len(picks) - 1)] == index))
            if not len(hit):
                continue
            table = pq.read_table(f, columns=columns).take(hit)
            for c in columns:
                values = table.column(c).combine_chunks()
                values = values.flatten().to_numpy(zero_copy_only=False).reshape(len(hit), -1) \
                    if c == "embedding" else values.to_pylist()
                for k, pos in enumerate(at[hit].tolist()):
                    out[c][pos] = values[k]
        return {c: (np.stack(v) if c == "embedding" else np.array(v, dtype=object)) for c, v in out.items()}

    def stored(self, picks: np.ndarray) -> Any:
        if self.sparse:
            return stored_rows(self.path, self.files, self.sidecar, picks)
        if self.npy:
            return np.asarray(np.load(self.path, mmap_mode="r", allow_pickle=False)[picks])
        return self._read(picks, ["embedding"])["embedding"]

    def column(self, picks: np.ndarray, name: str) -> list[Any]:
        return list(self._read(picks, [name])[name])

    def provenance(self, picks: np.ndarray | None) -> np.ndarray:
        """PROVENANCE of rows `picks` (None: every row), a structured array."""
        dtype = np.dtype([(n, "<i8") for n in PROVENANCE])
        if self.npy:
            name = self.sidecar.get("chunks_file") or OutputPaths(self.path).chunks.name
            table = np.loadtxt(self.path.with_name(name), dtype=np.int64, delimiter="\t", skiprows=1, ndmin=2)
            every = np.array([tuple(r) for r in table[:, 1:7]], dtype=dtype)
            return every if picks is None else every[picks]
        picks = np.arange(self.sidecar["rows"]) if picks is None else picks
        columns = self._read(picks, list(PROVENANCE))
        return np.array(list(zip(*(columns[n].astype(np.int64) for n in PROVENANCE))), dtype=dtype)
