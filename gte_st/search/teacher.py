"""Hybrid BM25 + dense teacher scores for distillation: training rows whose candidates carry the scores of the
two-stage hybrid retriever, on the model's cosine scale.

The hybrid score of :func:`gte_st.search.fuse_scores` (``w * mm(BM25) + (1 - w) * mm(cosine)`` over a query's BM25
candidates) ranks better than either retriever alone (docs/benchmarks.md, "Search"). :func:`hybrid_teacher_rows`
maps it back onto the cosine
range of each query's candidates, ``lo + (hi - lo) * fused`` (an increasing affine map, so the order is the
hybrid's), which makes it a target a dense student can match with an MSE on its own cosines: the
``score_distillation_weight`` term of :class:`gte_st.losses.NormalizedMSELoss`. Rows are written in FlagEmbedding's
distillation layout (``query``, ``pos``, ``neg``, ``pos_scores``, ``neg_scores``), which ``gte-st train`` reads.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np

from gte_st.ranking.bm25 import BM25Retriever
from gte_st.ranking.fusion import check_bm25_weight, fuse_scores


def hybrid_teacher_rows(
    queries: Sequence[str],
    positives: Sequence[Sequence[str]],
    doc_ids: Sequence[str],
    doc_texts: Sequence[str],
    query_embeddings: np.ndarray,
    doc_embeddings: np.ndarray,
    *,
    bm25: BM25Retriever | None = None,
    bm25_weight: float = 0.4,
    depth: int = 100,
    num_negatives: int = 3,
    negative_pool: int = 30,
    seed: int = 0,
) -> list[dict[str, object]]:
    """One distillation row per (query, positive): the positive and ``num_negatives`` negatives drawn from the top
    ``negative_pool`` of the query's hybrid ranking (known positives excluded), each with its hybrid score on the
    cosine scale.

    Args:
        queries: Query texts.
        positives: For each query, the ids of its relevant documents (one row per positive).
        doc_ids: Corpus ids, aligned with ``doc_texts`` and ``doc_embeddings``.
        doc_texts: Corpus texts (BM25 indexes them unless ``bm25`` is given).
        query_embeddings: L2-normalised query embeddings of the teacher model, ``(len(queries), dim)``.
        doc_embeddings: L2-normalised document embeddings of the same model, ``(len(doc_ids), dim)``.
        bm25: A BM25 index over ``doc_ids``/``doc_texts`` (built when None).
        bm25_weight: ``w`` of the hybrid score (choose it on train queries: ``scripts/bench_hybrid.py``).
        depth: BM25 candidates per query; a positive outside them gets BM25 score 0.
        num_negatives: Negatives per row; queries with fewer candidates than that are skipped.
        negative_pool: Negatives are drawn from this many top hybrid ranks.
        seed: Seed of the negative draw.

    Returns:
        Rows ``{"query", "pos": [text], "neg": [texts], "pos_scores": [s], "neg_scores": [s...]}``. A known
        positive's target is at least the best candidate's score, so the teacher never ranks a labelled positive
        below a negative.
    """
    check_bm25_weight(bm25_weight)
    if len(queries) != len(positives) or len(queries) != len(query_embeddings):
        raise ValueError(
            f"hybrid_teacher_rows: {len(queries)} queries, {len(positives)} positive lists, "
            f"{len(query_embeddings)} query embeddings"
        )
    if len(doc_ids) != len(doc_texts) or len(doc_ids) != len(doc_embeddings):
        raise ValueError(
            f"hybrid_teacher_rows: {len(doc_ids)} ids, {len(doc_texts)} texts, {len(doc_embeddings)} embeddings"
        )
    if num_negatives < 1 or negative_pool < num_negatives:
        raise ValueError(f"need 1 <= num_negatives <= negative_pool, got {num_negatives} and {negative_pool}")
    row_of: Mapping[str, int] = {doc: i for i, doc in enumerate(doc_ids)}
    bm25 = bm25 or BM25Retriever(list(doc_ids), list(doc_texts))
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for query, relevant, query_embedding, hits in zip(
        queries, positives, query_embeddings, bm25.search(list(queries), k=depth)
    ):
        known = [doc for doc in relevant if doc in row_of]
        retrieved = {doc for doc, _ in hits}
        candidates = [doc for doc, _ in hits] + [doc for doc in known if doc not in retrieved]
        lexical = np.array([score for _, score in hits] + [0.0] * (len(candidates) - len(hits)), dtype=np.float32)
        cosine = doc_embeddings[[row_of[doc] for doc in candidates]] @ query_embedding
        fused = fuse_scores(lexical, cosine, bm25_weight)
        low, high = float(cosine.min()), float(cosine.max())
        target = low + (high - low) * fused if bm25_weight > 0 else cosine
        scores = dict(zip(candidates, target.tolist()))
        ranked = sorted((doc for doc in candidates if doc not in known), key=scores.__getitem__, reverse=True)
        pool = ranked[:negative_pool]
        if len(pool) < num_negatives:
            continue
        best = max(scores.values())
        for positive in known:
            negatives = rng.sample(pool, num_negatives)
            rows.append(
                {
                    "query": query,
                    "pos": [doc_texts[row_of[positive]]],
                    "neg": [doc_texts[row_of[doc]] for doc in negatives],
                    "pos_scores": [max(scores[positive], best)],
                    "neg_scores": [scores[doc] for doc in negatives],
                }
            )
    return rows
