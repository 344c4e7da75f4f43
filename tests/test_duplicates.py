"""Duplicate mining (chunked range search) against sentence-transformers' paraphrase mining, and clustering."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _planted(n: int = 400, dim: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim))
    for i in range(0, 60, 3):  # near-duplicate triples
        emb[i + 1] = emb[i] + 0.05 * rng.normal(size=dim)
        emb[i + 2] = emb[i] + 0.2 * rng.normal(size=dim)
    return _unit(emb)


def test_mine_duplicates_matches_sentence_transformers_paraphrase_mining():
    import torch
    from sentence_transformers.util import paraphrase_mining_embeddings

    from gte_st.duplicates import mine_duplicates

    emb = _planted()
    threshold = 0.8
    reference = {
        (min(i, j), max(i, j)): score
        for score, i, j in paraphrase_mining_embeddings(torch.from_numpy(emb), top_k=400, max_pairs=10**6)
        if score >= threshold
    }
    pairs = mine_duplicates(emb, threshold, chunk_size=64)  # several chunks
    assert {(i, j) for i, j, _ in pairs} == set(reference)
    assert len(pairs) >= 20
    for i, j, score in pairs:
        assert i < j and score == pytest.approx(reference[(i, j)], abs=1e-5)
    assert [p[2] for p in pairs] == sorted((p[2] for p in pairs), reverse=True)
    assert mine_duplicates(emb, threshold, chunk_size=1000) == pairs


def test_duplicate_groups_are_connected_components():
    from gte_st.duplicates import duplicate_groups

    assert duplicate_groups(7, [(0, 1, 0.9), (1, 4, 0.95), (5, 6, 0.91)]) == [[0, 1, 4], [5, 6]]
    assert duplicate_groups(3, []) == []


def test_cluster_recovers_planted_topics_and_nearest_members():
    from sklearn.metrics import adjusted_rand_score

    from gte_st.clusters import cluster

    rng = np.random.default_rng(1)
    centres = _unit(rng.normal(size=(4, 16)))
    truth = np.repeat(np.arange(4), 30)
    emb = _unit(centres[truth] + 0.15 * rng.normal(size=(120, 16)))
    result = cluster(emb, 4, n_nearest=3)
    assert adjusted_rand_score(truth, result.labels) == 1.0
    assert sorted(result.sizes) == [30, 30, 30, 30]
    for c, nearest in enumerate(result.nearest):
        members = np.flatnonzero(result.labels == c)
        best = members[np.argmax(emb[members] @ result.centroids[c])]
        assert nearest[0][0] == best and len(nearest) == 3
    with pytest.raises(ValueError, match="k must be between 1 and the number of texts"):
        cluster(emb, 500)


def _subjects(shared_data: Path, groups: list[str], per_group: int) -> list[dict]:
    rows: dict[str, list[dict]] = {g: [] for g in groups}
    with open(shared_data / "twentynewsgroups" / "subjects.tsv", encoding="utf8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            subject = row["subject"].removeprefix("Re: ").strip()
            if row["label"] in rows and len(rows[row["label"]]) < per_group and subject:
                if subject not in {r["text"] for r in rows[row["label"]]}:
                    rows[row["label"]].append({"id": row["doc_id"], "text": subject, "label": row["label"]})
    return [r for g in groups for r in rows[g]]


def test_cluster_cli_groups_newsgroup_subjects_by_topic(minilm_dir, shared_data, tmp_path, capsys):
    from sklearn.metrics import v_measure_score

    from gte_st.cli import main

    groups = ["rec.sport.hockey", "sci.space", "comp.graphics", "talk.politics.guns"]
    rows = _subjects(shared_data, groups, 30)
    corpus = tmp_path / "subjects.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "clusters.jsonl"
    code = main(["cluster", str(corpus), "--k", "4", "--model", str(minilm_dir), "--out", str(out), "--no-progress"])
    assert code == 0
    clusters = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(c["size"] for c in clusters) == len(rows) and all(len(c["nearest"]) == 5 for c in clusters)
    label = {r["id"]: groups.index(r["label"]) for r in rows}
    predicted = {doc_id: c["cluster"] for c in clusters for doc_id in c["members"]}
    ids = list(label)
    # measured 0.5+ with MiniLM; random assignment gives ~0.02
    assert v_measure_score([label[i] for i in ids], [predicted[i] for i in ids]) > 0.35
    assert "## cluster" in capsys.readouterr().out


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile"])
def test_dedup_cli_finds_exact_and_near_duplicates(tiny_bert_dir, tmp_path, capsys, compiled):
    import gte_st
    from gte_st.cli import main

    model = tmp_path / "tiny-gte"
    gte_st.build_model(str(tiny_bert_dir)).save(str(model))
    lines = ["a man is playing a guitar", "the stock market fell", "a man is playing a guitar", "dogs run in the park"]
    (tmp_path / "texts.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "pairs.jsonl"
    code = main(
        ["dedup", str(tmp_path / "texts.txt"), "--threshold", "0.9999", "--model", str(model), "--out", str(out)]
        + ["--compile"] * compiled
    )
    assert code == 0
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(p["id1"], p["id2"]) for p in pairs] == [("1", "3")]
    assert pairs[0]["text1"] == pairs[0]["text2"] == lines[0] and pairs[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert "1 duplicate groups; keeping one text per group drops 1 texts" in capsys.readouterr().err

    (tmp_path / "empty.txt").write_text("\n\n")
    assert main(["dedup", str(tmp_path / "empty.txt"), "--model", str(model)]) == 1
    assert "empty corpus" in capsys.readouterr().err
