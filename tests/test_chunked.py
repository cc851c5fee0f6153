"""Chunked jobs end to end (issue 23): `hfenc embed --chunk-tokens N`.

On long documents made by joining hundreds of real texts, with the real all-MiniLM-L6-v2:
every chunk fits the model (counted by the model's own tokenizer, loaded by transformers, with
its special tokens), consecutive chunks overlap by about M tokens, the chunks cover each
document, `text[char_start:char_end]` is the chunk and nothing is truncated; chunk vectors equal
sentence-transformers embedding the chunk texts one by one; late chunking equals mean pooling of
the chunk's tokens in one forward pass computed with transformers; document vectors are the mean
of their chunks. Then search over chunked outputs, resume, quantization, and the refusals.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hfenc import Embedder
from hfenc.compute.chunking import ChunkOptions
from hfenc.errors import Interrupted, OutputError, ResumeError
from hfenc.io.inputs import InputSpec
from hfenc.jobs.local import JobOptions, embed_file
from hfenc.searching import search
from interrupts import stop_after
from refusals import refused_embed

pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def documents(real_sentences) -> list[dict]:
    """Pages of a few hundred real texts each, one of paragraphs, a short one and an empty one."""
    texts = real_sentences[:700]
    docs, at = [], 0
    for size in (240, 150, 90, 40, 12):
        docs.append(" ".join(texts[at:at + size]))
        at += size
    docs.append("\n\n".join(texts[at:at + 60]))
    docs.append("A short record.")
    docs.append("")
    return [{"id": f"doc-{i}", "text": t} for i, t in enumerate(docs)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, documents) -> Path:
    path = tmp_path_factory.mktemp("chunked")
    with open(path / "docs.jsonl", "w", encoding="utf-8") as fh:
        for d in documents:
            fh.write(json.dumps(d) + "\n")
    return path


@pytest.fixture(scope="module")
def minilm(minilm_dir) -> Embedder:
    return Embedder(str(minilm_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


def _job(folder: Path, out: str, chunking: ChunkOptions, **options) -> JobOptions:
    spec = InputSpec(str(folder / "docs.jsonl"), id_field="id")
    return JobOptions(spec, folder / out, chunking=chunking, force=True, **options)


def _provenance(out: Path) -> list[dict]:
    """Each row's provenance: a .npy output's OUT.chunks.tsv, a Parquet output's columns."""
    if out.suffix == ".parquet":
        return pq.read_table(out).drop(["embedding"]).to_pylist()
    lines = (out.with_name(out.stem + ".chunks.tsv")).read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, map(int, line.split("\t")))) for line in lines[1:]]


def _rows(out: Path) -> np.ndarray:
    if out.suffix == ".parquet":
        column = pq.read_table(out).column("embedding").combine_chunks()
        return column.flatten().to_numpy().reshape(len(column), -1)
    return np.load(out)


# Plain chunking in both output formats, by tokens and by sentences; late chunking.
RUNS = {
    "npy-128-16": ("a.npy", ChunkOptions(128, 16), {}),
    "parquet-64-8-sentences": ("b.parquet", ChunkOptions(64, 8, "sentences", doc_vectors=True), {"keep_text": True}),
    "parquet-96-0-late": ("c.parquet", ChunkOptions(96, 0, late=True, doc_vectors=True), {"keep_text": True}),
}


@pytest.fixture(scope="module")
def outputs(folder, minilm) -> dict[str, tuple[Path, ChunkOptions, dict]]:
    done = {}
    for name, (out, chunking, options) in RUNS.items():
        result = embed_file(_job(folder, out, chunking, **options), minilm)
        done[name] = (folder / out, chunking, result.metadata)
    return done


