"""Retrieval on a BEIR folder: exact inner-product search through FAISS, BEIR metrics, cached corpus embeddings."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from gte_st.encoding import encode, output_dimension, resolve_precision
from gte_st.evaluation.embedding import ModelOrLoader, resolve_model
from gte_st.evaluation.readers import BEIRData, read_beir
from gte_st.evaluation.result import EvalResult
from gte_st.files import atomic_save_npy
from gte_st.fingerprint import corpus_fingerprint, model_fingerprint
from gte_st.ranking.fusion import check_bm25_weight, fuse_scores
from gte_st.vocabulary import warn_unknown_tokens

logger = logging.getLogger(__name__)


# The retrieval metrics gte-st reports: EvalResult key -> (sentence-transformers' metric family, k). The one list:
# gte-st eval and the evaluation during training both report exactly these.
RETRIEVAL_METRICS: dict[str, tuple[str, int]] = {
    "ndcg_at_10": ("ndcg", 10),
    "mrr_at_10": ("mrr", 10),
    "recall_at_10": ("recall", 10),
    "recall_at_100": ("recall", 100),
    "map": ("map", 100),
    "accuracy_at_1": ("accuracy", 1),
}
# sentence-transformers' InformationRetrievalEvaluator settings that compute RETRIEVAL_METRICS (and nothing it lacks).
IR_EVALUATOR_SETTINGS: dict[str, list[int]] = {
    "mrr_at_k": sorted({k for family, k in RETRIEVAL_METRICS.values() if family == "mrr"}),
    "ndcg_at_k": sorted({k for family, k in RETRIEVAL_METRICS.values() if family == "ndcg"}),
    "accuracy_at_k": sorted({k for family, k in RETRIEVAL_METRICS.values() if family == "accuracy"}),
    "precision_recall_at_k": sorted({k for family, k in RETRIEVAL_METRICS.values() if family == "recall"}),
    "map_at_k": sorted({k for family, k in RETRIEVAL_METRICS.values() if family == "map"}),
}


def retrieval_metrics(scores: dict[str, Any]) -> dict[str, float]:
    """:data:`RETRIEVAL_METRICS` from either of sentence-transformers' forms: ``compute_metrics``'s nested
    ``{"ndcg@k": {10: v}}`` or an evaluator call's flat ``{"ndcg@10": v}`` (its prefix already removed)."""
    out = {}
    for key, (family, k) in RETRIEVAL_METRICS.items():
        nested = scores.get(f"{family}@k")
        out[key] = float(nested[k] if isinstance(nested, dict) else scores[f"{family}@{k}"])
    return out


def encode_corpus_cached(
    model: SentenceTransformer,
    ids: list[str],
    texts: list[str],
    *,
    cache_dir: str | Path | None,
    batch_size: int = 64,
    precision: str = "fp32",
    compile: bool = False,
    name: str = "corpus",
) -> tuple[np.ndarray, bool]:
    """Corpus embeddings, read from ``cache_dir`` when the same model (by weights) already encoded the same corpus
    (by ids and texts) at the same precision and dimension (``model.truncate_dim``); otherwise encoded (``compile``: by a compiled copy, whose embeddings
    match the eager ones, so both share the cache) and written there. Returns (embeddings, hit)."""
    prompt_name = "document" if model.prompts.get("document") else None
    resolved = resolve_precision(precision, model)

    def embed() -> np.ndarray:
        return encode(
            model, texts, batch_size=batch_size, precision=resolved, prompt_name=prompt_name, compile=compile
        )

    if cache_dir is None:
        return embed(), False
    key = f"{name}-{model_fingerprint(model)[:20]}-{corpus_fingerprint(ids, texts)[:20]}-{resolved}"
    if getattr(model, "truncate_dim", None) is not None:  # Matryoshka truncation: other embeddings, another key
        key += f"-dim{output_dimension(model)}"
    cache_file = Path(cache_dir) / f"{key}.npy"
    if cache_file.exists():
        embeddings = np.load(cache_file)
        if embeddings.shape[0] == len(ids):
            logger.info(f"corpus embeddings read from cache {cache_file}")
            return embeddings, True
    embeddings = embed()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(cache_file, embeddings)
    return embeddings, False


def limit_queries(data: BEIRData, max_queries: int | None) -> None:
    """Keep only the first ``max_queries`` queries that have relevant documents (in place)."""
    if max_queries is not None:
        kept = [qid for qid in data.queries if data.qrels.get(qid)][:max_queries]
        data.queries = {qid: data.queries[qid] for qid in kept}
        data.qrels = {qid: data.qrels[qid] for qid in kept}


def limit_corpus(data: BEIRData, max_corpus: int | None) -> list[str]:
    """Corpus ids to search: all, or every relevant document plus the first others up to ``max_corpus``."""
    ids = list(data.corpus)
    if max_corpus is None or max_corpus >= len(ids):
        return ids
    relevant = {doc for docs in data.qrels.values() for doc in docs if doc in data.corpus}
    others = [doc for doc in ids if doc not in relevant][: max(0, max_corpus - len(relevant))]
    keep = relevant | set(others)
    return [doc for doc in ids if doc in keep]


