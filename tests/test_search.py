"""Index directories, search, BM25 and two-stage re-ranking, bad input, corruption and resumable builds."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, build_tiny_bert


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Tiny models on small batches: one thread avoids OpenMP spinning on a busy 2-core machine (see conftest)."""


@pytest.fixture(scope="module")
def scifact_docs(shared_data: Path) -> list[dict]:
    docs = []
    with gzip.open(shared_data / "beir_scifact" / "corpus.jsonl.gz", "rt", encoding="utf8") as f:
        for line in f:
            docs.append(json.loads(line))
    return docs


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf8")
    return path


@pytest.fixture(scope="module")
def small_index(tiny_gte_dir: Path, scifact_docs: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gte_st.cli import main

    root = tmp_path_factory.mktemp("index")
    corpus = _write_jsonl(root / "corpus.jsonl", scifact_docs[:300])
    out = root / "idx"
    assert main(["index", str(corpus), "--model", str(tiny_gte_dir), "--out", str(out), "--no-progress"]) == 0
    return out


def test_index_cli_and_search_cli_return_ids_scores_texts(small_index, scifact_docs, capsys):
    from gte_st.cli import main

    meta = json.loads((small_index / "meta.json").read_text())
    assert meta["count"] == 300 and meta["model"]["dimension"] == 32 and meta["model"]["fingerprint"]
    assert set(meta["files"]) == {"docs.jsonl", "embeddings.npy", "index.faiss"}
    doc = scifact_docs[7]
    query = f"{doc['title']} {doc['text']}"
    capsys.readouterr()
    assert main(["search", str(small_index), query, "-k", "3", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    hits = json.loads(line)["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["id"] == doc["_id"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["text"] == query and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_python_api_retrieve_and_two_stage_rerank(small_index, scifact_docs):
    from gte_st.search import Index, retrieve

    index = Index.load(small_index)
    doc = scifact_docs[42]
    hits = retrieve(small_index, doc["title"], k=2)
    assert len(hits) == 2 and all(h.text for h in hits)

    query = doc["title"]
    candidates = index.bm25.search([query], 20)[0]
    assert candidates and candidates[0][1] >= candidates[-1][1]
    reranked = index.search(query, k=5, rerank_bm25=20)
    assert {h.id for h in reranked} <= {doc_id for doc_id, _ in candidates}
    query_embedding = index.encode_queries([query])[0]
    for hit in reranked:  # the second stage scores are the model's cosines
        row = index.ids.index(hit.id)
        assert hit.score == pytest.approx(float(index.embeddings[row] @ query_embedding), abs=1e-5)
    assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)
    bm25_only = index.search(query, k=3, bm25_only=True)
    assert [h.id for h in bm25_only] == [doc_id for doc_id, _ in candidates[:3]]

    # hybrid: weight 1 keeps BM25's order, weight 0.5 scores within [0, 1] from both min-max normalised lists
    assert [h.id for h in index.search(query, k=5, rerank_bm25=20, bm25_weight=1.0)] == [d for d, _ in candidates[:5]]
    hybrid = index.search(query, k=20, rerank_bm25=20, bm25_weight=0.5)
    assert {h.id for h in hybrid} == {doc_id for doc_id, _ in candidates}
    assert all(0.0 <= h.score <= 1.0 for h in hybrid) and hybrid[0].score >= hybrid[-1].score
    with pytest.raises(ValueError, match="bm25_weight needs rerank_bm25"):
        index.search(query, k=5, bm25_weight=0.3)
    with pytest.raises(ValueError, match=r"bm25_weight must be in \[0, 1\]"):
        index.search(query, k=5, rerank_bm25=20, bm25_weight=1.5)


def test_fuse_scores_is_a_convex_combination_of_min_max_normalised_scores():
    from gte_st.search import fuse_scores

    bm25 = np.array([12.0, 8.0, 4.0])
    cosine = np.array([0.2, 0.8, 0.5])
    np.testing.assert_array_equal(fuse_scores(bm25, cosine, 0.0), cosine.astype(np.float32))  # pure re-scoring
    np.testing.assert_allclose(fuse_scores(bm25, cosine, 1.0), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(
        fuse_scores(bm25, cosine, 0.25), 0.25 * np.array([1, 0.5, 0]) + 0.75 * np.array([0, 1, 0.5])
    )
    np.testing.assert_allclose(fuse_scores(np.array([3.0]), np.array([0.4]), 0.5), [1.0])  # one candidate: no range
    with pytest.raises(ValueError, match=r"\(3,\) BM25 scores but"):
        fuse_scores(np.ones(3), np.ones(2), 0.5)


def test_bm25_retriever_contract():
    from gte_st.search import BM25Retriever

    bm25 = BM25Retriever(["a", "b", "c"], ["the cat sat on the mat", "dogs chase cats", "stock markets fell sharply"])
    results = bm25.search(["markets falling", "purple elephant"], k=10)
    assert results[0][0][0] == "c" and isinstance(results[0][0][1], float)
    assert results[1] == []  # no shared term
    assert len(bm25.search(["cat"], k=10)[0]) == 2  # k larger than the corpus; stemming matches cats


@pytest.mark.parametrize(
    ("precision", "index_type"), [("float32", "hnsw"), ("float32", "ivf"), ("int8", "flat"), ("binary", "hnsw")]
)
def test_precisions_and_index_types_find_the_document_itself(
    request, tiny_gte_dir, scifact_docs, tmp_path, precision, index_type
):
    from gte_st.search import build_index

    # 32-bit binary codes of the random tiny model collide too much to rank anything: binary runs on MiniLM
    model = str(request.getfixturevalue("minilm_dir") if precision == "binary" else tiny_gte_dir)
    docs = scifact_docs[:60] if precision == "binary" else scifact_docs[:200]
    ids = [d["_id"] for d in docs]
    texts = [d["title"] for d in docs] if precision == "binary" else [d["text"] for d in docs]
    index = build_index(
        (ids, texts), model, tmp_path / "idx", precision=precision, index_type=index_type, show_progress_bar=False
    )
    assert index.meta["precision"] in ("float32", "uint8", "ubinary")
    results = index.search([texts[3], texts[50]], k=5)
    assert [r[0].id for r in results] == [ids[3], ids[50]]
    expected_dtype = {"float32": np.float32, "int8": np.uint8, "binary": np.uint8}[precision]
    assert index.embeddings.dtype == expected_dtype
    if precision == "binary":
        assert index.embeddings.shape == (60, 384 // 8)


def test_corpus_formats_and_bad_input(tmp_path, shared_data):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gte_st.search import CorpusError, read_corpus

    ids, texts = read_corpus(shared_data / "beir_scifact")  # BEIR folder, gzipped corpus, title prepended
    assert len(ids) == 5183 and len(set(ids)) == 5183
    (tmp_path / "c.csv").write_text('doc_id,body\nx1,"hello, world"\nx2,second\n')
    assert read_corpus(tmp_path / "c.csv") == (["x1", "x2"], ["hello, world", "second"])
    pq.write_table(pa.table({"id": [1, 2], "text": ["one", "two"]}), tmp_path / "c.parquet")
    assert read_corpus(tmp_path / "c.parquet") == (["1", "2"], ["one", "two"])

    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(CorpusError, match=r"empty.jsonl: empty corpus"):
        read_corpus(tmp_path / "empty.jsonl")
    _write_jsonl(
        tmp_path / "dup.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}]
    )
    with pytest.raises(CorpusError, match=r"dup.jsonl: duplicate id 'a' in rows 1 and 3"):
        read_corpus(tmp_path / "dup.jsonl")
    _write_jsonl(tmp_path / "missing.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "title": "no text"}])
    with pytest.raises(CorpusError, match=r"missing.jsonl: row 2: missing text field 'text'"):
        read_corpus(tmp_path / "missing.jsonl")
    with pytest.raises(CorpusError, match="no text field"):
        read_corpus(_write_jsonl(tmp_path / "nofield.jsonl", [{"id": "a", "body2": "x"}]))


def test_index_cli_reports_bad_corpus(tiny_gte_dir, tmp_path, capsys):
    from gte_st.cli import main

    _write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    code = main(["index", str(tmp_path / "dup.jsonl"), "--model", str(tiny_gte_dir), "--out", str(tmp_path / "i")])
    assert code == 1 and "duplicate id 'a' in rows 1 and 2" in capsys.readouterr().err
    assert not (tmp_path / "i").exists()


def test_query_model_mismatch_is_refused(small_index, tmp_path):
    import gte_st
    from gte_st.search import Index, ModelMismatchError

    other_same_dim = tmp_path / "other"
    gte_st.build_model(str(build_tiny_bert(tmp_path / "bert-seed1", seed=1))).save(str(other_same_dim))
    with pytest.raises(ModelMismatchError, match="embeds the probe texts differently"):
        Index.load(small_index, model=str(other_same_dim))
    wider = tmp_path / "wider"
    gte_st.build_model(str(build_tiny_bert(tmp_path / "bert-48", hidden_size=48))).save(str(wider))
    with pytest.raises(ModelMismatchError, match="gives 48-d embeddings"):
        Index.load(small_index, model=str(wider)).search("anything")


def test_corrupted_index_file_is_detected(small_index, tmp_path):
    import shutil

    from gte_st.search import CorruptIndexError, Index

    copy = tmp_path / "idx"
    shutil.copytree(small_index, copy)
    data = bytearray((copy / "embeddings.npy").read_bytes())
    data[-5] ^= 0xFF
    (copy / "embeddings.npy").write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match=r"embeddings.npy is corrupted"):
        Index.load(copy)
    other = tmp_path / "idx2"
    shutil.copytree(small_index, other)
    (other / "index.faiss").unlink()
    with pytest.raises(CorruptIndexError, match="index.faiss is missing"):
        Index.load(other)


def test_killed_build_never_loads_and_resumes_where_it_stopped(tiny_gte_dir, scifact_docs, tmp_path, caplog):
    from gte_st.search import IncompleteIndexError, Index, build_index

    docs = scifact_docs[:320]
    corpus = _write_jsonl(tmp_path / "corpus.jsonl", docs)
    out = tmp_path / "idx"
    shards = tmp_path / "idx.partial" / "shards"
    cmd = [sys.executable, "-m", "gte_st.cli", "index", str(corpus), "--model", str(tiny_gte_dir), "--out", str(out),
           "--shard-size", "4", "--batch-size", "4", "--no-progress"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if shards.is_dir() and len(list(shards.glob("*.npy"))) >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the build finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(shards.glob("*.npy")))
    assert 3 <= done_before < 80
    with pytest.raises(IncompleteIndexError, match="interrupted"):
        Index.load(out)

    with caplog.at_level("WARNING", logger="gte_st.search.build"):
        index = build_index(corpus, str(tiny_gte_dir), out, shard_size=4, batch_size=4, show_progress_bar=False)
    assert f"resuming, {done_before}/80 shards already encoded" in caplog.text
    assert len(index) == 320 and not (tmp_path / "idx.partial").exists()
    from sentence_transformers import SentenceTransformer

    fresh = SentenceTransformer(str(tiny_gte_dir), device="cpu").encode(
        [index.texts[0], index.texts[-1]], normalize_embeddings=True
    )
    # bf16 (encode precision "auto") on AMX CPUs, fp32 elsewhere: compare by cosine
    assert (index.embeddings[[0, -1]] * fresh).sum(1).min() > 0.999


def test_index_and_dedup_can_encode_with_the_exported_onnx_artifact(tiny_gte_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import shutil

    from gte_st.cli import main
    from gte_st.search import Index

    model = tmp_path / "model"
    shutil.copytree(tiny_gte_dir, model)
    assert main(["export", str(model), "--format", "onnx", "--no-optimize"]) == 0
    texts = ["a cat sat on the mat", "dogs run in the park", "the stock market fell", "rain is expected tomorrow"]
    corpus = _write_jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    for backend, out in (("torch", tmp_path / "torch-idx"), ("onnx", tmp_path / "onnx-idx")):
        argv = ["index", str(corpus), "--model", str(model), "--out", str(out), "--no-progress", "--backend", backend]
        assert main(argv) == 0
    on_torch, on_onnx = Index.load(tmp_path / "torch-idx"), Index.load(tmp_path / "onnx-idx")
    assert on_onnx.meta["model"]["name"] == str(model.resolve())  # queries load the model directory itself
    assert (on_torch.embeddings * on_onnx.embeddings).sum(1).min() > 0.999
    assert [h.id for h in on_onnx.search(texts[2], k=4)] == [h.id for h in on_torch.search(texts[2], k=4)]
    capsys.readouterr()
    assert main(["dedup", str(corpus), "--model", str(model), "--backend", "onnx", "--threshold", "-1",
                 "--no-progress"]) == 0  # fmt: skip
    assert "6 pairs with cosine >= -1.0 among 4 texts" in capsys.readouterr().err


def test_hybrid_teacher_rows_carry_the_hybrid_order_on_the_cosine_scale():
    from gte_st.search import BM25Retriever, fuse_scores
    from gte_st.search.teacher import hybrid_teacher_rows

    texts = [
        "insulin resistance causes type 2 diabetes",
        "diabetes and insulin in mice",
        "stock markets fell sharply",
        "insulin signalling in the liver",
        "type 2 diabetes risk factors",
        "the cat sat on the mat",
    ]
    ids = [f"d{i}" for i in range(len(texts))]
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(6, 8)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    query = docs[1] + 0.5 * docs[4]
    query /= np.linalg.norm(query)
    rows = hybrid_teacher_rows(
        ["insulin and type 2 diabetes"], [["d0"]], ids, texts, query[None], docs,
        bm25_weight=0.5, num_negatives=2, negative_pool=4, seed=0,
    )  # fmt: skip
    (row,) = rows
    assert row["query"] == "insulin and type 2 diabetes" and row["pos"] == [texts[0]]
    assert len(row["neg"]) == 2 and texts[0] not in row["neg"]
    # the oracle: fuse the same BM25 and cosine scores directly, then map onto the candidates' cosine range
    hits = BM25Retriever(ids, texts).search(["insulin and type 2 diabetes"], k=100)[0]
    cand = [doc for doc, _ in hits]
    cosine = docs[[ids.index(doc) for doc in cand]] @ query
    fused = fuse_scores(np.array([s for _, s in hits]), cosine, 0.5)
    expected = dict(zip(cand, cosine.min() + (cosine.max() - cosine.min()) * fused))
    for text, score in zip(row["neg"], row["neg_scores"]):
        assert score == pytest.approx(expected[ids[texts.index(text)]], abs=1e-6)
    assert row["pos_scores"][0] == pytest.approx(max(expected[ids[0]], max(expected.values())), abs=1e-6)
    assert cosine.min() - 1e-6 <= min(row["neg_scores"]) and max(row["neg_scores"]) <= cosine.max() + 1e-6
    with pytest.raises(ValueError, match="bm25_weight must be in"):
        hybrid_teacher_rows(["q"], [["d0"]], ids, texts, query[None], docs, bm25_weight=2.0)
    with pytest.raises(ValueError, match="1 queries, 2 positive lists"):
        hybrid_teacher_rows(["q"], [["d0"], ["d1"]], ids, texts, query[None], docs)
