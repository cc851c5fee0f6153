"""`hfenc verify` and `hfenc diff` on sparse (SPLADE) outputs (issue 25): a SciPy CSR .npz and
Parquet list<struct<index, value>>, made by the tiny SparseEncoder folders of tests/sparse_models.py.

verify: untouched outputs pass (--all, the rows embedded again on their recorded side); damage to
the file is found by its hash, and once the hash and seal are made to match again (as a tool that
rewrote the file would), by the layout checks or by embedding the rows again, one line each.
diff: two sparse outputs of one input against references computed here from dense float64
matrices (scipy.sparse.load_npz and pyarrow read the files, never hfenc's readers); refusals in
one line.
"""

from __future__ import annotations

import json
import random
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import sparse as sp
from scipy.stats import spearmanr
from typer.testing import CliRunner

import tiny_models
from handmade import write_output

import hfenc.compare
from hfenc import Embedder
from hfenc.cli import app
from hfenc.compare import diff, draws
from hfenc.compute.chunking import ChunkOptions
from hfenc.errors import InputError
from hfenc.io.inputs import InputSpec
from hfenc.io.npz import CsrNpz
from hfenc.io.outputs import file_sha256, sealed
from hfenc.jobs.local import JobOptions, embed_file
from hfenc.model.sparse import SparseRows
from hfenc.verification import verify
from hfenc.verification.sparse import check_sparse_rows, compare_rows

runner = CliRunner()
N = 40


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(tiny_models.WORDS) for _ in range(rng.randint(2, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def outs(tmp_path_factory, sparse_models) -> Path:  # noqa: F811
    """N texts (JSONL with ids) by splade_max to .npz and .parquet, with --max-active-dims 8, chunked;
    by inference_free on its query side; and 10 other texts."""
    folder = tmp_path_factory.mktemp("verify_sparse")
    for name, texts in (("in", _texts(N, 0)), ("other", _texts(10, 1))):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n"
                                                      for i, t in enumerate(texts)))
    splade = Embedder(sparse_models["splade_max"], device="cpu", dtype="float32")
    k8 = Embedder(sparse_models["splade_max"], device="cpu", dtype="float32", max_active_dims=8)
    query = Embedder(sparse_models["inference_free"], device="cpu", side="query")
    spec = InputSpec(str(folder / "in.jsonl"), id_field="id")
    for name, model, job in (("a.npz", splade, {}), ("a.parquet", splade, {}), ("k8.npz", k8, {}),
                             ("q.npz", query, {}), ("chunked.npz", splade, {"chunking": ChunkOptions(12, 3)}),
                             ("chunked.parquet", splade, {"chunking": ChunkOptions(12, 3)})):
        embed_file(JobOptions(spec, folder / name, **job), model)
    embed_file(JobOptions(InputSpec(str(folder / "other.jsonl"), id_field="id"), folder / "other.npz"), splade)
    return folder