def evaluate_retrieval(
    model: ModelOrLoader,
    beir_dir: str | Path,
    *,
    split: str | None = "test",
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    max_corpus: int | None = None,
    max_queries: int | None = None,
    precision: str = "fp32",
    compile: bool = False,
    retriever: Literal["dense", "bm25"] = "dense",
    bm25_rerank: int | None = None,
    bm25_weight: float = 0.0,
    top_k: int = 100,
    dataset: str | None = None,
) -> EvalResult:
    """nDCG@10 (main score), MRR@10, Recall@10/100, MAP@100 and Accuracy@1 on a BEIR folder.

    Search is exact: inner product of the L2-normalised embeddings (= cosine) in a FAISS ``IndexFlatIP``; the metric
    code is sentence-transformers' ``InformationRetrievalEvaluator.compute_metrics`` applied to the FAISS top-k.

    Args:
        model: Any SentenceTransformer; its ``"query"`` / ``"document"`` prompts are used when set.
        beir_dir: Folder with ``corpus.jsonl[.gz]``, ``queries.jsonl`` and ``qrels/<split>.tsv``.
        split: The qrels split (None: ``"test"``).
        batch_size: Encoding batch size.
        cache_dir: Where corpus embeddings are cached, keyed by model weights and corpus hash; ``None`` disables it.
        max_corpus: Search only the relevant documents plus the first other ones up to this many (quick checks).
        max_queries: Evaluate only the first N queries (quick checks; with ``max_corpus`` only their relevant
            documents are kept).
        precision: ``"fp32"`` (default: reproduces published numbers), ``"bf16"`` or ``"auto"``.
        compile: Encode with a ``torch.compile``'d copy of the model (:func:`gte_st.encoding.encode`; torch models
            only): about a minute to compile once, then faster on CPU.
        retriever: ``"dense"`` (the model) or ``"bm25"`` (``gte_st.search.BM25Retriever`` alone: a baseline).
        bm25_rerank: Re-score BM25's top ``bm25_rerank`` documents per query with the model (only they are encoded).
            The metrics are those of the re-ranked lists; BM25's own (the first stage, including its recall at
            ``bm25_rerank``, the ceiling of the second stage) are in ``details["first_stage"]``.
        bm25_weight: With ``bm25_rerank``: score the candidates with the hybrid ``w * BM25 + (1 - w) * cosine``
            (:func:`gte_st.search.fuse_scores`); ``0`` is pure re-scoring by the model.
        top_k: Hits kept per query (the deepest metric is @100).
        dataset: Name reported in the result (default: the folder's name).
    """
    if retriever not in ("dense", "bm25"):
        raise ValueError(f"retriever must be 'dense' or 'bm25', got {retriever!r}")
    check_bm25_weight(bm25_weight, bm25_rerank, "bm25_rerank")
    split = split or "test"
    start = time.perf_counter()
    data = read_beir(beir_dir, split)
    limit_queries(data, max_queries)
    corpus_ids = limit_corpus(data, max_corpus)
    evaluator = InformationRetrievalEvaluator(
        queries=data.queries,
        corpus={doc: data.corpus[doc] for doc in corpus_ids},
        relevant_docs=data.qrels,
        write_csv=False,
        **IR_EVALUATOR_SETTINGS,
    )
    query_texts = [data.queries[qid] for qid in evaluator.queries_ids]
    loading = time.perf_counter()
    model = resolve_model(model)  # after the data is read and checked
    start += time.perf_counter() - loading  # runtime_s counts reading and evaluating, not a model load
    warn_unknown_tokens(
        model, {"queries": query_texts, "corpus": [data.corpus[doc] for doc in corpus_ids]}, str(beir_dir)
    )
    k = min(top_k, len(corpus_ids))
    details: dict = {"queries": len(query_texts), "corpus": len(corpus_ids), "retriever": retriever}
    encoding = {"batch_size": batch_size, "precision": precision, "compile": compile}
    if retriever == "bm25":
        results = [_as_results(hits) for hits in _bm25_hits(data, corpus_ids, query_texts, k)]
    elif bm25_rerank:
        hits = _bm25_hits(data, corpus_ids, query_texts, bm25_rerank)
        results, encoded = _rerank_bm25(model, data, query_texts, hits, bm25_weight, **encoding)
        first_stage = _first_stage_metrics(evaluator, hits, data.qrels, evaluator.queries_ids, bm25_rerank)
        details.update(
            {"bm25_rerank": bm25_rerank, "bm25_weight": bm25_weight, "encoded_documents": encoded,
             "first_stage": first_stage}
        )  # fmt: skip
    else:
        name = dataset or Path(beir_dir).name
        results, details["cache_hit"] = _dense_search(
            model, data, corpus_ids, query_texts, k, cache_dir, name, encoding
        )
    details.update(
        {"encode_precision": precision, "encode_compile": compile, "runtime_s": round(time.perf_counter() - start, 2)}
    )
    return EvalResult(
        task_type="Retrieval",
        dataset=dataset or Path(beir_dir).name,
        split=split,
        metrics=retrieval_metrics(evaluator.compute_metrics(results)),
        main_score="ndcg_at_10",
        details=details,
    )


