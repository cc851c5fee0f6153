"""The output of a --ray job, and its claim on the hidden files beside it.

An output is one .npy (the shards assembled in input order, published like the local path's
output), a sparse model's one .npz (SciPy CSR, assembled the same way), or a directory of Parquet
shards. Either way the job's shards are written into the hidden `.OUT.partial/` beside it and
claimed by `.OUT.resume.json`: the names and the state file of hfenc.io.outputs, so `hfenc clean`
finds them, and one ownership rule (hfenc.io.outputs.Listing) decides what an existing output
holds that hfenc may replace. Ray's checkpoint (which rows are committed) lives inside the
partial directory too, so resuming needs nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from hfenc.errors import ConfigError, OutputError, ResumeError
from hfenc.io.outputs import (MANIFEST, Listing, OutputPaths, check_directory, check_writable, claimed, default_output,
                              nothing_to_resume, read_state, remove_path, resume_state, write_state)
from hfenc.jobs.local import JobOptions, reuses_output

if TYPE_CHECKING:
    from hfenc.jobs.ray_tasks import InputFile

ENGINE = "ray"
DATASET_FORMAT = "parquet-dataset"


@dataclass(frozen=True)
class RayOutput:
    """Where a job's rows go: `kind` "npy" or "npz" (assembled: a dense array, a sparse model's CSR
    rows) or "dataset" (a directory of shards), the output's paths (hfenc.io.outputs), and the
    hidden working directories inside `.OUT.partial/`."""

    kind: Literal["npy", "npz", "dataset"]
    paths: OutputPaths

    @property
    def assembled(self) -> bool:
        """One file in input order (with the local path's side files), not a directory of shards."""
        return self.kind != "dataset"

    @property
    def format(self) -> str:
        """The local path's name of the output's format (hfenc.io.writers.out_format), for its checks."""
        return "parquet" if self.kind == "dataset" else self.kind

    @property
    def path(self) -> Path:
        return self.paths.npy

    @property
    def shards(self) -> Path:
        return self.paths.partial / "shards"

    @property
    def checkpoint(self) -> Path:
        return self.paths.partial / "checkpoint"

    @property
    def meta(self) -> Path:
        """ray_tasks.META_DIR beside the shards: one JSON per shard (a literal here: importing the
        task module needs Ray, and this one must not)."""
        return self.shards / "_meta"

    @property
    def done(self) -> Path:
        """The manifest inside the shard directory: written last, once every row is embedded."""
        return self.shards / MANIFEST


def choose_output(job: JobOptions, files: list[InputFile]) -> RayOutput:
    """The output `job` names (or the input's default: INPUT.npy, a sparse model's INPUT.npz),
    refused where --ray cannot write it."""
    out = job.output
    if out is None:
        if len(files) != 1 or not files[0].local or job.input.path == "-" or job.texts:
            one = "-o OUT.npz (one CSR array)" if job.sparse else "-o OUT.npy (one array)"
            raise ConfigError("with --ray, this input needs an output",
                              hint=f"pass {one} or -o OUT_DIR (a directory of Parquet shards)")
        out = default_output(files[0].name)
        if job.sparse:
            out = out.with_suffix(".npz")
    text = str(out)
    if "://" in text:
        raise ConfigError(f"output {text}: with --ray the output is a local path (on a cluster, a shared mount "
                          "every node sees)")
    path = Path(out)
    suffix = path.suffix.lower()
    one = ".npz" if job.sparse else ".npy"
    if suffix in (".parquet", ".pq"):
        raise ConfigError(f"output {path}: with --ray the output is a directory of Parquet shards or one {one}",
                          hint=f"write -o {path.with_suffix('')} for the shards, or -o {path.with_suffix(one)}")
    kind: Literal["npy", "npz", "dataset"] = "npy" if suffix == ".npy" else "npz" if suffix == ".npz" else "dataset"
    fmt = job.out_format
    if fmt is not None and (fmt, kind) not in (("npy", "npy"), ("npz", "npz"), ("parquet", "dataset")):
        raise ConfigError(f"--out-format {fmt} does not fit the output {path} with --ray",
                          hint=f"name the output OUT{one} for one array, or a directory for Parquet shards")
    if job.keep_text and kind != "dataset":  # as locally: an array holds numbers only
        raise ConfigError(f"--keep-text needs Parquet: with --ray, a directory of shards, not {path.name}",
                          hint=f"write -o {path.with_suffix('')}")
    return RayOutput(kind, OutputPaths(path))


def check_output(out: RayOutput, job: JobOptions) -> None:
    """As hfenc.io.outputs.check_writable, for the Ray job's output (a .npy, or a directory)."""
    paths = out.paths
    if out.assembled:
        chunked, docs = job.chunking is not None, job.chunking is not None and job.chunking.doc_vectors
        writes = tuple(p for made, p in ((job.input.id_field, paths.ids), (job.input.skip_blank, paths.lines),
                                         (chunked, paths.chunks), (docs, paths.docs), (True, paths.hashes)) if made)
        check_writable(paths, job.force, job.resume, writes, replaces=reuses_output(job, out.path))
        return
    check_directory(out.path.parent)
    if job.resume and not paths.state.exists():
        raise nothing_to_resume(out.path, out.path.exists() and any(out.path.iterdir()))
    if out.path.exists() and not job.resume:  # (with --resume, a state exists: checked above)
        if not out.path.is_dir():
            raise OutputError(f"output {out.path} exists and is not a directory")
        if any(out.path.iterdir()):
            # --force replaces only what the manifest lists (hfenc.io.outputs.Listing): without
            # one, nothing in the directory is hfenc's to replace.
            if Listing.read(out.path / MANIFEST) is None:
                raise OutputError(f"output {out.path} is a directory that hfenc did not write (it has no {MANIFEST})",
                                  hint="choose another output with -o")
            if not job.force and not reuses_output(job, out.path):
                raise OutputError(f"output {out.path} already exists", hint="pass --force to overwrite it")
    if paths.state.exists() and not job.resume and not job.force:
        raise OutputError(f"an interrupted run of {out.path} can be resumed",
                          hint="pass --resume to continue it, or --force to start over")
    if paths.partial.exists() and not paths.state.exists() and not job.force:
        raise OutputError(f"{paths.partial} exists but no interrupted hfenc run claims it",
                          hint="move it away, or pass --force to overwrite it")


@dataclass(frozen=True)
class PartialState:
    """What the output's resume state holds for this run: the interrupted run's stats (its
    quantization ranges), and its publication plan when it had begun to publish."""

    stats: dict[str, Any]
    publishing: dict[str, Any] | None


def reserve_partial(out: RayOutput, job: JobOptions, fingerprint: dict[str, Any]) -> PartialState:
    """Claim the partial output (the state first: from here on a crash is resumable), or, with
    --resume, pick up the interrupted run's, refused if anything that changes a row changed."""
    paths = out.paths
    if job.resume and paths.state.exists():
        if read_state(paths)["fingerprint"].get("engine") != ENGINE:
            raise ResumeError(f"the interrupted run of {out.path} was not a --ray run",
                              hint="resume it without --ray, or use --force to start over")
        state = resume_state(paths, fingerprint)  # refuses a changed input or option, naming it
        return PartialState(state.get("stats") or {}, state.get("publishing"))
    remove_path(paths.partial)
    write_state(paths, fingerprint, 0, {"engine": ENGINE})
    return PartialState({}, None)


def abandon(paths: OutputPaths) -> None:
    """Drop the run's hidden files (a refused run leaves nothing behind): what its state claims."""
    for path in claimed(paths):
        remove_path(path)


def committed(out: RayOutput) -> dict[str, dict[str, Any]]:
    """The shards whose rows Ray's checkpoint has committed: name -> their _meta JSON."""
    found: dict[str, dict[str, Any]] = {}
    try:
        names = os.listdir(out.checkpoint)
    except FileNotFoundError:
        return found
    for name in names:
        if not name.endswith(".parquet") or name.endswith(".pending.parquet"):
            continue
        base = name.removesuffix(".parquet")
        try:
            found[base] = json.loads((out.meta / (base + ".json")).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return found


def committed_rows(out: RayOutput) -> int:
    return sum(m["rows"] for m in committed(out).values())


def verify(out: RayOutput, rows: int) -> list[dict[str, Any]]:
    """Every row in [0, rows) in exactly one shard, every shard described; the shard list."""
    import pyarrow.parquet as pq

    metas = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in out.meta.glob("*.json")}
    data = {p.stem: p for p in out.shards.glob("*.parquet") if not p.name.startswith("_")}  # not _docs.parquet
    if set(metas) != set(data):
        raise RuntimeError(f"shards and their descriptions disagree in {out.shards}: "
                           f"{sorted(set(metas) ^ set(data))[:5]}")
    count = np.zeros(rows, dtype=np.uint8)
    for name, path in data.items():
        index = pq.read_table(path, columns=["row"]).column("row").to_numpy()
        if len(index) != metas[name]["rows"]:
            raise RuntimeError(f"shard {path} holds {len(index)} rows, its description says {metas[name]['rows']}")
        np.add.at(count, index, 1)
    missing, doubled = np.flatnonzero(count == 0), np.flatnonzero(count > 1)
    if len(missing) or len(doubled):
        raise RuntimeError(f"the shards in {out.shards} do not hold every row exactly once: {len(missing)} missing "
                           f"(first {missing[:5].tolist()}), {len(doubled)} doubled (first {doubled[:5].tolist()})")
    return sorted(metas.values(), key=lambda m: m["row_min"])
