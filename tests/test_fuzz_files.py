"""Files hfenc wrote earlier are input like any other: sidecars, resume states and manifests,
mutated 1,200 times (keys deleted, values of other types, paths, truncation, garbage) and fed to
`search`, `clean` and `--resume`. Each call either works or fails with one HfencError line;
anything else (a traceback) is a failure, listed by where it was raised."""

from __future__ import annotations

import copy
import json
import random
import traceback
from pathlib import Path

import pytest

import hfenc
from hfenc.errors import HfencError, Interrupted
from hfenc.io.cleanup import find_abandoned, settle
from hfenc.io.inputs import InputSpec
from hfenc.io.outputs import OutputPaths, directory_entries, owns
from hfenc.jobs.local import JobOptions, embed_file
from interrupts import stop_after

MUTATIONS = 1200
VALUES = [None, 0, -1, 2**40, 1.5, float("nan"), True, "", "x", "../x", "/etc/passwd", "a/b", [], [1, "a"],
          {}, {"a": 1}]


def _places(obj: object, prefix: tuple = ()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _places(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj[:4]):
            yield from _places(value, (*prefix, i))


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.08:
        return raw[: rng.randrange(len(raw))]  # truncated
    if roll < 0.12:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))  # garbage
    data = json.loads(raw)
    for _ in range(rng.randint(1, 3)):
        place = rng.choice([p for p in _places(data) if p] or [()])
        if not place:
            return json.dumps(rng.choice(VALUES)).encode()
        parent = data
        for key in place[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and rng.random() < 0.4:
            del parent[place[-1]]
        else:
            parent[place[-1]] = copy.deepcopy(rng.choice(VALUES))
    return json.dumps(data).encode()


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, embedder) -> Path:
    """An index (float32, with ids), an int8 index, an interrupted job (with in-flight rows) and a
    dataset directory with a manifest, all made by hfenc."""
    work = tmp_path_factory.mktemp("fuzz")
    (work / "in.jsonl").write_text("".join(json.dumps({"text": f"the cat {i} sat", "id": f"d{i}"}) + "\n"
                                           for i in range(30)))
    spec = InputSpec(str(work / "in.jsonl"), id_field="id")
    embed_file(JobOptions(spec, work / "idx.npy"), embedder)
    embed_file(JobOptions(spec, work / "q8.npy", quantize="int8"), embedder)
    with pytest.raises(Interrupted):
        embed_file(JobOptions(spec, work / "part.npy", chunk_size=10), embedder, progress=stop_after(12))
    (work / "ds").mkdir()
    (work / "ds" / "part-0.parquet").write_bytes(b"shard")
    (work / "ds" / "_hfenc_manifest.json").write_text(json.dumps({
        "format": "hfenc-embeddings/1", "complete": True, "rows": 30, "dim": 32,
        "shards": [{"file": "part-0.parquet", "bytes": 5}], "files": {}}))
    return work


def _targets(work: Path, embedder) -> dict:
    spec = InputSpec(str(work / "in.jsonl"), id_field="id")
    return {
        "idx.npy.json": lambda rng: hfenc.search(work / "idx.npy", "cat", k=3, device="cpu",
                                                 texts=work / "in.jsonl" if rng.random() < 0.5 else None),
        "q8.npy.json": lambda rng: hfenc.search(work / "q8.npy", "cat", k=3, device="cpu"),
        ".part.npy.resume.json": lambda rng: (
            [(item.bytes, settle(item)) for item in find_abandoned(work) if item.output.name == "part.npy"]
            if rng.random() < 0.4 else
            embed_file(JobOptions(spec, work / "part.npy", chunk_size=10, resume=True), embedder)),
        "ds/_hfenc_manifest.json": lambda rng: (directory_entries(work / "ds", "_hfenc_manifest.json"),
                                                owns(OutputPaths(work / "ds"), work / "ds" / "part-0.parquet")),
    }


def test_mutated_files_give_one_line_or_work_never_a_traceback(outputs, embedder):
    rng = random.Random(20261204)
    pristine = {p.relative_to(outputs): p.read_bytes() for p in outputs.rglob("*") if p.is_file()}
    targets = _targets(outputs, embedder)
    crashes: dict[str, str] = {}
    counts = dict.fromkeys(targets, 0)
    for _ in range(MUTATIONS):
        name = rng.choice(sorted(targets))
        (outputs / name).write_bytes(_mutate(pristine[Path(name)], rng))
        counts[name] += 1
        try:
            targets[name](rng)
        except HfencError as exc:
            if "\n" in str(exc):
                crashes.setdefault(f"{name}: a message of several lines", str(exc)[:200])
        except Exception as exc:  # noqa: BLE001 (what the test is looking for)
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            crashes.setdefault(f"{name}: {type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}",
                               str(exc)[:200])
        finally:  # every case starts from the files hfenc wrote, and nothing else
            for path in [p for p in outputs.rglob("*") if p.is_file() and p.relative_to(outputs) not in pristine]:
                path.unlink()
            for rel, data in pristine.items():
                (outputs / rel).write_bytes(data)
    assert sum(counts.values()) >= 1000 and min(counts.values()) >= 200, counts
    assert not crashes, "\n".join(f"{k}: {v}" for k, v in sorted(crashes.items()))