def _as_results(hits: list[tuple[str, float]]) -> list[dict]:
    """Hits as sentence-transformers' ``compute_metrics`` reads them."""
    return [{"corpus_id": doc, "score": float(score)} for doc, score in hits]


def _bm25_hits(data: BEIRData, corpus_ids: list[str], queries: list[str], k: int) -> list[list[tuple[str, float]]]:
    """BM25's top ``k`` (document id, score) per query over the (limited) corpus."""
    from gte_st.ranking.bm25 import BM25Retriever

    return BM25Retriever(corpus_ids, [data.corpus[doc] for doc in corpus_ids]).search(queries, k)


def _query_embeddings(model: SentenceTransformer, queries: list[str], **encoding: Any) -> np.ndarray:
    return encode(model, queries, prompt_name="query" if model.prompts.get("query") else None, **encoding)


def _document_embeddings(model: SentenceTransformer, texts: list[str], **encoding: Any) -> np.ndarray:
    return encode(model, texts, prompt_name="document" if model.prompts.get("document") else None, **encoding)


def _rerank_bm25(
    model: SentenceTransformer,
    data: BEIRData,
    queries: list[str],
    hits: list[list[tuple[str, float]]],
    bm25_weight: float,
    **encoding: Any,
) -> tuple[list[list[dict]], int]:
    """BM25's candidates re-scored by the model (hybrid with ``bm25_weight``); only the candidates are encoded.
    Returns the results and the number of documents encoded."""
    q_emb = _query_embeddings(model, queries, **encoding)
    candidates = sorted({doc for row in hits for doc, _ in row})
    position = {doc: i for i, doc in enumerate(candidates)}
    d_emb = _document_embeddings(model, [data.corpus[doc] for doc in candidates], **encoding)
    results = []
    for qi, row in enumerate(hits):
        docs = [doc for doc, _ in row]
        dense = d_emb[[position[doc] for doc in docs]] @ q_emb[qi] if docs else np.zeros(0)
        scores = fuse_scores(np.array([score for _, score in row]), dense, bm25_weight)
        results.append(_as_results(list(zip(docs, scores))))
    return results, len(candidates)


def _dense_search(
    model: SentenceTransformer,
    data: BEIRData,
    corpus_ids: list[str],
    queries: list[str],
    k: int,
    cache_dir: str | Path | None,
    name: str,
    encoding: dict[str, Any],
) -> tuple[list[list[dict]], bool]:
    """Exact top ``k`` by cosine (FAISS inner product on unit vectors); the corpus embeddings come from the cache when
    it holds them. Returns the results and whether the cache was hit."""
    import faiss

    q_emb = _query_embeddings(model, queries, **encoding)
    d_emb, cache_hit = encode_corpus_cached(
        model, corpus_ids, [data.corpus[doc] for doc in corpus_ids], cache_dir=cache_dir, name=name, **encoding
    )
    index = faiss.IndexFlatIP(d_emb.shape[1])
    index.add(np.ascontiguousarray(d_emb, dtype=np.float32))
    scores, indices = index.search(np.ascontiguousarray(q_emb, dtype=np.float32), k)
    results = [
        [{"corpus_id": corpus_ids[j], "score": float(s)} for s, j in zip(row_s, row_i) if j >= 0]
        for row_s, row_i in zip(scores, indices)
    ]
    return results, cache_hit


def _first_stage_metrics(
    evaluator: InformationRetrievalEvaluator,
    hits: list[list[tuple[str, float]]],
    qrels: dict[str, set[str]],
    query_ids: list[str],
    depth: int,
) -> dict[str, float | str]:
    """nDCG@10 / Recall@10 / Recall@100 of the BM25 candidate lists, and their recall at ``depth``."""
    scores = evaluator.compute_metrics(
        [[{"corpus_id": doc, "score": float(score)} for doc, score in row] for row in hits]
    )
    recall_at_depth = np.mean(
        [len(qrels[qid] & {doc for doc, _ in row[:depth]}) / len(qrels[qid]) for qid, row in zip(query_ids, hits)]
    )
    return {
        "retriever": "bm25",
        "ndcg_at_10": float(scores["ndcg@k"][10]),
        "recall_at_10": float(scores["recall@k"][10]),
        "recall_at_100": float(scores["recall@k"][100]),
        f"recall_at_{depth}": float(recall_at_depth),
    }