@pytest.mark.parametrize("run", list(RUNS))
def test_every_chunk_fits_overlaps_covers_and_maps_back(run, outputs, documents, hf_tokenizer):
    out, chunking, sidecar = outputs[run]
    rows = _provenance(out)
    assert sidecar["truncated_rows"] == 0 and sidecar["rows"] == len(rows) > len(documents)
    assert sidecar["documents"] == len(documents) and sidecar["chunking"]["tokens"] == chunking.tokens
    assert [r["row"] for r in rows] == list(range(len(rows)))
    for doc_row, doc in enumerate(documents):
        text = doc["text"]
        mine = [r for r in rows if r["doc_row"] == doc_row]
        assert [r["chunk"] for r in mine] == list(range(len(mine))) and mine
        if out.suffix == ".parquet":
            assert {r["doc_id"] for r in mine} == {doc["id"]}
        offsets = hf_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        words = [len(hf_tokenizer(w, add_special_tokens=False)["input_ids"]) for w in text.split()] or [0]
        covered = np.zeros(len(text), bool)
        for r in mine:
            piece = text[r["char_start"]:r["char_end"]]
            if out.suffix == ".parquet":
                assert r["text"] == piece  # text[char_start:char_end] is the chunk
            assert len(hf_tokenizer(piece)["input_ids"]) <= chunking.tokens  # [CLS] and [SEP] counted
            if offsets:  # the token span is the character span
                assert offsets[r["token_start"]][0] == r["char_start"]
                assert offsets[r["token_end"] - 1][1] == r["char_end"]
            covered[r["char_start"]:r["char_end"]] = True
        assert all(c.isspace() for c in np.array(list(text), dtype=object)[~covered]) if text else True
        for prev, nxt in zip(mine, mine[1:]):  # about M tokens shared, give or take one word
            shared = prev["token_end"] - nxt["token_start"]
            assert abs(shared - chunking.overlap) <= max(words), (shared, chunking.overlap)
            assert nxt["token_start"] > prev["token_start"]


def test_chunk_vectors_equal_sentence_transformers_on_the_chunk_texts(outputs, documents, minilm_dir):
    from sentence_transformers import SentenceTransformer

    out, _, _ = outputs["npy-128-16"]
    texts = [documents[r["doc_row"]]["text"][r["char_start"]:r["char_end"]] for r in _provenance(out)]
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    expected = st.encode(texts, batch_size=16, convert_to_numpy=True)
    np.testing.assert_allclose(_rows(out), expected, atol=1e-5, rtol=0)


def test_late_chunks_are_mean_pooled_spans_of_one_transformers_pass(outputs, documents, minilm_dir, hf_tokenizer):
    """Each chunk of a document that fits the model equals the mean of its tokens' hidden states
    in one forward pass of transformers' own BertModel over the document, normalized as the
    model's Normalize module does. So does each chunk of a long document's first window: its
    first 254 tokens (the model's 256 less [CLS] and [SEP]), less the piece of a word cut there
    (a window ends between words: before a token that does not continue a word, `##...`)."""
    from transformers import AutoModel

    out, _, _ = outputs["parquet-96-0-late"]
    model = AutoModel.from_pretrained(str(minilm_dir)).eval()
    rows, vectors = _provenance(out), _rows(out)
    checked = 0
    for doc_row, doc in enumerate(documents):
        text = doc["text"]
        bare = hf_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        pieces = hf_tokenizer.convert_ids_to_tokens(bare["input_ids"])
        window = len(pieces)
        if window > 254:  # the first window: up to the last start of a word at or before token 254
            window = max(i for i in range(1, 255) if not pieces[i].startswith("##"))
            text = text[:bare["offset_mapping"][window - 1][1]]
        enc = hf_tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state[0]
        ends = enc["offset_mapping"][0][:, 1].numpy()
        real = enc["special_tokens_mask"][0].numpy() == 0
        for r in rows:
            if r["doc_row"] != doc_row or r["token_end"] > window or not text:
                continue
            inside = real & (ends > r["char_start"]) & (ends <= r["char_end"])
            expected = torch.nn.functional.normalize(hidden[torch.from_numpy(inside)].mean(0), dim=0).numpy()
            np.testing.assert_allclose(vectors[r["row"]], expected, atol=1e-5, rtol=0)
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("run", ["parquet-64-8-sentences", "parquet-96-0-late"])
def test_document_vectors_are_the_normalized_mean_of_their_chunks(run, outputs, documents):
    out, _, sidecar = outputs[run]
    docs = pq.read_table(out.with_name(out.stem + ".docs.parquet"))
    assert sidecar["docs_file"] == out.stem + ".docs.parquet"
    assert docs.column("doc_id").to_pylist() == [d["id"] for d in documents]
    rows, vectors = _provenance(out), _rows(out)
    doc_rows = np.array([r["doc_row"] for r in rows])
    assert docs.column("chunks").to_pylist() == np.bincount(doc_rows).tolist()
    got = docs.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(documents), -1)
    for d in range(len(documents)):
        mean = vectors[doc_rows == d].mean(axis=0)
        np.testing.assert_allclose(got[d], mean / np.linalg.norm(mean), atol=1e-6, rtol=0)


