"""Hybrid scores of two-stage retrieval: BM25 and cosine combined after min-max normalisation."""

from __future__ import annotations

import numpy as np


def check_bm25_weight(bm25_weight: float, rerank_depth: int | None = 1, depth_name: str = "rerank_bm25") -> None:
    """Validate a hybrid weight before any work starts: in [0, 1], and non-zero only in two-stage mode (a
    ``depth_name`` of at least 1)."""
    if not 0.0 <= bm25_weight <= 1.0:
        raise ValueError(f"bm25_weight must be in [0, 1], got {bm25_weight}")
    if bm25_weight and not rerank_depth:
        raise ValueError(f"bm25_weight needs {depth_name} (it weights BM25 in the two-stage score)")


def fuse_scores(bm25_scores: np.ndarray, dense_scores: np.ndarray, bm25_weight: float = 0.0) -> np.ndarray:
    """Scores of one query's BM25 candidates in two-stage retrieval.

    ``bm25_weight = 0`` (the default) is pure re-scoring: the model's cosines are returned unchanged. Otherwise the
    result is the convex combination of the two min-max normalised score lists over the candidates,
    ``w * mm(bm25) + (1 - w) * mm(cosine)`` (``w = 1`` keeps BM25's order). Reference: Bruch, Gai and Ingber,
    "An Analysis of Fusion Functions for Hybrid Retrieval", ACM TOIS 2023 (https://arxiv.org/abs/2210.11934).
    """
    check_bm25_weight(bm25_weight)
    dense_scores = np.asarray(dense_scores, dtype=np.float32)
    if bm25_weight == 0.0:
        return dense_scores
    bm25_scores = np.asarray(bm25_scores, dtype=np.float32)
    if bm25_scores.shape != dense_scores.shape:
        raise ValueError(f"fuse_scores: {bm25_scores.shape} BM25 scores but {dense_scores.shape} dense scores")

    def min_max(x: np.ndarray) -> np.ndarray:
        low, high = float(x.min()), float(x.max())
        return (x - low) / (high - low) if high > low else np.ones_like(x)

    return bm25_weight * min_max(bm25_scores) + (1.0 - bm25_weight) * min_max(dense_scores)
