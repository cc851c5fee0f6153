"""Fault injection for Parquet output (issue 12): kill `hfenc embed -o out.parquet` at every step
of a job, then finish it with --resume; the table must equal an uninterrupted run's bit for bit.

Run by tests/test_parquet.py: `python tests/parquet_fault_driver.py MODEL_DIR WORK_DIR`. It reuses
tests/fault_driver.py's runner (one fork per run from a process that imported torch once).
After each kill, the final path holds nothing or a complete table whose sidecar (if any)
describes it; never a half-written Parquet file. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

pa.array([0])  # pyarrow imports pandas on first pa.array(): once here, not once per forked run

from fault_driver import _run, _write_input  # noqa: E402

CHUNK = 20
POINTS = [
    "scanned", "loaded", "chunk-saved:1", "chunk-saved:2", "chunk-saved:7", "json-written:1", "json-written:3",
    "finish-flushed", "publishing", "old-sidecar-removed", "published-array", "published-sidecar", "published",
]


def _command(model: str, src: Path, out: Path, force: bool) -> list[str]:
    argv = ["embed", str(src), "-m", model, "-o", str(out), "--id-field", "id", "--keep-text",
            "--chunk-size", str(CHUNK), "--device", "cpu", "-q"]
    return argv + (["--force"] if force else [])


def _table(path: Path) -> dict:
    t = pq.read_table(path, use_threads=False)  # no Arrow thread pool in the forking parent
    return {name: t.column(name).combine_chunks() for name in t.schema.names}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equals(b[k]) for k in a)


def main() -> None:
    model, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    refs = {}
    for tag, seed in (("new", 1), ("old", 2)):
        d = work / f"ref-{tag}"
        d.mkdir()
        _write_input(d / "in.jsonl", seed)
        assert _run(_command(model, d / "in.jsonl", d / "out.parquet", False), {}) == 0, tag
        refs[tag] = _table(d / "out.parquet")
    report = {"kill_points": 0, "killed": 0, "runs_completed": 0, "mismatches": 0, "failures": []}
    for n, (point, over_old) in enumerate([(p, False) for p in POINTS] + [(p, True) for p in POINTS[5:]]):
        d = work / f"case-{n}"
        d.mkdir()
        _write_input(d / "in.jsonl", 1)
        out = d / "out.parquet"
        if over_old:
            for name in ("out.parquet", "out.parquet.json"):
                (d / name).write_bytes((work / "ref-old" / name).read_bytes())
        report["kill_points"] += 1
        code = _run(_command(model, d / "in.jsonl", out, over_old), {"HFENC_FAULT_AT": point})
        report["killed"] += code == -9
        if out.exists():  # whatever is at the final path is a whole table: the old one or the new one
            try:
                got = _table(out)
            except Exception as exc:  # noqa: BLE001
                report["failures"].append(f"{point}: a broken file at the final path ({exc})")
                continue
            if not any(_same(got, ref) for ref in refs.values()):
                report["failures"].append(f"{point}: the file at the final path is neither run's table")
        state = d / ".out.parquet.resume.json"
        if code != 0:
            again = _command(model, d / "in.jsonl", out, over_old and not state.exists())
            code = _run(again + (["--resume"] if state.exists() else []), {})
        if code != 0:
            report["failures"].append(f"{point} (force={over_old}): the rerun exited {code}")
            continue
        report["runs_completed"] += 1
        if not _same(_table(out), refs["new"]):
            report["mismatches"] += 1
            report["failures"].append(f"{point} (force={over_old}): the table differs from an uninterrupted run")
        meta = json.loads((d / "out.parquet.json").read_text())
        if meta["files"]["out.parquet"]["bytes"] != out.stat().st_size:
            report["failures"].append(f"{point}: the sidecar describes another file")
        leftovers = sorted(p.name for p in d.iterdir() if p.name.startswith("."))
        if leftovers:
            report["failures"].append(f"{point} (force={over_old}): hidden files left: {leftovers}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
