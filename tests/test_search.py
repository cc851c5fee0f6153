"""`hfenc search` and hfenc.search (issue 12): the same top-k as a brute-force numpy reference for
float, int8 and binary indexes (.npy and .parquet, any block size), queries embedded exactly as
`embed` embeds the same text with the index's recorded options (prompt, truncation, quantization),
the model's "query" prompt where it defines one, ids and texts of hits, and the CLI's table, JSON,
query files and stdin, and one-line errors.

The references below are written out independently: full-matrix products, np.unpackbits and
sentence-transformers' own dequantization and quantization; never hfenc.searching's code.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sentence_transformers.util.quantization import _dequantize_embeddings, quantize_embeddings
from typer.testing import CliRunner

from handmade import write_output

import hfenc
import st_layouts
import tiny_models
from hfenc import Embedder
from hfenc.cli import app
from hfenc.errors import ConfigError, InputError
from hfenc.io.inputs import InputSpec
from hfenc.jobs.local import JobOptions, embed_file
from hfenc.searching import Index, search_vectors

runner = CliRunner()


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(tiny_models.WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def _ranges(x: np.ndarray) -> np.ndarray:
    return np.vstack((x.min(0), x.max(0))).astype(np.float32)


def _synthetic(folder: Path, vectors: np.ndarray, precision: str | None = None, parquet: bool = False,
               row_group: int = 1000) -> Path:
    """An index of given float vectors (quantized by sentence-transformers) with a sidecar that
    records what search reads."""
    n, dim = vectors.shape
    ranges = _ranges(vectors) if precision and precision.endswith("int8") else None
    rows = vectors if precision is None else quantize_embeddings(vectors, precision, ranges=ranges)
    sidecar = {"format": "hfenc-embeddings/1", "complete": True, "rows": n, "dim": dim, "normalize": True,
               "quantization": None if precision is None else {
                   "precision": precision, "dim": dim, "stored_width": rows.shape[1],
                   "ranges": None if ranges is None else ranges.tolist(), "calibration": None}}
    return write_output(folder / f"{precision or 'float'}.{'parquet' if parquet else 'npy'}", rows, sidecar,
                        row_group)


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((np.arange(scores.shape[0]), -scores))[:k]  # best score, then lower row
    return order, scores[order]


# ---- against brute force -----------------------------------------------------------------------

@pytest.mark.parametrize("parquet", [False, True])
@pytest.mark.parametrize("precision", [None, "int8", "uint8"])
def test_top_k_equals_brute_force_over_any_block_size(tmp_path, precision, parquet):
    rng = np.random.default_rng(7)
    x, q = _unit(rng, 5000, 48), _unit(rng, 6, 48)
    path = _synthetic(tmp_path, x, precision, parquet, row_group=777)
    if precision is None:
        values = x
    else:
        meta = json.loads(path.with_name(path.name + ".json").read_text()) if not parquet else \
            json.loads(pq.read_schema(path).metadata[b"hfenc"])
        codes = quantize_embeddings(x, precision, ranges=np.asarray(meta["quantization"]["ranges"], np.float32))
        values = _dequantize_embeddings(codes.astype(int), precision, np.asarray(meta["quantization"]["ranges"]))
    for block_bytes in (1 << 10, 1 << 16, 1 << 25):  # 1,024-row blocks (the floor), bigger, all in one
        rows, scores, hamming = search_vectors(Index(path, block_bytes=block_bytes), q, k=10)
        assert hamming is None and rows.shape == (6, 10)
        for i in range(len(q)):
            want_rows, want_scores = _reference_topk(values.astype(np.float64) @ q[i].astype(np.float64), 10)
            assert rows[i].tolist() == want_rows.tolist()
            np.testing.assert_allclose(scores[i], want_scores, rtol=0, atol=2e-6)


@pytest.mark.parametrize("parquet", [False, True])
@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_hamming_then_float_rescoring_equals_brute_force(tmp_path, precision, parquet):
    rng = np.random.default_rng(11)
    dim = 45  # not a multiple of 8
    x, q = _unit(rng, 3000, dim), _unit(rng, 4, dim)
    x[100:120] = x[5]  # exact ties: equal Hamming distances and equal rescored scores
    path = _synthetic(tmp_path, x, precision, parquet, row_group=500)
    k, rescore = 7, 3
    rows, scores, hamming = search_vectors(Index(path, block_bytes=1 << 10), q, k=k, rescore=rescore)
    bits = (x > 0).astype(np.int64)
    for i in range(len(q)):
        qbits = (q[i] > 0).astype(np.int64)
        ham = (bits != qbits).sum(1)
        candidates = np.lexsort((np.arange(len(x)), ham))[: k * rescore]  # nearest bits, lower row first
        rescored = bits[candidates].astype(np.float64) @ q[i].astype(np.float64)  # sentence-transformers' rescoring
        order = np.lexsort((candidates, -rescored))[:k]
        assert rows[i].tolist() == candidates[order].tolist()
        assert hamming[i].tolist() == ham[candidates[order]].tolist()
        np.testing.assert_allclose(scores[i], rescored[order], rtol=0, atol=1e-5)


def test_k_larger_than_the_index_returns_every_row(tmp_path):
    x = _unit(np.random.default_rng(3), 5, 8)
    rows, scores, _ = search_vectors(_synthetic(tmp_path, x), x[:1], k=50)
    assert sorted(rows[0].tolist()) == list(range(5)) and rows[0, 0] == 0
    with pytest.raises(ConfigError, match="k must be at least 1"):
        search_vectors(_synthetic(tmp_path, x), x[:1], k=0)
    with pytest.raises(ConfigError, match="query vectors are 3 wide; the index holds 8-d"):
        search_vectors(_synthetic(tmp_path, x), np.zeros((1, 3)), k=1)


# ---- queries embedded as embed embeds them ---------------------------------------------------

@pytest.fixture(scope="module")
def bert(tiny_model_dir) -> Path:
    return tiny_model_dir("bert")


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _texts(60, seed=3)


OPTIONS = dict(pooler="mean", truncate_dim=20, normalize=True, prompt="find the answer ")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, bert, corpus) -> Path:
    """The corpus embedded with non-default options, to .npy (with ids), .parquet (ids, text) and int8."""
    folder = tmp_path_factory.mktemp("indexed")
    (folder / "in.jsonl").write_text("".join(json.dumps({"text": t, "id": f"doc{i}"}) + "\n"
                                             for i, t in enumerate(corpus)))
    model = Embedder(str(bert), device="cpu", **OPTIONS)
    spec = InputSpec(str(folder / "in.jsonl"), id_field="id")
    embed_file(JobOptions(spec, folder / "index.npy"), model)
    embed_file(JobOptions(spec, folder / "index.parquet", keep_text=True), model)
    embed_file(JobOptions(spec, folder / "int8.npy", quantize="int8"), model)
    embed_file(JobOptions(spec, folder / "ubinary.parquet", quantize="ubinary"), model)
    return folder


def _embed_queries(bert: Path, folder: Path, queries: list[str], **job) -> np.ndarray:
    (folder / "q.txt").write_text("".join(q + "\n" for q in queries))
    out = folder / f"q-{len(list(folder.iterdir()))}.npy"
    embed_file(JobOptions(InputSpec(str(folder / "q.txt")), out, **job), Embedder(str(bert), device="cpu", **OPTIONS))
    return np.load(out)


@pytest.mark.parametrize("name", ["index.npy", "index.parquet"])
def test_search_embeds_queries_as_embed_does_and_matches_brute_force(indexed, bert, corpus, tmp_path, name):
    queries = ["the cat and the dog", "a red car", "green tree"]
    result = hfenc.search(indexed / name, queries, k=5, device="cpu")
    assert isinstance(result, hfenc.SearchResult)
    assert np.array_equal(result.vectors, _embed_queries(bert, tmp_path, queries))  # bit for bit
    assert (result.prompt_name, result.prompt) == (None, "find the answer ")  # no "query" prompt: the index's
    assert result.stored == "float32" and result.dim == 20 and result.rows == 60
    rows = np.load(indexed / "index.npy")
    for i, hits in enumerate(result.results):
        want, _ = _reference_topk(rows.astype(np.float64) @ result.vectors[i].astype(np.float64), 5)
        assert [h.row for h in hits.hits] == want.tolist()
        assert [h.rank for h in hits.hits] == [1, 2, 3, 4, 5]
        assert [h.id for h in hits.hits] == [f"doc{r}" for r in want]
        if name.endswith(".parquet"):
            assert [h.text for h in hits.hits] == [corpus[r] for r in want]
        else:
            assert all(h.text is None for h in hits.hits)


def test_quantized_queries_equal_embed_with_the_index_ranges(indexed, bert, tmp_path):
    queries = ["the cat and the dog", "a red car"]
    result = hfenc.search(indexed / "int8.npy", queries, k=3, device="cpu")
    side = json.loads((indexed / "int8.npy.json").read_text())
    ranges = np.asarray(side["quantization"]["ranges"], np.float32)
    codes = _embed_queries(bert, tmp_path, queries, quantize="int8", ranges=indexed / "int8.npy.json")
    assert np.array_equal(quantize_embeddings(result.vectors, "int8", ranges=ranges), codes)
    binary = hfenc.search(indexed / "ubinary.parquet", queries, k=3, device="cpu")
    assert np.array_equal(quantize_embeddings(binary.vectors, "ubinary"),
                          _embed_queries(bert, tmp_path, queries, quantize="ubinary"))
    assert all(h.hamming is not None for r in binary.results for h in r.hits)


def test_texts_file_and_ids_file_name_the_hits(indexed, corpus):
    result = hfenc.search(indexed / "index.npy", "a red car", k=4, texts=indexed / "in.jsonl", device="cpu")
    assert [h.text for h in result.results[0].hits] == [corpus[h.row] for h in result.results[0].hits]
    assert [h.id for h in result.results[0].hits] == [f"doc{h.row}" for h in result.results[0].hits]
    (indexed / "short.jsonl").write_text(json.dumps({"text": "x", "id": "1"}) + "\n")
    with pytest.raises(InputError, match="short.jsonl has 1 records; the index has 60 rows"):
        hfenc.search(indexed / "index.npy", "a red car", texts=indexed / "short.jsonl", device="cpu")


def test_texts_of_another_file_with_as_many_records_are_refused(indexed, corpus):
    # same count, other words: the hits would show texts that were never embedded
    (indexed / "other.jsonl").write_text("".join(json.dumps({"text": t.upper(), "id": f"doc{i}"}) + "\n"
                                                 for i, t in enumerate(corpus)))
    with pytest.raises(InputError, match="other.jsonl is not the input the index was embedded from"):
        hfenc.search(indexed / "index.npy", "a red car", texts=indexed / "other.jsonl", device="cpu")


def test_texts_are_read_with_the_recorded_settings(tmp_path, bert):
    # an index made with --encoding-errors replace shows its own input's texts (it was refused)
    (tmp_path / "in.txt").write_bytes(b"caf\xe9 au lait\nplain tea\n")
    model = Embedder(str(bert), device="cpu")
    embed_file(JobOptions(InputSpec(str(tmp_path / "in.txt"), encoding_errors="replace"), tmp_path / "i.npy"), model)
    result = hfenc.search(tmp_path / "i.npy", "tea", k=2, texts=tmp_path / "in.txt", embedder=model)
    assert sorted(h.text for h in result.results[0].hits) == ["caf\ufffd au lait", "plain tea"]


def test_the_models_query_prompt_is_used_for_queries(tmp_path, corpus):
    builder = st_layouts.FolderBuilder(tmp_path / "layouts")
    e5 = builder.get("e5")  # prompts: query: "query: ", passage: "passage: "
    (tmp_path / "in.txt").write_text("".join(t + "\n" for t in corpus[:20]))
    embed_file(JobOptions(InputSpec(str(tmp_path / "in.txt")), tmp_path / "docs.npy"),
               Embedder(str(e5), device="cpu", prompt_name="passage"))
    assert json.loads((tmp_path / "docs.npy.json").read_text())["prompt_name"] == "passage"
    result = hfenc.search(tmp_path / "docs.npy", ["the cat"], k=3, device="cpu")
    assert (result.prompt_name, result.prompt) == ("query", "query: ")
    (tmp_path / "q.txt").write_text("the cat\n")
    embed_file(JobOptions(InputSpec(str(tmp_path / "q.txt")), tmp_path / "q.npy"),
               Embedder(str(e5), device="cpu", prompt_name="query"))
    assert np.array_equal(result.vectors, np.load(tmp_path / "q.npy"))
    literal = hfenc.search(tmp_path / "docs.npy", ["the cat"], k=3, device="cpu", prompt="")
    assert (literal.prompt_name, literal.prompt) == (None, None)


def test_an_index_whose_model_changed_is_refused(tmp_path, bert, corpus):
    model = tmp_path / "model"
    shutil.copytree(bert, model)
    (tmp_path / "in.txt").write_text("".join(t + "\n" for t in corpus[:10]))
    embed_file(JobOptions(InputSpec(str(tmp_path / "in.txt")), tmp_path / "docs.npy"), Embedder(str(model), device="cpu"))
    tiny_models.save_tiny_model("bert", tmp_path / "other", seed=1)
    shutil.copy(tmp_path / "other" / "model.safetensors", model / "model.safetensors")
    with pytest.raises(ConfigError, match="no longer embeds as the index was embedded.*weights_sha256"):
        hfenc.search(tmp_path / "docs.npy", "the cat", device="cpu")


# ---- the command --------------------------------------------------------------------------------

def _search(*args: object, input: str | None = None):
    return runner.invoke(app, ["search", *map(str, args), "--device", "cpu"], input=input)


def test_cli_table_on_stdout_and_a_summary_on_stderr(indexed, corpus):
    result = _search(indexed / "index.parquet", "a red car", "-k", "3")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "a red car"
    assert [c.strip() for c in lines[2].strip("┃").split("┃")] == ["rank", "score", "row", "id", "text"]
    hits = hfenc.search(indexed / "index.parquet", "a red car", k=3, device="cpu").results[0].hits
    for hit, line in zip(hits, [ln for ln in lines if ln.startswith("│")]):
        cells = [c.strip() for c in line.strip("│").split("│")]
        clipped = hit.text if len(hit.text) <= 60 else hit.text[:59] + "…"  # the table shows 60 characters
        assert cells == [str(hit.rank), f"{hit.score:.4f}", str(hit.row), hit.id, clipped]
    assert "60 rows of float32, cosine; query prompt: 'find the answer '" in result.stderr


def test_cli_json_queries_file_and_stdin(indexed, tmp_path):
    (tmp_path / "queries.txt").write_text("the cat\n\na red car\n")
    result = _search(indexed / "int8.npy", "green tree", "--queries", tmp_path / "queries.txt", "--json", "-k", "2")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [r["query"] for r in data["results"]] == ["green tree", "the cat", "a red car"]
    assert data["stored"] == "int8" and all(len(r["hits"]) == 2 for r in data["results"])
    assert set(data["results"][0]["hits"][0]) == {"rank", "row", "score", "id", "text"}
    piped = _search(indexed / "ubinary.parquet", "--queries", "-", "--json", input="the cat\n")
    assert piped.exit_code == 0, piped.stderr
    hit = json.loads(piped.stdout)["results"][0]["hits"][0]
    assert hit["rank"] == 1 and "hamming" in hit and hit["id"] == f"doc{hit['row']}"


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing.npy", "index missing.npy does not exist"),
    (lambda d: (d / "in.txt").write_text("x\n") and d / "in.txt", "an index is a .npy or .parquet output"),
    (lambda d: np.save(d / "bare.npy", np.zeros((3, 4), np.float32)) or d / "bare.npy", "has no hfenc sidecar"),
    (lambda d: (d / "fake.npy").write_bytes(b"not numpy") and d / "fake.npy", "cannot read fake.npy as a .npy file"),
    (lambda d: (d / "fake.parquet").write_bytes(b"PAR1") and d / "fake.parquet", "cannot read fake.parquet as a Parquet file"),
])
def test_cli_bad_indexes_are_one_line(tmp_path, monkeypatch, make, needle):
    monkeypatch.chdir(tmp_path)
    path = make(Path("."))
    result = _search(path, "a query")
    assert result.exit_code == 1 and result.stdout == "", (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_queries_that_are_not_utf8_are_one_line(indexed, tmp_path):
    # an argument of bytes that are not UTF-8 reaches Python as a lone surrogate (surrogateescape)
    argument = _search(indexed / "index.npy", "ok", "caf\udce9")
    piped = _search(indexed / "index.npy", "--queries", "-", input=b"ok\ncaf\xe9\n")
    (tmp_path / "q.txt").write_bytes(b"one\ntwo\n\xff\n")
    filed = _search(indexed / "index.npy", "--queries", tmp_path / "q.txt")
    for result, needle in ((argument, "query 2 is not valid UTF-8 text"),
                           (piped, "cannot read queries from standard input: line 2 is not valid UTF-8"),
                           (filed, "line 3 is not valid UTF-8")):
        assert result.exit_code == 1 and result.stdout == "", result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and needle in errors[0], result.stderr
        assert "Traceback" not in result.stderr


def test_cli_needs_a_query(indexed):
    result = _search(indexed / "index.npy")
    assert result.exit_code == 2 and "give a QUERY" in result.stderr
