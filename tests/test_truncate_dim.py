"""Serving a Matryoshka model at a smaller dimension, and with its prompts: ``encode(truncate_dim=...)`` and
``--truncate-dim`` in eval, index, search, dedup and cluster; an index records its dimension and prompts and embeds
queries accordingly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import stsb_rows

from gte_st.cli import main
from gte_st.encoding import encode


@pytest.fixture(scope="module")
def prompted_dir(tiny_gte_dir, tmp_path_factory):
    """The tiny GTE model with query/document prompts in its config (as a prompt-trained model is saved)."""
    out = tmp_path_factory.mktemp("prompted") / "model"
    shutil.copytree(tiny_gte_dir, out)
    config = json.loads((out / "config_sentence_transformers.json").read_text())
    config["prompts"] = {"query": "query: ", "document": "passage: "}
    (out / "config_sentence_transformers.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    rows = stsb_rows("train")[:40]
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": b}) + "\n" for i, (_, _, b) in enumerate(rows)))
    return path


def test_encode_truncates_then_normalises(tiny_model):
    texts = [r[1] for r in stsb_rows("train")[:5]]
    full = encode(tiny_model, texts, precision="fp32")
    small = encode(tiny_model, texts, precision="fp32", truncate_dim=8)
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    assert small.shape == (5, 8)
    np.testing.assert_allclose(small, expected, atol=1e-5)
    tiny_model.truncate_dim = 16  # the model's own truncate_dim (sentence-transformers' attribute) is the default
    try:
        assert encode(tiny_model, texts, precision="fp32").shape == (5, 16)
        assert encode(tiny_model, [], precision="fp32").shape == (0, 16)
    finally:
        tiny_model.truncate_dim = None
    with pytest.raises(ValueError, match="larger than the model's 32-d"):
        encode(tiny_model, texts, truncate_dim=64)


def test_eval_at_a_truncated_dimension(tiny_gte_dir, tmp_path, capsys):
    rows = stsb_rows("train")[:30]
    sts = tmp_path / "sts.jsonl"
    sts.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for s, a, b in rows))
    scores = {}
    for dim in (None, 8):
        out = tmp_path / f"{dim}.json"
        extra = ["--truncate-dim", str(dim)] if dim else []
        assert (
            main(["eval", str(tiny_gte_dir), "--task", "sts", "--data", str(sts), "--output", str(out), *extra]) == 0
        )
        (result,) = json.loads(out.read_text())["results"]
        assert result["details"].get("truncate_dim") == dim
        scores[dim] = result["metrics"]["spearman"]
    assert scores[None] != pytest.approx(scores[8], abs=1e-6)  # another embedding, another score


def test_index_records_its_dimension_and_prompts(prompted_dir, corpus_file, tmp_path, capsys):
    from gte_st.search import Index

    out = tmp_path / "index"
    assert main(["index", str(corpus_file), "--model", str(prompted_dir), "--out", str(out), "--truncate-dim", "16",
                 "--no-progress"]) == 0  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"]["dimension"] == 16 and meta["model"]["truncate_dim"] == 16
    assert meta["model"]["prompts"] == {"query": "query: ", "document": "passage: "}
    index = Index.load(out)
    assert index.embeddings.shape[1] == 16
    texts = [json.loads(line)["text"] for line in corpus_file.read_text().splitlines()]
    # documents carry the document prompt, queries the query prompt, both at 16 dimensions
    expected = encode(index.model, texts[:3], truncate_dim=16, prompt="passage: ", precision=meta["encode_precision"])
    np.testing.assert_allclose(index.embeddings[:3], expected, atol=2e-2)
    query = encode(index.model, ["a man"], truncate_dim=16, prompt="query: ", precision=meta["encode_precision"])
    np.testing.assert_allclose(index.encode_queries(["a man"]), query, atol=1e-6)
    capsys.readouterr()
    assert main(["search", str(out), texts[5], "--json", "-k", "1"]) == 0
    hit = json.loads(capsys.readouterr().out.splitlines()[0])["hits"][0]
    scores = index.embeddings @ index.encode_queries([texts[5]])[0]  # the query side: prompt, 16 dimensions
    assert hit["id"] == f"d{int(np.argmax(scores))}" and hit["score"] == pytest.approx(float(scores.max()), abs=1e-3)
    assert main(["search", str(out), texts[5], "--truncate-dim", "16", "-k", "1"]) == 0


def test_dedup_and_cluster_take_truncate_dim(tiny_gte_dir, corpus_file, tmp_path):
    out = tmp_path / "pairs.jsonl"
    assert main(["dedup", str(corpus_file), "--model", str(tiny_gte_dir), "--truncate-dim", "8", "--threshold",
                 "0.99", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    clusters = tmp_path / "clusters.jsonl"
    assert main(["cluster", str(corpus_file), "--model", str(tiny_gte_dir), "--truncate-dim", "8", "--k", "3",
                 "--out", str(clusters), "--no-progress"]) == 0  # fmt: skip
    assert len(clusters.read_text().splitlines()) == 3