# ---- search over a chunked output ------------------------------------------------------------

def test_search_names_record_chunk_span_and_text(outputs, documents, folder, minilm):
    out, _, _ = outputs["npy-128-16"]
    found = search(out, ["what does the assert statement do"], k=5, texts=folder / "docs.jsonl", embedder=minilm)
    rows = _provenance(out)
    for hit in found.results[0].hits:
        r = rows[hit.row]
        assert (hit.doc_row, hit.chunk, hit.char_start, hit.char_end) == \
            (r["doc_row"], r["chunk"], r["char_start"], r["char_end"])
        assert hit.id == documents[hit.doc_row]["id"]
        assert hit.text == documents[hit.doc_row]["text"][r["char_start"]:r["char_end"]]


@pytest.mark.parametrize("run", ["npy-128-16", "parquet-64-8-sentences"])
def test_per_doc_search_keeps_each_records_best_chunk_as_brute_force_does(run, outputs, minilm):
    out, _, _ = outputs[run]
    queries = ["how are exceptions raised", "string formatting", "the import system", "a short record"]
    found = search(out, queries, k=4, per_doc=True, embedder=minilm)
    vectors, rows = _rows(out), _provenance(out)
    doc_rows = np.array([r["doc_row"] for r in rows])
    for q, result in zip(minilm.encode(queries), found.results):
        scores = vectors @ q
        best = {}
        for row in np.lexsort((np.arange(len(scores)), -scores)):  # best first, ties by row
            best.setdefault(int(doc_rows[row]), int(row))
        expected = list(best.values())[:4]
        assert [h.row for h in result.hits] == expected
        assert len({h.doc_row for h in result.hits}) == len(result.hits)


# ---- resume, quantization, refusals (the tiny bert: fast) ------------------------------------

@pytest.fixture(scope="module")
def records(tmp_path_factory, real_sentences) -> Path:
    """40 records of a few real texts each: a chunk of work (40 rows) holds several."""
    path = tmp_path_factory.mktemp("records") / "docs.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(40):
            fh.write(json.dumps({"id": f"r{i}", "text": " ".join(real_sentences[800 + 4 * i:804 + 4 * i])}) + "\n")
    return path.parent


def _tiny_job(folder: Path, out: Path, chunking: ChunkOptions, **options) -> JobOptions:
    return JobOptions(InputSpec(str(folder / "docs.jsonl"), id_field="id"), out, chunking=chunking, **options)


def test_an_interrupted_chunked_run_resumes_bit_for_bit_and_refuses_other_settings(records, embedder, tmp_path):
    folder = records
    chunking = ChunkOptions(24, 4, doc_vectors=True)
    out = tmp_path / "out.npy"
    with pytest.raises(Interrupted):
        embed_file(_tiny_job(folder, out, chunking, chunk_size=40), embedder, progress=stop_after(60))
    assert not out.exists()
    with pytest.raises(ResumeError, match="chunking"):
        embed_file(_tiny_job(folder, out, ChunkOptions(24, 5, doc_vectors=True), chunk_size=40, resume=True), embedder)
    (tmp_path / ".out.docs.npy.partial").rename(tmp_path / "aside")
    with pytest.raises(ResumeError, match="partial document vectors"):  # never zeros for the saved records
        embed_file(_tiny_job(folder, out, chunking, chunk_size=40, resume=True), embedder)
    (tmp_path / "aside").rename(tmp_path / ".out.docs.npy.partial")
    result = embed_file(_tiny_job(folder, out, chunking, chunk_size=40, resume=True), embedder)
    assert result.resumed_from > 0
    fresh = tmp_path / "fresh.npy"
    embed_file(_tiny_job(folder, fresh, chunking, chunk_size=40), embedder)
    assert np.array_equal(np.load(out), np.load(fresh))
    assert np.array_equal(np.load(tmp_path / "out.docs.npy"), np.load(tmp_path / "fresh.docs.npy"))
    assert (tmp_path / "out.chunks.tsv").read_text() == (tmp_path / "fresh.chunks.tsv").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{s}.{x}" for s in ("out", "fresh") for x in ("npy", "npy.json", "ids.txt", "chunks.tsv", "docs.npy", "sha256.npy"))


