"""gte_st.evaluation: readers on the shared data layouts, each task type on small slices, metric values checked
against sentence-transformers' own evaluators on the same slices, the corpus-embedding cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sentence_transformers.sentence_transformer.evaluation import (
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
    RerankingEvaluator,
)
from sklearn.metrics import average_precision_score

import gte_st
from gte_st.evaluation import (
    EvalResult,
    evaluate_classification,
    evaluate_clustering,
    evaluate_pair_classification,
    evaluate_reranking,
    evaluate_retrieval,
    evaluate_sts,
)
from gte_st.evaluation.readers import read_beir, read_labelled_texts, read_pairs, read_reranking, read_sts

# ----------------------------------------------------------------------------------------------------- readers


def test_sts_readers_on_every_layout(shared_data, tmp_path):
    stsb = read_sts(shared_data / "stsb" / "sts-test.csv")
    assert (len(stsb.scores), stsb.split) == (1379, "test")
    assert read_sts(shared_data / "stsb", split="dev").scores == read_sts(shared_data / "stsb" / "sts-dev.csv").scores
    packaged = read_sts(shared_data / "stsb" / "stsbenchmark.tsv.gz", split="test")
    assert packaged.sentences1 == stsb.sentences1 and packaged.scores == stsb.scores
    sick = read_sts(shared_data / "sick", split="test")
    assert len(sick.scores) == 4927 and 1.0 <= min(sick.scores) and max(sick.scores) <= 5.0
    assert not any("\r" in s for s in sick.sentences2)
    assert len(read_sts(shared_data / "zh_pairs" / "stsb_zh" / "STS-B.test.data").scores) == 1361
    # the Chinese pair sets as STS (C-MTEB scores LCQMC / BQ / ATEC by Spearman, their 0/1 labels as gold scores)
    bq = read_sts(shared_data / "zh_pairs" / "bq" / "test.csv")  # comma-separated, BOM, sentence1,sentence2,label
    assert (len(bq.scores), sum(bq.scores), bq.split) == (10000, 5000.0, "test")
    atec = read_sts(shared_data / "zh_pairs" / "atec" / "atec_nlp_sim_train.csv")  # tab-separated id,s1,s2,label
    assert (len(atec.scores), sum(atec.scores), atec.split) == (39346, 8549.0, "train")
    assert not atec.sentences1[0].startswith("\ufeff") and atec.sentences1[0] == "怎么更改花呗手机号码"

    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"sentence1": "a", "sentence2": "b", "score": 0.5}\n{"sentence1": "c", "sentence2": "d"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: missing key 'score'"):
        read_sts(jsonl)
    other_header = tmp_path / "pairs.csv"
    other_header.write_text("text_a,text_b,label\nx,y,1\n")
    with pytest.raises(ValueError, match=r"pairs.csv:2: missing 'sentence1' \(need sentence1, sentence2, score"):
        read_sts(other_header)
    bad = tmp_path / "bad.tsv"
    bad.write_text("only\ttwo\n")
    with pytest.raises(ValueError, match=r"bad.tsv:1: unrecognised STS row"):
        read_sts(bad)


def test_pair_text_reranking_and_beir_readers(shared_data):
    mrpc = read_pairs(shared_data / "mrpc" / "msr_paraphrase_train.txt")
    assert (len(mrpc.labels), sum(mrpc.labels)) == (4076, 2753)
    assert not mrpc.sentences1[0].startswith("\ufeff")
    lcqmc = read_pairs(shared_data / "zh_pairs" / "lcqmc" / "test.txt")
    assert (len(lcqmc.labels), sum(lcqmc.labels)) == (12500, 6250)
    bq = read_pairs(shared_data / "zh_pairs" / "bq" / "test.csv")
    assert (len(bq.labels), sum(bq.labels)) == (10000, 5000) and bq.sentences1[0] == "为什么我无法看到额度"
    atec = read_pairs(shared_data / "zh_pairs" / "atec" / "atec_nlp_sim_train.csv")
    assert (len(atec.labels), sum(atec.labels)) == (39346, 8549)

    banking = read_labelled_texts(shared_data / "banking77" / "train.csv")
    assert len(banking.texts) == 10003 and len(set(banking.labels)) == 77 and banking.splits is None
    news = read_labelled_texts(shared_data / "twentynewsgroups" / "subjects.tsv", split="train")
    assert len(news.texts) == 11314 and len(set(news.labels)) == 20

    wikiqa = read_reranking(shared_data / "wikiqa" / "WikiQA-test.txt")
    assert len(wikiqa) == 243 and all(sample["positive"] for sample in wikiqa)
    assert sum(len(s["positive"]) for s in wikiqa) == 293

    scifact = read_beir(shared_data / "beir_scifact", "test")
    assert (len(scifact.corpus), len(scifact.queries), sum(map(len, scifact.qrels.values()))) == (5183, 300, 339)
    with pytest.raises(FileNotFoundError, match="qrels/dev.tsv"):
        read_beir(shared_data / "beir_scifact", "dev")


def test_eval_result_round_trip_and_validation():
    result = EvalResult("STS", "stsb", "test", {"spearman": 0.82, "pearson": 0.83}, "spearman", {"pairs": 3})
    again = EvalResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result and again.score == 0.82
    assert EvalResult("Bitext", "x", "test", {"f1": 0.5}, "f1").task_type == "Bitext"  # a registered task's own
    with pytest.raises(ValueError, match="task_type"):
        EvalResult("", "x", "test", {"f1": 0.5}, "f1")
    with pytest.raises(ValueError, match="main_score 'ndcg_at_10'"):
        EvalResult("Retrieval", "x", "test", {"map": 0.5}, "ndcg_at_10")


# ------------------------------------------------------------------------------------------------------- tasks


def test_sts_matches_sentence_transformers_evaluator_with_minilm(minilm, shared_data):
    data = read_sts(shared_data / "stsb" / "sts-test.csv")
    n = 100
    ours = evaluate_sts(minilm, shared_data / "stsb" / "sts-test.csv", max_samples=n)
    stock = EmbeddingSimilarityEvaluator(data.sentences1[:n], data.sentences2[:n], data.scores[:n], write_csv=False)
    expected = stock(minilm)
    assert (
        ours.task_type == "STS" and ours.dataset == "stsb" and ours.split == "test" and ours.main_score == "spearman"
    )
    assert ours.metrics["spearman"] == pytest.approx(expected["spearman_cosine"], abs=1e-4)
    assert ours.metrics["pearson"] == pytest.approx(expected["pearson_cosine"], abs=1e-4)
    assert ours.metrics["spearman"] > 0.7  # a real model, not noise


def test_retrieval_matches_sentence_transformers_and_caches_the_corpus(
    tiny_model, tiny_bert_dir, shared_data, tmp_path
):
    beir = shared_data / "beir_scifact"
    kwargs = {"max_queries": 25, "max_corpus": 150, "cache_dir": tmp_path / "cache", "batch_size": 32}
    first = evaluate_retrieval(tiny_model, beir, **kwargs)
    assert first.task_type == "Retrieval" and first.main_score == "ndcg_at_10"
    assert first.details["corpus"] == 150 and first.details["queries"] == 25 and first.details["cache_hit"] is False
    assert set(first.metrics) >= {"ndcg_at_10", "mrr_at_10", "recall_at_10", "recall_at_100", "map"}
    assert all(0.0 <= v <= 1.0 for v in first.metrics.values())
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1

    # The same numbers from sentence-transformers' own evaluator (its own encode and torch top-k search).
    data = read_beir(beir, "test")
    qids = list(data.queries)[:25]
    relevant = {q: data.qrels[q] for q in qids}
    needed = {d for docs in relevant.values() for d in docs}
    others = [d for d in data.corpus if d not in needed][: 150 - len(needed)]
    corpus = {d: data.corpus[d] for d in data.corpus if d in needed or d in set(others)}
    stock = InformationRetrievalEvaluator(
        {q: data.queries[q] for q in qids}, corpus, relevant, precision_recall_at_k=[10, 100], map_at_k=[100],
        write_csv=False,
    )(tiny_model)  # fmt: skip
    assert first.metrics["ndcg_at_10"] == pytest.approx(stock["cosine_ndcg@10"], abs=1e-4)
    assert first.metrics["mrr_at_10"] == pytest.approx(stock["cosine_mrr@10"], abs=1e-4)
    assert first.metrics["recall_at_100"] == pytest.approx(stock["cosine_recall@100"], abs=1e-4)
    assert first.metrics["map"] == pytest.approx(stock["cosine_map@100"], abs=1e-4)

    second = evaluate_retrieval(tiny_model, beir, **kwargs)
    assert second.details["cache_hit"] is True and second.metrics == first.metrics
    other = gte_st.build_model(str(gte_st_tiny_copy(tiny_bert_dir, tmp_path)), max_seq_length=64)
    third = evaluate_retrieval(other, beir, **kwargs)  # other weights: a cache miss, a second file
    assert third.details["cache_hit"] is False and len(list((tmp_path / "cache").glob("*.npy"))) == 2


def gte_st_tiny_copy(tiny_bert_dir, tmp_path):
    from conftest import build_tiny_bert

    return build_tiny_bert(tmp_path / "tiny-seed1", seed=1)


def test_retrieval_bm25_and_bm25_rerank(tiny_model, shared_data):
    pytest.importorskip("bm25s")
    beir = shared_data / "beir_scifact"
    bm25 = evaluate_retrieval(None, beir, retriever="bm25", max_queries=40, max_corpus=400)
    assert bm25.details["retriever"] == "bm25"
    assert bm25.metrics["ndcg_at_10"] > 0.5  # lexical matching is strong on SciFact
    rerank = evaluate_retrieval(tiny_model, beir, bm25_rerank=10, max_queries=40, max_corpus=400)
    assert rerank.details["bm25_rerank"] == 10 and rerank.details["encoded_documents"] <= 400
    # Re-scoring only re-orders BM25's top 10: recall@10 is unchanged.
    assert rerank.metrics["recall_at_10"] == pytest.approx(bm25.metrics["recall_at_10"])
    # Both stages are reported: the first stage is exactly the BM25-only run, cut at the re-ranking depth.
    first = rerank.details["first_stage"]
    assert first["retriever"] == "bm25"
    assert first["ndcg_at_10"] == pytest.approx(bm25.metrics["ndcg_at_10"])
    assert first["recall_at_10"] == pytest.approx(bm25.metrics["recall_at_10"])
    assert first["recall_at_10"] == pytest.approx(rerank.metrics["recall_at_10"])
    # the hybrid score with weight 1 keeps BM25's order, so it scores exactly as BM25
    kept = evaluate_retrieval(tiny_model, beir, bm25_rerank=10, bm25_weight=1.0, max_queries=40, max_corpus=400)
    assert kept.metrics["ndcg_at_10"] == pytest.approx(bm25.metrics["ndcg_at_10"])
    assert kept.details["bm25_weight"] == 1.0
    with pytest.raises(ValueError, match="bm25_weight needs bm25_rerank"):
        evaluate_retrieval(tiny_model, beir, bm25_weight=0.5, max_queries=5, max_corpus=50)


def test_pair_classification_average_precision_is_that_of_the_cosines(tiny_model, shared_data):
    path = shared_data / "mrpc" / "msr_paraphrase_train.txt"
    result = evaluate_pair_classification(tiny_model, path, max_samples=120)
    assert result.task_type == "PairClassification" and result.main_score == "ap" and result.split == "train"
    data = read_pairs(path)
    a = tiny_model.encode(data.sentences1[:120], normalize_embeddings=True)
    b = tiny_model.encode(data.sentences2[:120], normalize_embeddings=True)
    assert result.metrics["ap"] == pytest.approx(average_precision_score(data.labels[:120], (a * b).sum(1)), abs=1e-4)
    assert 0.0 < result.metrics["f1"] <= 1.0 and -1.0 <= result.details["f1_threshold"] <= 1.0


def test_reranking_matches_sentence_transformers_evaluator(tiny_model, shared_data):
    path = shared_data / "wikiqa" / "WikiQA-test.txt"
    result = evaluate_reranking(tiny_model, path, max_samples=30)
    samples = [s for s in read_reranking(path) if s["positive"] and s["negative"]][:30]
    stock = RerankingEvaluator(samples, write_csv=False)(tiny_model)
    assert result.main_score == "map" and result.details["queries"] == 30
    assert result.metrics["map"] == pytest.approx(stock["map"], abs=1e-4)
    assert result.metrics["mrr_at_10"] == pytest.approx(stock["mrr@10"], abs=1e-4)


def test_classification_cross_validation_and_train_file(tiny_model, shared_data, tmp_path):
    path = shared_data / "banking77" / "train.csv"
    cv = evaluate_classification(tiny_model, path, max_samples=308, n_folds=2)
    assert cv.task_type == "Classification" and cv.split == "cv2" and cv.details["labels"] == 77
    assert cv.metrics["accuracy"] > 3 / 77  # well above chance even for a tiny random encoder

    data = read_labelled_texts(path)
    by_word = {
        word: [t.replace('"', "") for t in data.texts if word in t.lower() and other not in t.lower()][:70]
        for word, other in (("card", "transfer"), ("transfer", "card"))
    }
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    for file, part in ((train, slice(0, 40)), (test, slice(40, 70))):
        rows = [f'"{t}",{word}\n' for word, texts in by_word.items() for t in texts[part]]
        file.write_text("text,label\n" + "".join(rows))
    held_out = evaluate_classification(tiny_model, test, train_path=train)
    assert held_out.split == "test" and held_out.details["protocol"] == "fit on train.csv"
    assert held_out.details["texts"] == 60
    assert held_out.metrics["accuracy"] > 0.6  # two topics with distinct keywords


def test_clustering_separates_distinct_newsgroups(minilm, shared_data, tmp_path):
    data = read_labelled_texts(shared_data / "twentynewsgroups" / "subjects.tsv")
    groups = ("rec.sport.hockey", "sci.space", "comp.graphics", "talk.religion.misc")
    picked = {g: [t for t, lab in zip(data.texts, data.labels) if lab == g][:30] for g in groups}
    file = tmp_path / "four.jsonl"
    file.write_text("".join(json.dumps({"text": t, "label": g}) + "\n" for g, ts in picked.items() for t in ts))
    result = evaluate_clustering(minilm, file)
    assert result.task_type == "Clustering" and result.details["clusters"] == 4 and result.details["texts"] == 120
    assert result.metrics["v_measure"] > 0.3
    assert not math.isnan(result.details["adjusted_rand_index"])
    again = evaluate_clustering(minilm, file)
    assert again.metrics == result.metrics  # seeded


@pytest.mark.slow
def test_anchor_stsb_test_spearman_with_minilm(minilm, shared_data):
    """The published all-MiniLM-L6-v2 STS-B test Spearman, 82.03 (SciFact's anchor is in scripts/bench_anchors.py:
    the full-corpus encode takes minutes)."""
    result = evaluate_sts(minilm, shared_data / "stsb" / "sts-test.csv")
    assert result.details["pairs"] == 1379
    assert 100 * result.metrics["spearman"] == pytest.approx(82.03, abs=0.1)


def test_bf16_scores_stay_close_to_fp32(minilm, shared_data):
    path = shared_data / "sick" / "SICK_trial.txt"
    fp32 = evaluate_sts(minilm, path, max_samples=100)
    bf16 = evaluate_sts(minilm, path, max_samples=100, precision="bf16")
    assert fp32.split == "dev" and bf16.details["encode_precision"] == "bf16"
    assert abs(fp32.metrics["spearman"] - bf16.metrics["spearman"]) < 0.01
    assert np.isfinite(list(bf16.metrics.values())).all()