def _verify(*args: object):
    result = runner.invoke(app, ["verify", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def _problems(out: Path, *args: str) -> list[str]:
    """verify's lines on a damaged output (exit 1), without the output's name."""
    result = _verify(out, "--device", "cpu", *args)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert all(line.startswith(f"{out}: ") for line in lines), lines
    return [line[len(f"{out}: "):] for line in lines]


def _copy(outs: Path, name: str, folder: Path) -> Path:
    """An output and the files its sidecar lists, copied (the input stays where it was)."""
    sidecar = json.loads((outs / f"{name}.json").read_text())
    for f in [f"{name}.json", *sidecar["files"]]:
        (folder / f).write_bytes((outs / f).read_bytes())
    return folder / name


def _reseal(out: Path, **edits) -> None:
    """The sidecar made to match the output file again (its size, SHA-256 and seal), with `edits`."""
    path = out.with_name(out.name + ".json")
    data = json.loads(path.read_text())
    data["files"][out.name] = {"bytes": out.stat().st_size, "sha256": file_sha256(out)}
    data.update(edits)
    path.write_text(json.dumps(sealed(data), indent=2))


def _csr(path: Path) -> sp.csr_matrix:
    return sp.load_npz(path)


def _rewrite_npz(out: Path, indptr, indices, data, shape) -> None:
    """Members as given (np.savez stores them uncompressed, so hfenc's reader maps them), resealed."""
    np.savez(out, indices=np.asarray(indices), indptr=np.asarray(indptr), format=np.array(b"csr"),
             shape=np.asarray(shape, np.int64), data=np.asarray(data))
    _reseal(out)


def _dense(path: Path) -> np.ndarray:
    """A sparse output's rows, dense float64, read with SciPy or pyarrow."""
    if path.suffix == ".npz":
        return _csr(path).toarray().astype(np.float64)
    table = pq.read_table(path)
    dim = json.loads(table.schema.metadata[b"hfenc"])["dim"]  # the sidecar's copy in the file
    out = np.zeros((table.num_rows, dim))
    for r, entries in zip(table.column("row").to_pylist(), table.column("embedding").to_pylist()):
        for e in entries:
            out[r, e["index"]] = e["value"]
    return out


# ---- verify: untouched outputs ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["a.npz", "a.parquet", "k8.npz", "chunked.npz", "chunked.parquet"])
def test_an_untouched_sparse_output_verifies(outs, name):
    out = outs / name
    result = _verify(out, "--all", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {out}:") and "values within 0.001" in result.stdout
    report = verify(out, every=True, device="cpu")
    assert report.ok and report.sampled == report.rows and report.min_cosine >= report.tolerance == 0.99999
    assert report.max_difference <= report.value_tolerance == 1e-3


def test_the_inference_free_query_side_verifies(outs):
    """Embedded again on the recorded side, the query side's static weights (no pooler, no MLM)."""
    assert json.loads((outs / "q.npz.json").read_text())["side"] == "query"
    assert _verify(outs / "q.npz", "--sample", "0").exit_code == 0  # the files and the layout
    report = verify(outs / "q.npz", every=True, device="cpu")
    assert report.ok, report.problems
    assert report.sampled == N and report.min_cosine >= report.tolerance


def test_json_report_of_a_sparse_output(outs):
    report = json.loads(_verify(outs / "a.parquet", "--json", "--sample", "8", "--device", "cpu").stdout)
    assert report["ok"] and report["rows_embedded_again"] == 8 and report["files_checked"] == 1
    assert report["value_tolerance"] == 1e-3 and 0 <= report["max_difference"] < 1e-3


# ---- verify: damage ---------------------------------------------------------------------------

def _flip_in_place(out: Path, at: int, crc: bool) -> None:
    """Entry `at` of the data member negated in place; `crc`: its CRC-32 updated in the local
    header and the central directory, so that the archive stays valid (SciPy loads it)."""
    with zipfile.ZipFile(out) as zf:
        info = zf.getinfo("data.npy")
    with open(out, "r+b") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        fh.seek(start)
        assert fh.read(8)[:6] == b"\x93NUMPY"
        header = 10 + int.from_bytes(fh.read(2), "little")  # .npy 1.0: magic, version, length, header
        fh.seek(start + header + 4 * at)
        value = np.frombuffer(fh.read(4), np.float32)[0]
        fh.seek(start + header + 4 * at)
        fh.write(np.float32(-value).tobytes())
        if crc:
            fh.seek(start)
            code = zlib.crc32(fh.read(info.file_size)).to_bytes(4, "little")
            fh.seek(info.header_offset + 14)
            fh.write(code)
            fh.seek(0)
            data = fh.read()
            central = data.index(b"PK\x01\x02")  # the central directory's entries, to data.npy's
            while data[central + 46:central + 46 + int.from_bytes(data[central + 28:central + 30], "little")] \
                    != b"data.npy":
                central = data.index(b"PK\x01\x02", central + 4)
            fh.seek(central + 16)
            fh.write(code)


def test_a_flipped_value_is_found_by_the_hash_then_by_embedding_again(outs, tmp_path):
    out = _copy(outs, "a.npz", tmp_path)
    m = _csr(out)
    row = 17
    at = int(m.indptr[row]) + int(np.argmax(m.data[m.indptr[row]:m.indptr[row + 1]]))  # row 17's largest value
    _flip_in_place(out, at, crc=True)
    assert _csr(out).data[at] == -m.data[at]  # a valid archive SciPy loads
    assert _problems(out) == ["a.npz has changed: its SHA-256 is not the one the sidecar records"]
    _reseal(out)
    lines = _problems(out, "--all")
    assert len(lines) == 1 and lines[0].startswith(f"row {row}: embedded again, its cosine to the stored row is ")
    # the same edit without its CRC-32: a file SciPy refuses
    out = _copy(outs, "a.npz", tmp_path)
    _flip_in_place(out, at, crc=False)
    _reseal(out)
    assert _problems(out) == ["a.npz: data.npy does not match its CRC-32 (scipy.sparse.load_npz would refuse it)"]


def test_a_wrong_row_is_named(outs, tmp_path):
    out = _copy(outs, "a.npz", tmp_path)
    m = _csr(out)
    order = np.arange(N)
    order[[5, 9]] = [9, 5]
    m = m[order]
    _rewrite_npz(out, m.indptr, m.indices, m.data, m.shape)
    lines = _problems(out, "--all")
    assert [line.split(":")[0] for line in lines] == ["row 5", "row 9"]
    assert all("of its active dimensions differ from the stored row's" in line for line in lines)


def test_layout_problems_are_one_line_each(outs, tmp_path):
    out = _copy(outs, "k8.npz", tmp_path)
    m = _csr(out)
    indptr, indices, data = m.indptr.copy(), m.indices.copy(), m.data.copy()
    a = indptr[3]
    indices[a], indices[a + 1] = indices[a + 1], indices[a]  # row 3: unsorted
    indices[indptr[8] - 1] = m.shape[1]  # row 7: outside the vocabulary (its last entry: still increasing)
    data[indptr[11] + 2] = np.nan  # row 11: not finite
    # row 20 gains a ninth entry (max_active_dims is 8)
    free = np.setdiff1d(np.arange(m.shape[1]), indices[indptr[20]:indptr[21]])[0]
    pos = indptr[20] + np.searchsorted(indices[indptr[20]:indptr[21]], free)
    indices, data = np.insert(indices, pos, free), np.insert(data, pos, 0.5)
    indptr[21:] += 1
    _rewrite_npz(out, indptr, indices, data, m.shape)
    assert set(_problems(out, "--sample", "0")) == {
        "k8.npz: 1 row holds a value that is not finite (first: row 11)",
        "k8.npz: 1 row holds an index outside [0, 112) (first: row 7)",
        "k8.npz: 1 row holds indices that do not strictly increase (unsorted or repeated) (first: row 3)",
        "k8.npz: 1 row holds more than the 8 active dimensions max_active_dims allows (first: row 20)",
    }
    # the shape, the dtypes and indptr
    _rewrite_npz(out, m.indptr, m.indices, m.data, (N, 100))
    assert _problems(out, "--sample", "0") == ["k8.npz holds 40 x 100 sparse rows; the sidecar says 40 x 112"]
    _rewrite_npz(out, m.indptr.astype(np.int64), m.indices.astype(np.int64), m.data.astype(np.float64), m.shape)
    assert _problems(out, "--sample", "0") == ["k8.npz: indices.npy holds int64, not the int32 hfenc writes",
                                               "k8.npz: indptr.npy holds int64, not the int32 hfenc writes",
                                               "k8.npz: data.npy holds float64, not the float32 hfenc writes"]
    down = m.indptr.copy()
    down[10] = down[12]
    _rewrite_npz(out, down, m.indices, m.data, m.shape)
    assert _problems(out, "--sample", "0") == ["k8.npz: indptr decreases at row 10 (a row cannot end before it starts)"]
    (tmp_path / "k8.npz").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty ZIP archive
    _reseal(out)
    assert _problems(out) == ["cannot read k8.npz as a sparse CSR .npz: it has no indices.npy (members: none)"]


def test_a_parquet_file_of_another_column_type_is_named(outs, tmp_path):
    out = _copy(outs, "a.parquet", tmp_path)
    table = pq.read_table(out)
    kind = pa.list_(pa.struct([("index", pa.int64()), ("value", pa.float32())]))
    table = table.set_column(table.schema.get_field_index("embedding"), "embedding",
                             table.column("embedding").cast(kind))
    pq.write_table(table, out)
    _reseal(out)
    (line,) = _problems(out)
    assert line.startswith("a.parquet stores list<") and "the sidecar says sparse rows of 112 vocabulary" in line


@dataclass
class _Report:
    problems: list[str] = field(default_factory=list)
    sampled: int = 0
    min_cosine: float | None = None
    max_difference: float | None = None
    value_tolerance: float | None = None
    tolerance: float | None = None
    computed_in: str | None = None


def _rows(*rows: dict[int, float], dim: int = 10) -> SparseRows:
    indptr = np.cumsum([0, *map(len, rows)])
    return SparseRows(indptr.astype(np.int64), np.array([i for r in rows for i in sorted(r)], np.int32),
                      np.array([r[i] for r in rows for i in sorted(r)], np.float32), dim)


def test_the_rule_for_rows_embedded_again():
    """Active dimensions may differ at entries below rtol x the row's largest value, or at a near-tie
    at the top-k cut; every value within rtol x the row's largest; the cosine as for dense rows."""
    stored = _rows({0: 2.0, 3: 1.0, 5: 0.5},  # 0: equal
                   {0: 2.0, 3: 1.0},  # 1: fresh has a tiny extra entry (1e-4 x 2.0 < 1e-3 x 2.0)
                   {0: 2.0, 3: 1.0},  # 2: fresh has an extra entry of 0.1: differ
                   {i: 1.0 for i in range(10)},  # 3: one value off by 1%: the cosine passes, the values do not
                   {0: 2.0, 3: 1.0},  # 4: another row altogether
                   {})  # 5: empty, both
    fresh = _rows({0: 2.0, 3: 1.0, 5: 0.5},
                  {0: 2.0, 3: 1.0, 8: 2e-4},
                  {0: 2.0, 3: 1.0, 8: 0.1},
                  {**{i: 1.0 for i in range(9)}, 9: 1.01},
                  {1: 2.0, 4: 1.0},
                  {})
    got = compare_rows(stored, fresh, rtol=1e-3)
    assert got["differ"].tolist() == [0, 0, 1, 0, 4, 0]
    assert got["cosine"][[0, 1, 5]].tolist() == pytest.approx([1, 1, 1], abs=1e-8)
    assert got["cosine"][3] > 0.99999 and got["difference"][3] == pytest.approx(0.01 / 1.01, rel=1e-5)
    assert got["cosine"][4] == 0
    report = _Report()
    check_sparse_rows(stored, fresh, np.arange(100, 106), "float32", 0.99999, None, report, 20)
    assert [p.split(",")[0] for p in report.problems] == ["row 102: embedded again", "row 103: embedded again",
                                                          "row 104: embedded again"]
    assert "a value differs from the stored one by 0.0099 of the row's largest value" in report.problems[1]
    assert report.sampled == 6 and report.max_difference == pytest.approx(1.0)
    # max_active_dims 2: a near-tie at the cut may swap; a larger value kept instead may not
    stored = _rows({0: 2.0, 1: 0.5}, {0: 2.0, 1: 0.5}, {0: 2.0, 1: 0.5}, {0: 2.0, 1: 0.5})
    fresh = _rows({0: 2.0, 2: 0.5 + 1e-4}, {0: 2.0, 2: 0.9}, {0: 2.0, 2: 0.4}, {0: 2.0})
    got = compare_rows(stored, fresh, rtol=1e-3, k=2)
    # 1: 0.9 is not at stored's cut (0.5); 2: 0.5 is not at fresh's (0.4); 3: fresh is not full, 0.5 is large
    assert got["differ"].tolist() == [0, 1, 1, 1] and got["cosine"][0] == pytest.approx(1.0, abs=1e-12)


# ---- diff -------------------------------------------------------------------------------------

def _reference(x: np.ndarray, y: np.ndarray, sample: int, k: int, pairs: int, seed: int = 0) -> dict:
    """Per-row cosines, and overlap@k and Spearman by dot product from full float64 matrices."""
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    cos = (x * y).sum(1) / np.where(norms > 0, norms, 1)
    queries, first, other = draws(len(x), sample, pairs, seed)
    dots = [v @ v.T for v in (x, y)]
    shared = []
    for q in queries:
        tops = []
        for d in dots:
            scores = d[q].copy()
            scores[q] = -np.inf
            tops.append(set(np.lexsort((np.arange(len(scores)), -scores))[:k].tolist()))
        shared.append(len(tops[0] & tops[1]) / k)
    i = queries[first]
    return {"cos": cos, "mean": np.mean(shared), "min": np.min(shared),
            "spearman": spearmanr(dots[0][i, other], dots[1][i, other]).statistic}


@pytest.fixture(scope="module")
def groups(outs) -> Path:
    """a.parquet rewritten in row groups of 3 rows (its sidecar travels in its metadata)."""
    pq.write_table(pq.read_table(outs / "a.parquet"), outs / "groups.parquet", row_group_size=3)
    return outs / "groups.parquet"


@pytest.mark.parametrize("a,b", [("a.npz", "k8.npz"), ("groups.parquet", "k8.npz"), ("a.npz", "a.parquet")])
def test_diff_of_two_sparse_outputs_equals_numpy(outs, groups, a, b, monkeypatch):
    x, y = _dense(outs / a), _dense(outs / b)
    ref = _reference(x, y, 30, 5, 2000)
    blocks = CsrNpz.blocks
    # one piece; or many, cut across blocks of a few rows, and products cut into many groups
    for piece, pairs, entries in ((4096, 1 << 20, 4 << 20), (7, 50, 60), (16, 1, 1)):
        monkeypatch.setattr(hfenc.compare, "PIECE_ROWS", piece)
        monkeypatch.setattr(hfenc.compare, "PAIRS", pairs)
        monkeypatch.setattr(CsrNpz, "blocks", lambda self, max_nnz=0, entries=entries: blocks(self, entries))
        result = diff(outs / a, outs / b, sample=30, k=5, pairs=2000, top=5)
        assert result.similarity == "dot" and result.a.stored == result.b.stored == "sparse"
        assert result.a.dim == result.b.dim == x.shape[1] and result.rows == N
        cos = ref["cos"]
        assert result.cosine["min"] == pytest.approx(cos.min(), abs=1e-9)
        assert result.cosine["p1"] == pytest.approx(np.percentile(cos, 1), abs=1e-9)
        assert result.cosine["median"] == pytest.approx(np.median(cos), abs=1e-9)
        assert result.cosine["mean"] == pytest.approx(cos.mean(), abs=1e-9)
        assert result.overlap["mean"] == pytest.approx(ref["mean"], abs=1e-12)
        assert result.overlap["min"] == pytest.approx(ref["min"], abs=1e-12)
        assert result.spearman == pytest.approx(ref["spearman"], abs=1e-9)
        assert [m.id for m in result.moved] == [f"r{m.row}" for m in result.moved]
        if a == "a.npz" and b == "a.parquet":  # one model, one input: the same rows
            assert result.cosine["min"] == pytest.approx(1.0, abs=1e-12) and result.spearman == pytest.approx(1.0)
        else:  # pruning to 8 of ~35 active dimensions moves every row (their last bits: no ties)
            assert result.cosine["min"] < 0.9 and result.overlap["mean"] < 1
            assert [m.row for m in result.moved] == np.lexsort((np.arange(N), cos))[:5].tolist()


def test_diff_cli_names_the_dot_product(outs, monkeypatch):
    monkeypatch.chdir(outs)
    result = runner.invoke(app, ["diff", "a.npz", "k8.npz", "--top", "3"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert all(len(line) <= 80 for line in result.stdout.splitlines()), result.stdout
    for needle in ("stored sparse, vocabulary 112", "cosine min", "sample rows, by dot", "pairs, by dot", "r"):
        assert needle in result.stdout, result.stdout
    parsed = json.loads(runner.invoke(app, ["diff", "a.npz", "k8.npz", "--json"]).stdout)
    assert parsed["similarity"] == "dot" and parsed["a"]["stored"] == "sparse"


def _one_error(*args: object) -> str:
    result = runner.invoke(app, ["diff", *map(str, args)], env={"COLUMNS": "200"})
    assert result.exit_code == 1 and result.stdout == "", (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_diff_refuses_a_dense_against_a_sparse_output_and_other_inputs(outs, tmp_path):
    sidecar = json.loads((outs / "a.npz.json").read_text())
    dense = {k: sidecar[k] for k in ("format", "complete", "rows", "input", "model")}
    write_output(tmp_path / "dense.npy", np.ones((N, 4), np.float32), {**dense, "dim": 4})
    line = _one_error(outs / "a.npz", tmp_path / "dense.npy")
    assert "a.npz holds sparse rows and" in line and "dense.npy dense ones" in line
    assert "holds sparse rows" in _one_error(tmp_path / "dense.npy", outs / "a.parquet")
    line = _one_error(outs / "a.npz", outs / "other.npz")
    assert "not outputs of the same input" in line and "sha256 differs" in line
    with pytest.raises(InputError, match="a row per chunk"):
        diff(outs / "a.npz", outs / "chunked.npz")