def test_quantized_chunked_output_has_a_code_row_per_chunk(records, embedder, tmp_path):
    folder = records
    plain = embed_file(_tiny_job(folder, tmp_path / "f.npy", ChunkOptions(24)), embedder)
    codes = embed_file(_tiny_job(folder, tmp_path / "q.npy", ChunkOptions(24), quantize="ubinary"), embedder)
    assert codes.rows == plain.rows and codes.metadata["quantization"]["precision"] == "ubinary"
    bits = np.unpackbits(np.load(tmp_path / "q.npy").view(np.uint8), axis=1)[:, :plain.dim]
    assert np.array_equal(bits.astype(bool), np.load(tmp_path / "f.npy") > 0)


REFUSALS = [
    (["--chunk-tokens", "2"], "leaves no room for text"),
    (["--chunk-tokens", "8", "--chunk-overlap", "8"], "--chunk-overlap 8"),
    (["--chunk-tokens", "8", "--chunk-overlap", "6"], "--chunk-overlap 6 must be"),  # 6 of the 6 text tokens
    (["--chunk-overlap", "4"], "--chunk-overlap is for chunked jobs"),
    (["--late-chunking"], "--late-chunking is for chunked jobs"),
    (["--chunk-tokens", "16", "--late-chunking", "--pooler", "cls"], "pools by cls"),
    (["--chunk-tokens", "100000"], "is more than the model takes"),
    (["--chunk-tokens", "16", "--chunk-by", "words"], "unknown --chunk-by value 'words'"),
    (["--chunk-tokens", "0"], "must be a positive number"),
]


@pytest.mark.parametrize("args,message", REFUSALS)
def test_bad_chunk_settings_are_one_line_exit_1_and_nothing_written(args, message, bert, tmp_path):
    assert message in refused_embed(tmp_path, bert, *args)


def test_int8_ranges_of_a_chunked_job_are_calibrated_on_its_chunks(records, embedder, tmp_path):
    from hfenc.io.quantize import ranges_from

    result = embed_file(_tiny_job(records, tmp_path / "q.npy", ChunkOptions(24), quantize="int8"), embedder)
    how = result.metadata["quantization"]
    assert how["calibration"]["of_rows"] == result.rows  # every chunk: fewer than the sample's size
    rows = _provenance(tmp_path / "q.npy")
    texts = [json.loads(line)["text"] for line in (records / "docs.jsonl").read_text().splitlines()]
    chunks = [texts[r["doc_row"]][r["char_start"]:r["char_end"]] for r in rows]
    np.testing.assert_allclose(np.array(how["ranges"]), ranges_from(embedder.encode(chunks)), atol=1e-6)


def test_float16_rows_get_document_vectors_of_their_float32_rows(records, embedder, tmp_path):
    chunking = ChunkOptions(24, doc_vectors=True)
    embed_file(_tiny_job(records, tmp_path / "f32.npy", chunking), embedder)
    embed_file(_tiny_job(records, tmp_path / "f16.npy", chunking, out_dtype="float16"), embedder)
    assert np.load(tmp_path / "f16.npy").dtype == np.float16
    assert np.array_equal(np.load(tmp_path / "f16.npy"), np.load(tmp_path / "f32.npy").astype(np.float16))
    assert np.array_equal(np.load(tmp_path / "f16.docs.npy"), np.load(tmp_path / "f32.docs.npy"))


