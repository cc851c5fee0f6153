"""`embed --reuse OLD` (issue 24): rows whose text and fingerprint match a row of an earlier output
take that row's stored vector, bit for bit; only the rest is embedded.

A row's vector is a function of its text and of everything `row_fingerprint` lists: the model's
files, every setting that changes a row (pooler, prompt, normalization, max length, dtype,
backend, device type, ...), the libraries' versions and the stored form (float32, float16, a
quantization). When OLD's fingerprint differs in any of them nothing is reused: the run is
refused, naming what differs, so no output ever mixes rows of two fingerprints. What is left out:
the batch shape (token budget, chunk size) and the device number, which move a row by an ulp at
most, as between the batches of one run; int8/uint8 ranges are taken from OLD, so a reused code
and a new one mean the same thing.

Rows are matched by their text's SHA-256 (hfenc.io.hashes), which OLD records. OLD is an .npy or
Parquet output of `hfenc embed`, or a --ray directory of Parquet shards. Its hashes are held in
memory, sorted (40 bytes per OLD row, 48 for a --ray directory: 400 MB for 10M rows); its vectors are read as they are
needed (an .npy through a memory map, Parquet a row group at a time).

Late chunking is refused: a late chunk's vector depends on its whole document, not on its text.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from hfenc.errors import ConfigError, HfencError, InputError
from hfenc.io.hashes import WIDTH, hex_hashes, keys
from hfenc.io.outputs import MANIFEST, SEAL, OutputPaths, file_sha256, read_sidecar, read_state, seal_of
from hfenc.io.sidecar import check_sidecar

LISTED = 10_000  # dropped OLD rows named in the sidecar; the count is always there
_CACHED_GROUPS = 4  # Parquet row groups of OLD kept decoded


def row_fingerprint(meta: dict[str, Any]) -> dict[str, Any]:
    """What makes a row's vector from its text, read from a sidecar (OLD) or from what a job's
    sidecar will say (the Embedder's describe() plus out_dtype and quantization)."""
    from hfenc.compute.embedder import EmbedSettings

    fp: dict[str, Any] = {}
    for f in fields(EmbedSettings):
        if f.name in ("model", "batch_tokens", "device"):
            continue
        fp[f.name] = meta.get(f.name, None if f.default is MISSING else f.default)  # older sidecars: the default
    fp["device"] = str(meta.get("device") or "").split(":")[0]  # cuda:1 and cuda compute alike
    for key in ("weights_sha256", "config_sha256"):
        fp[key] = meta.get(key)
    versions = meta.get("versions")  # what computes the rows (Ray only moves them)
    fp["versions"] = {k: v for k, v in versions.items() if k != "ray"} if isinstance(versions, dict) else versions
    quantization = meta.get("quantization") or {}
    fp["stored"] = quantization.get("precision") if isinstance(quantization, dict) and quantization else \
        meta.get("out_dtype")
    return fp


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for each fingerprint key that differs (versions name the library)."""
    out = []
    for key in old.keys() | new.keys():
        a, b = old.get(key), new.get(key)
        if key == "versions" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"{lib} {a.get(lib)} -> {b.get(lib)}" for lib in sorted(a.keys() | b.keys()) if a.get(lib) != b.get(lib)]
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return sorted(out)


@dataclass(frozen=True)
class _Part:
    """One file of OLD's rows: an .npy, or a Parquet file (an output, or one shard of a directory)."""

    path: Path
    first: int  # its first slot: OLD's files laid end to end
    rows: int


class OldOutput:
    """An earlier output: its sidecar, the hashes of its rows (sorted, for lookups) and its stored
    vectors. A slot is a row's place in OLD's files laid end to end; `row_of` maps slots to OLD's
    row numbers (the same for one file; a directory's shards hold rows in any order)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.kind, self.sidecar, sidecar_path = _open(self.path)
        self.sidecar_sha256 = file_sha256(sidecar_path)
        if isinstance(self.sidecar.get("chunking"), dict) and self.sidecar["chunking"].get("late"):
            raise ConfigError(f"--reuse {self.path}: its rows are late chunks, whose vectors depend on their whole "
                              "document, not on their text", hint="drop --reuse to embed everything")
        self.rows = int(self.sidecar["rows"])
        self.parts: list[_Part] = []
        self._groups: dict[tuple[int, int], np.ndarray] = {}
        hashes, self.row_of = self._hashes()
        order = np.argsort(keys(hashes), kind="stable")  # equal texts: the first row wins
        self._sorted, self._slots = keys(hashes)[order], order

    # -- reading OLD

    def _hashes(self) -> tuple[np.ndarray, np.ndarray | None]:
        no_hashes = InputError(f"--reuse {self.path}: it records no row hashes (an hfenc before 0.2 made it)",
                               hint="drop --reuse to embed everything; outputs made from now on can be reused")
        if self.kind == "npy":
            name = self.sidecar.get("hashes_file")
            if not name or not (self.path.parent / name).is_file():
                raise no_hashes
            hashes = np.load(self.path.parent / name, mmap_mode="r", allow_pickle=False)
            if hashes.shape != (self.rows, WIDTH) or hashes.dtype != np.uint8:
                raise InputError(f"--reuse {self.path}: {name} does not hold {self.rows:,} row hashes")
            self.parts = [_Part(self.path, 0, self.rows)]
            return np.array(hashes), None
        from hfenc.io.parquet import arrow

        a, parts, rows, first = arrow(), [], [], 0
        files = [self.path] if self.kind == "parquet" else \
            [self.path / s["file"] for s in self.sidecar.get("shards", []) if s.get("file", "").endswith(".parquet")]
        for path in files:
            table = a.pq.read_table(path, columns=["row", "text_sha256"]) \
                if "text_sha256" in a.pq.read_schema(path).names else None
            if table is None:
                raise no_hashes
            decoded = hex_hashes(table.column("text_sha256").combine_chunks())
            if decoded is None:
                raise InputError(f"--reuse {self.path}: {path.name} has a text_sha256 that is not 64 hex digits")
            parts.append(decoded)
            rows.append(table.column("row").to_numpy())
            self.parts.append(_Part(path, first, len(table)))
            first += len(table)
        if first != self.rows:
            raise InputError(f"--reuse {self.path}: its files hold {first:,} rows, its sidecar says {self.rows:,}")
        row_of = np.concatenate(rows) if rows else np.empty(0, np.int64)
        return (np.concatenate(parts) if parts else np.empty((0, WIDTH), np.uint8),
                None if self.kind == "parquet" and np.array_equal(row_of, np.arange(first)) else row_of)

    def fingerprint(self) -> dict[str, Any]:
        return row_fingerprint(self.sidecar)

    @property
    def quantization(self) -> dict[str, Any] | None:
        return self.sidecar.get("quantization")

    # -- matching

    def match(self, hashes: np.ndarray) -> np.ndarray:
        """OLD's slot holding each hash's row, -1 where OLD has no such text."""
        wanted = keys(hashes)
        at = np.minimum(np.searchsorted(self._sorted, wanted), max(len(self._sorted) - 1, 0))
        if not len(self._sorted):
            return np.full(len(wanted), -1, np.int64)
        return np.where(self._sorted[at] == wanted, self._slots[at], -1)

    def dropped(self, new_hashes: np.ndarray) -> np.ndarray:
        """OLD's rows (ascending) whose text no row of the new input has."""
        new = np.sort(keys(new_hashes))
        mine = self._sorted
        at = np.minimum(np.searchsorted(new, mine), max(len(new) - 1, 0))
        missing = self._slots[(new[at] != mine) if len(new) else np.ones(len(mine), bool)]
        return np.sort(missing if self.row_of is None else self.row_of[missing])

    def values(self, slots: np.ndarray) -> np.ndarray:
        """The stored rows at `slots`, in that order, as OLD stores them."""
        out: np.ndarray | None = None
        for k, part in enumerate(self.parts):
            mine = np.flatnonzero((slots >= part.first) & (slots < part.first + part.rows))
            if not len(mine):
                continue
            got = self._read(k, part, slots[mine] - part.first)
            if out is None:
                out = np.empty((len(slots), got.shape[1]), got.dtype)
            out[mine] = got
        assert out is not None or not len(slots)
        return out if out is not None else np.empty((0, 0), np.float32)

    def _read(self, k: int, part: _Part, offsets: np.ndarray) -> np.ndarray:
        if self.kind == "npy":
            array = np.load(part.path, mmap_mode="r", allow_pickle=False)
            order = np.argsort(offsets, kind="stable")  # ascending reads from the map
            got = np.empty((len(offsets), array.shape[1]), array.dtype)
            got[order] = array[offsets[order]]
            return got
        from hfenc.io.parquet import arrow

        meta = arrow().pq.ParquetFile(part.path).metadata
        bounds = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        groups = np.searchsorted(bounds, offsets, side="right") - 1
        out: np.ndarray | None = None
        for g in np.unique(groups).tolist():
            block = self._group(k, part.path, g)
            mine = np.flatnonzero(groups == g)
            if out is None:
                out = np.empty((len(offsets), block.shape[1]), block.dtype)
            out[mine] = block[offsets[mine] - bounds[g]]
        assert out is not None
        return out

    def _group(self, k: int, path: Path, group: int) -> np.ndarray:
        key = (k, group)
        if key not in self._groups:
            from hfenc.io.parquet import arrow

            column = arrow().pq.ParquetFile(path).read_row_group(group, columns=["embedding"]).column(0)
            column = column.combine_chunks()
            width = column.type.list_size
            self._groups[key] = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
            while len(self._groups) > _CACHED_GROUPS:
                self._groups.pop(next(iter(self._groups)))
        return self._groups[key]

    def ids(self, rows: np.ndarray) -> list[str | None]:
        """The ids (a chunk's: its record's) of OLD's `rows`, None for each where OLD has none."""
        wanted = {int(r) for r in rows}
        found: dict[int, str] = {}
        if self.kind == "npy":
            name = self.sidecar.get("ids_file")
            if name and (self.path.parent / name).is_file():
                with open(self.path.parent / name, encoding="utf-8") as fh:
                    found = {i: line.rstrip("\n") for i, line in enumerate(fh) if i in wanted}
        else:
            from hfenc.io.parquet import arrow

            a = arrow()
            for part in self.parts:
                names = a.pq.read_schema(part.path).names
                column = "doc_id" if "doc_id" in names else "id" if "id" in names else None
                if column is None:
                    break
                table = a.pq.read_table(part.path, columns=["row", column])
                for r, v in zip(table.column("row").to_pylist(), table.column(column).to_pylist()):
                    if r in wanted:
                        found[r] = v
        return [found.get(int(r)) for r in rows]


def _open(path: Path) -> tuple[str, dict[str, Any], Path]:
    """(kind, checked sidecar, sidecar file) of an earlier output: .npy, .parquet/.pq, or a
    --ray directory with its manifest."""
    if path.is_dir():
        kind, sidecar_path = "dataset", path / MANIFEST
    elif path.suffix.lower() in (".npy", ".parquet", ".pq"):
        kind, sidecar_path = ("npy" if path.suffix.lower() == ".npy" else "parquet"), OutputPaths(path).sidecar
        if not path.is_file():
            raise InputError(f"--reuse {path}: no such output")
    else:
        raise InputError(f"--reuse {path}: not an output of hfenc embed (.npy, .parquet, or a --ray directory)")
    data = read_sidecar(sidecar_path)
    if data is None:
        raise InputError(f"--reuse {path}: it has no hfenc sidecar ({sidecar_path.name})",
                         hint="reuse an output of `hfenc embed`, with its sidecar beside it")
    data = check_sidecar(data, f"the sidecar of {path}")
    if not data.get("complete") or not isinstance(data.get("rows"), int):
        raise InputError(f"--reuse {path}: its sidecar does not describe a finished output")
    if SEAL in data and seal_of(data) != data[SEAL]:  # what it says of its rows cannot be trusted
        raise InputError(f"--reuse {path}: its sidecar was edited after hfenc wrote it",
                         hint=f"hfenc verify {path} says more; drop --reuse to embed everything")
    return kind, data, sidecar_path


@dataclass
class Reuse:
    """One job's reuse: OLD, and the outcome the summary and sidecar report."""

    old: OldOutput
    reused: int = 0
    dropped: np.ndarray | None = None

    @classmethod
    def open(cls, path: str | Path, new_meta: dict[str, Any]) -> Reuse:
        """OLD at `path`, refused (one line) unless its fingerprint is the new job's."""
        old = OldOutput(path)
        differ = differences(old.fingerprint(), row_fingerprint(new_meta))
        if differ:
            more = f" (and {len(differ) - 2} more)" if len(differ) > 2 else ""
            raise ConfigError(f"--reuse {path}: nothing can be reused, its rows were made otherwise: "
                              f"{'; '.join(differ[:2])}{more}",
                              hint="drop --reuse to embed everything, or embed with the settings it was made with")
        return cls(old)

    def ranges(self, precision: str | None) -> tuple[np.ndarray, dict[str, Any]] | None:
        """int8/uint8: OLD's ranges, so a reused code and a new one mean the same."""
        from hfenc.io.quantize import SCALAR, Quantization

        if precision not in SCALAR:
            return None
        q = Quantization.from_record(self.old.quantization, f"the sidecar of {self.old.path}")
        assert q.ranges is not None
        return q.ranges, {"method": "reuse", "from": str(self.old.path), "reused": q.calibration}

    def check_ranges(self, precision: str | None, ranges: np.ndarray | None) -> None:
        """A resumed run keeps the ranges it began with: OLD must still have them."""
        given = self.ranges(precision)
        if given is not None and not np.array_equal(given[0], ranges):
            raise ConfigError(f"--reuse {self.old.path}: its int8/uint8 ranges changed since the "
                              "interrupted run", hint="use --force to start over")

    def plan(self, hashes: np.ndarray) -> np.ndarray:
        """Each new row's OLD slot (-1: embed it); counts what is reused and what OLD loses."""
        slots = self.old.match(hashes)
        self.reused = int((slots >= 0).sum())
        self.dropped = self.old.dropped(hashes)
        return slots

    def record(self, rows: int) -> dict[str, Any]:
        """The sidecar's `reuse`: where from, how many rows were reused and embedded, and OLD's rows
        that no new row has (the first LISTED of them by row, with ids where OLD has them)."""
        dropped = self.dropped if self.dropped is not None else np.empty(0, np.int64)
        listed = dropped[:LISTED]
        ids = self.old.ids(listed) if len(listed) else []
        return {"from": str(self.old.path), "sidecar_sha256": self.old.sidecar_sha256, "old_rows": self.old.rows,
                "reused": self.reused, "embedded": rows - self.reused, "dropped": len(dropped),
                "dropped_rows": [{"row": int(r), **({"id": i} if i is not None else {})}
                                 for r, i in zip(listed.tolist(), ids)]}


def open_reuse(old: str | Path | None, paths: OutputPaths, resume: bool, describe: dict[str, Any], out_dtype: str,
               quantize: str | None) -> Reuse | None:
    """--reuse OLD for a job of both engines, its fingerprint checked against the job's model
    (`describe`) and stored form: None without it, or when only the publication of an interrupted
    run is left (OLD may be the very output that publication replaced)."""
    if old is None:
        return None
    try:
        if resume and read_state(paths).get("publishing"):
            return None
    except HfencError:
        pass  # opening the output names what is wrong with the state
    return Reuse.open(old, {**describe, "out_dtype": out_dtype,
                            "quantization": {"precision": quantize} if quantize is not None else None})


class Given(list):
    """A chunk of work's texts, and which of them are reused (the engine computes the others)."""

    given: np.ndarray


class ReusedRows:
    """A local job's side of reuse: each row's OLD slot, the engine's work marked with what is
    given, and the destination of rows with the reused ones already in place."""

    def __init__(self, reuse: Reuse, hashes: Path, rows: int) -> None:
        self.reuse = reuse
        self.slots = reuse.plan(np.fromfile(hashes, np.uint8).reshape(-1, WIDTH)[:rows])

    def work(self, items: Any) -> Any:
        for start, texts in items:
            payload = Given(texts)
            payload.given = self.slots[start:start + len(texts)] >= 0
            yield start, payload

    def tokenize(self, engine: Any) -> Any:
        from dataclasses import replace

        return lambda texts: replace(engine.tokenizer(texts, engine.tokenize_threads), given=texts.given)

    def rows(self, rows_of: Any, put: Any) -> Any:
        """`rows_of`, with OLD's stored rows put in place (`put(block, positions, stored)`)."""
        def dest(start: int, n: int) -> np.ndarray:
            block = rows_of(start, n)
            slots = self.slots[start:start + n]
            mine = np.flatnonzero(slots >= 0)
            if len(mine):
                put(block, mine, self.reuse.old.values(slots[mine]))
            return block

        return dest

    def record(self) -> dict[str, Any]:
        return self.reuse.record(len(self.slots))
