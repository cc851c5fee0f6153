"""`hfenc search` over sparse (SPLADE) outputs: the exact top-k of q . x equals a SciPy brute force.

The indexes are real outputs of `embed` (library jobs) of tiny SparseEncoder folders
(tests/sparse_models.py): a symmetric one (splade_max) and an asymmetric one (inference_free: the
documents through its MLM, the queries through its static weights per token), each as a CSR .npz
and as Parquet, and a chunked one. The reference never uses hfenc's readers or embedding: the rows
come from scipy.sparse.load_npz or from pyarrow's column buffers, the queries from
sentence-transformers' SparseEncoder.encode_query, the scores from SciPy's sparse product.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import tiny_models
from handmade import write_output
from sparse_models import load_st
from typer.testing import CliRunner

import hfenc
from hfenc import search_sparse, searching
from hfenc.cli import app
from hfenc.compute.chunking import ChunkOptions
from hfenc.compute.embedder import Embedder
from hfenc.errors import ConfigError
from hfenc.io.inputs import InputSpec
from hfenc.jobs.local import JobOptions, embed_file
from hfenc.model.sparse import SparseRows
from hfenc.searching import Index, search_vectors

K = 10
TOL = 1e-5
QUERIES = ["the cat and the dog", "hello world", "a long book at night", "red sea moon", "good people write code"]
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    rng = random.Random(5)
    return [" ".join(rng.choice(tiny_models.WORDS) for _ in range(rng.randint(1, 30))) for _ in range(60)]


@pytest.fixture(scope="module")
def built(sparse_models, corpus, tmp_path_factory) -> Path:  # noqa: F811
    """sym.* (splade_max), free.* (inference_free, document side), chunked.* (splade_max, 8 tokens),
    free_query.npz (inference_free's documents embedded on its query side: its static route)."""
    folder = tmp_path_factory.mktemp("sparse_search")
    (folder / "in.jsonl").write_text("".join(json.dumps({"text": t, "id": f"doc{i}"}) + "\n"
                                             for i, t in enumerate(corpus)))
    spec = InputSpec(str(folder / "in.jsonl"), id_field="id")
    sym = Embedder(str(sparse_models["splade_max"]), device="cpu", dtype="float32")
    free = Embedder(str(sparse_models["inference_free"]), device="cpu", dtype="float32", side="document")
    for name, model in (("sym", sym), ("free", free)):
        embed_file(JobOptions(spec, folder / f"{name}.npz"), model)
        embed_file(JobOptions(spec, folder / f"{name}.parquet", keep_text=True, chunk_size=25), model)
    free_query = Embedder(str(sparse_models["inference_free"]), device="cpu", dtype="float32", side="query")
    embed_file(JobOptions(spec, folder / "free_query.npz"), free_query)
    chunks = ChunkOptions(tokens=8)
    embed_file(JobOptions(spec, folder / "chunked.npz", chunking=chunks), sym)
    embed_file(JobOptions(spec, folder / "chunked.parquet", chunking=chunks, keep_text=True), sym)
    return folder


# ---- the reference: SciPy, pyarrow and sentence-transformers only ---------------------------------

def _rows(path: Path) -> sp.csr_matrix:
    if path.suffix == ".npz":
        return sp.load_npz(path).tocsr()
    table = pq.read_table(path, columns=["row", "embedding"])
    assert table.column("row").to_numpy().tolist() == list(range(table.num_rows))
    column = table.column("embedding").combine_chunks()
    offsets = column.offsets.to_numpy()
    entries = column.values
    dim = json.loads(pq.read_schema(path).metadata[b"hfenc"])["dim"]
    return sp.csr_matrix((entries.field("value").to_numpy(), entries.field("index").to_numpy(), offsets),
                         shape=(table.num_rows, dim))


def _st_queries(folder: Path, queries: list[str] = QUERIES) -> np.ndarray:
    out = load_st(folder).encode_query(queries, convert_to_tensor=True, convert_to_sparse_tensor=False,
                                       show_progress_bar=False)
    return (out.to_dense() if out.is_sparse else out).float().numpy()


def _reference(path: Path, queries: np.ndarray) -> np.ndarray:
    """(queries, rows) scores: SciPy's sparse product, in float64 (a product of two float32 values is
    exact there, so rows with the same active terms tie exactly, as they do in hfenc)."""
    rows = _rows(path).astype(np.float64)
    return np.asarray((rows @ sp.csr_matrix(queries.astype(np.float64)).T).todense()).T


def _assert_top(rows: np.ndarray, scores: np.ndarray, ref: np.ndarray, k: int = K) -> int:
    """hfenc's top-k against reference scores `ref` (one query, every row), tie-aware: the scores
    equal, each hit scores as its rank's row does, and a rank whose score no other row comes within
    TOL of, but for exact ties, holds the very row (ties by the lower row). Returns how many ranks
    were that clear."""
    order = np.lexsort((np.arange(len(ref)), -ref.astype(np.float64)))
    want = order[:k]
    rows = np.asarray(rows)
    assert len(rows) == len(want) and len(set(rows.tolist())) == len(rows)
    np.testing.assert_allclose(scores, ref[want], rtol=0, atol=TOL)
    np.testing.assert_allclose(ref[rows], ref[want], rtol=0, atol=TOL)
    top = ref[order[:k + 1]]
    clear = [i for i in range(k) if np.all((np.abs(top - top[i]) > TOL) | (top == top[i]))]
    assert rows[clear].tolist() == want[clear].tolist()
    return len(clear)


# ---- against brute force -------------------------------------------------------------------------

@pytest.mark.parametrize("model, name, fmt", [
    ("splade_max", "sym", "npz"), ("splade_max", "sym", "parquet"),
    ("inference_free", "free", "npz"), ("inference_free", "free", "parquet"),
    ("inference_free", "free_query", "npz"),  # the recorded route is the query's own (static: no pooler)
])
def test_top_k_equals_scipy_brute_force(built, sparse_models, corpus, model, name, fmt):  # noqa: F811
    path = built / f"{name}.{fmt}"
    result = hfenc.search(path, QUERIES, k=K, device="cpu")
    queries = _st_queries(sparse_models[model])
    # the queries are sentence-transformers' encode_query rows (inference_free: its static query route)
    np.testing.assert_allclose(result.vectors.to_dense(), queries, rtol=0, atol=TOL)
    assert (result.stored, result.side, result.rows, result.dim) == ("sparse", "query", 60, queries.shape[1])
    assert result.scoring.startswith("dot product")
    ref = _reference(path, queries)
    clear = 0
    for i, hits in enumerate(result.results):
        assert [h.rank for h in hits.hits] == list(range(1, K + 1))
        clear += _assert_top(np.array([h.row for h in hits.hits]), np.array([h.score for h in hits.hits]), ref[i])
        assert [h.id for h in hits.hits] == [f"doc{h.row}" for h in hits.hits]
        assert [h.text for h in hits.hits] == ([corpus[h.row] for h in hits.hits] if fmt == "parquet"
                                                else [None] * K)
    assert clear >= 0.8 * K * len(QUERIES)  # the comparison is of rows, not only of scores


def test_many_blocks_and_small_gathers_give_the_same_hits(built, sparse_models, monkeypatch):  # noqa: F811
    queries = _st_queries(sparse_models["splade_max"])
    whole = {fmt: search_vectors(built / f"sym.{fmt}", SparseRows.from_dense(queries), k=K)
             for fmt in ("npz", "parquet")}
    monkeypatch.setattr(searching, "BLOCK_BYTES", 2048)  # 32 entries (about a row), 16 rows a block
    monkeypatch.setattr(search_sparse, "PAIRS", 7)  # a few (query, entry) pairs at a time
    for fmt in ("npz", "parquet"):
        index = Index(built / f"sym.{fmt}", allow_sparse=True)
        assert sum(1 for _ in index.blocks()) >= (30 if fmt == "npz" else 4)
        for given in (SparseRows.from_dense(queries), sp.csr_matrix(queries)):  # SciPy's rows are taken too
            rows, scores, hamming = search_vectors(index, given, k=K)
            assert hamming is None
            assert np.array_equal(rows, whole[fmt][0]) and np.array_equal(scores, whole[fmt][1])
        ref = _reference(built / f"sym.{fmt}", queries)
        for i in range(len(queries)):
            _assert_top(rows[i], scores[i], ref[i])


def test_score_block_over_empty_rows_and_slices():
    rng = np.random.default_rng(3)
    dense = rng.random((9, 40)).astype(np.float32) * (rng.random((9, 40)) < 0.2)
    dense[[0, 4, 8]] = 0  # empty rows first, inside and last
    queries = rng.random((3, 40)).astype(np.float32) * (rng.random((3, 40)) < 0.3)
    queries[1] = 0  # a query with no term
    terms = search_sparse.QueryTerms(SparseRows.from_dense(queries))
    for pairs in (1, 5, 1 << 20):
        got = search_sparse.score_block(terms, SparseRows.from_dense(dense), pairs=pairs)
        np.testing.assert_allclose(got, queries.astype(np.float64) @ dense.T.astype(np.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("fmt", ["npz", "parquet"])
def test_chunked_index_names_records_and_chunks_and_per_doc(built, sparse_models, corpus, fmt):  # noqa: F811
    path = built / f"chunked.{fmt}"
    texts = built / "in.jsonl" if fmt == "npz" else None
    if fmt == "npz":
        lines = [line.split("\t") for line in (built / "chunked.chunks.tsv").read_text().splitlines()[1:]]
        spans = np.array([[int(v) for v in line[1:5]] for line in lines])
    else:
        table = pq.read_table(path, columns=["doc_row", "chunk", "char_start", "char_end"])
        spans = np.stack([table.column(c).to_numpy() for c in table.column_names], axis=1)
    queries = _st_queries(sparse_models["splade_max"])
    ref = _reference(path, queries)
    assert ref.shape[1] == len(spans) > len(corpus)
    plain = hfenc.search(path, QUERIES, k=K, device="cpu", texts=texts)
    per_doc = hfenc.search(path, QUERIES, k=K, device="cpu", texts=texts, per_doc=True)
    assert plain.documents == per_doc.documents == len(corpus)
    for i in range(len(QUERIES)):
        hits = plain.results[i].hits
        _assert_top(np.array([h.row for h in hits]), np.array([h.score for h in hits]), ref[i])
        for h in hits:
            doc, chunk, a, b = spans[h.row]
            assert (h.doc_row, h.chunk, h.char_start, h.char_end, h.id) == (doc, chunk, a, b, f"doc{doc}")
            assert h.text == corpus[doc][a:b]
        # per record: its best chunk (ties: the lower row), records by that score (ties: the lower row)
        best = {}
        for row in np.lexsort((np.arange(len(spans)), -ref[i])):
            best.setdefault(int(spans[row, 0]), int(row))
        chosen = np.array(list(best.values()))  # already best first
        hits = per_doc.results[i].hits
        assert len({h.doc_row for h in hits}) == K
        got = np.array([h.row for h in hits])
        np.testing.assert_allclose([h.score for h in hits], ref[i][chosen[:K]], rtol=0, atol=TOL)
        top = ref[i][chosen[:K + 1]]
        clear = [j for j in range(K) if np.all((np.abs(top - top[j]) > TOL) | (top == top[j]))]
        assert got[clear].tolist() == chosen[clear].tolist() and len(clear) >= K - 2


def test_texts_file_names_the_hits_of_an_npz(built, corpus):
    result = hfenc.search(built / "free.npz", "hello world", k=4, texts=built / "in.jsonl", device="cpu")
    assert [h.text for h in result.results[0].hits] == [corpus[h.row] for h in result.results[0].hits]


def test_search_vectors_refuses_the_other_kind(built, tmp_path):
    with pytest.raises(ConfigError, match="holds sparse \\(SPLADE\\) rows; the queries are dense vectors"):
        search_vectors(built / "sym.npz", np.zeros((1, 112), np.float32))
    with pytest.raises(ConfigError, match="the query rows span a vocabulary of 50; the index's is 112"):
        search_vectors(built / "sym.parquet", SparseRows.from_dense(np.ones((1, 50), np.float32)))
    dense = write_output(tmp_path / "dense.npy", np.eye(4, dtype=np.float32),
                         {"format": "hfenc-embeddings/1", "complete": True, "rows": 4, "dim": 4})
    with pytest.raises(ConfigError, match="holds dense embeddings; the queries are sparse rows"):
        search_vectors(dense, SparseRows.from_dense(np.eye(1, 4, dtype=np.float32)))
    with pytest.raises(hfenc.errors.InputError, match="holds sparse \\(SPLADE\\) rows; this reads dense"):
        Index(built / "sym.npz")  # a reader of dense rows (hfenc diff) is refused in one line


# ---- the command ----------------------------------------------------------------------------------

def _search(*args: object):
    return runner.invoke(app, ["search", *map(str, args), "--device", "cpu"])


def test_cli_table_and_json(built):
    result = _search(built / "free.parquet", "hello world", "-k", "3")
    assert result.exit_code == 0, result.stderr
    hits = hfenc.search(built / "free.parquet", "hello world", k=3, device="cpu").results[0].hits
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("│") and ln.strip("│ ")[0].isdigit()]
    assert [[c.strip() for c in ln.strip("│").split("│")][:4] for ln in lines] == \
        [[str(h.rank), f"{h.score:.4f}", str(h.row), h.id] for h in hits]
    assert "60 sparse rows, dot product of the sparse query and rows; query side: query" in result.stderr
    assert "query side: query" in result.stderr
    as_json = _search(built / "chunked.npz", "hello world", "the dog", "--json", "--per-doc", "-k", "4")
    assert as_json.exit_code == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert (data["stored"], data["side"], data["documents"]) == ("sparse", "query", 60)
    assert [len(r["hits"]) for r in data["results"]] == [4, 4]
    fields = {"rank", "row", "score", "id", "doc_row", "chunk", "char_start", "char_end"}
    assert fields <= set(data["results"][0]["hits"][0])


def _without_sparse(built: Path, folder: Path) -> Path:
    shutil.copy(built / "sym.npz", folder / "sym.npz")
    sidecar = json.loads((built / "sym.npz.json").read_text())
    del sidecar["sparse"]
    (folder / "sym.npz.json").write_text(json.dumps(sidecar))
    return folder / "sym.npz"


def _parquet_without_sparse(built: Path, folder: Path) -> Path:
    table = pq.read_table(built / "sym.parquet")
    meta = json.loads(table.schema.metadata[b"hfenc"])
    del meta["sparse"]
    pq.write_table(table.replace_schema_metadata({"hfenc": json.dumps(meta)}), folder / "p.parquet")
    return folder / "p.parquet"


def _other_weights(built: Path, folder: Path) -> Path:
    shutil.copy(built / "sym.npz", folder / "sym.npz")
    sidecar = json.loads((built / "sym.npz.json").read_text())
    sidecar["weights_sha256"] = "sha256:" + "0" * 64
    (folder / "sym.npz.json").write_text(json.dumps(sidecar))
    return folder / "sym.npz"


@pytest.mark.parametrize("make, needle", [
    (lambda b, d: shutil.copy(b / "sym.npz", d / "bare.npz") and d / "bare.npz", "has no hfenc sidecar"),
    (_without_sparse, 'holds sparse rows, but its sidecar records no "sparse" object'),
    (_parquet_without_sparse, 'holds sparse rows, but its sidecar records no "sparse" object'),
    (_other_weights, "no longer embeds as the index was embedded (weights_sha256"),
], ids=["no-sidecar", "npz-no-sparse", "parquet-no-sparse", "model-changed"])
def test_cli_refusals_are_one_line(built, tmp_path, make, needle):
    result = _search(make(built, tmp_path), "hello")
    assert result.exit_code == 1 and result.stdout == "", (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.stderr