def test_per_doc_is_refused_where_it_cannot_be_exact(records, embedder, tmp_path):
    from hfenc.errors import ConfigError

    plain = JobOptions(InputSpec(str(records / "docs.jsonl")), tmp_path / "plain.npy")
    embed_file(plain, embedder)
    with pytest.raises(ConfigError, match="--per-doc is for a chunked index"):
        search(tmp_path / "plain.npy", ["a query"], per_doc=True, embedder=embedder)
    embed_file(_tiny_job(records, tmp_path / "bits.npy", ChunkOptions(24), quantize="ubinary"), embedder)
    with pytest.raises(ConfigError, match="--per-doc needs exact scores; this index is ubinary"):
        search(tmp_path / "bits.npy", ["a query"], per_doc=True, embedder=embedder)


def test_plan_blocks_end_between_documents_or_inside_one(tmp_path, monkeypatch):
    """The plan is read a block at a time; a block may end at a document's end or inside it:
    each document's chunks and counts come out whole either way."""
    import hfenc.jobs.chunked as chunked

    monkeypatch.setattr(chunked, "_BLOCK", 4)
    sizes = [1, 1, 1, 1, 2, 5, 1, 3, 4, 1, 1, 9, 1]  # documents of 1 to 9 chunks
    records = [(d, c, 0, 0, 0, 0) for d, n in enumerate(sizes) for c in range(n)]
    path = tmp_path / "plan"
    path.write_bytes(np.array(records, dtype=chunked.PLAN).tobytes())
    plan = chunked.ChunkPlan(path, len(records), len(sizes), None)
    assert np.concatenate(list(chunked.chunk_counts(plan))).tolist() == sizes
    for start in (0, 4, 6, 11, 20):  # a document's first chunk, resumed from
        docs = [block["doc_row"].tolist() for block in chunked._doc_chunks(plan.table(), start)]
        first = records[start][0]
        assert docs == [[d] * n for d, n in enumerate(sizes)][first:]


def test_a_run_stopped_while_publishing_resumes_with_its_document_vectors(records, embedder, tmp_path, monkeypatch):
    from hfenc.io.parquet import ParquetWriter

    merge = ParquetWriter._merge

    def stopped(self, *args):  # Ctrl-C while the Parquet file is being assembled: every row saved
        monkeypatch.setattr(ParquetWriter, "_merge", merge)
        raise KeyboardInterrupt

    monkeypatch.setattr(ParquetWriter, "_merge", stopped)
    job = _tiny_job(records, tmp_path / "out.parquet", ChunkOptions(24, doc_vectors=True))
    with pytest.raises(KeyboardInterrupt):
        embed_file(job, embedder)
    assert (tmp_path / ".out.docs.parquet.partial").is_file()
    result = embed_file(_tiny_job(records, tmp_path / "out.parquet", ChunkOptions(24, doc_vectors=True),
                                  resume=True), embedder)
    assert result.resumed_from == result.rows
    embed_file(_tiny_job(records, tmp_path / "fresh.parquet", ChunkOptions(24, doc_vectors=True)), embedder)
    assert pq.read_table(tmp_path / "out.docs.parquet").equals(pq.read_table(tmp_path / "fresh.docs.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{s}{x}" for s in ("out", "fresh") for x in (".parquet", ".parquet.json", ".docs.parquet"))


def test_a_partial_of_document_vectors_no_run_claims_is_left_alone(records, embedder, tmp_path):
    (tmp_path / ".out.docs.npy.partial").write_bytes(b"someone's")
    with pytest.raises(OutputError, match="no interrupted hfenc run claims it"):
        embed_file(_tiny_job(records, tmp_path / "out.npy", ChunkOptions(24, doc_vectors=True)), embedder)
    assert (tmp_path / ".out.docs.npy.partial").read_bytes() == b"someone's"
    embed_file(_tiny_job(records, tmp_path / "out.npy", ChunkOptions(24), force=True), embedder)  # --force: ours
    assert not (tmp_path / ".out.docs.npy.partial").exists()
