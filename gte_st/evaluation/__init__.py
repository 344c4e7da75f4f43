"""Evaluate embedding models on local files: STS, retrieval, pair classification, classification, clustering and
reranking, each returning an :class:`EvalResult`.

sentence-transformers' own evaluators compute the metrics where they fit (STS, pair classification, reranking,
retrieval metrics); scikit-learn and FAISS do the rest. Embeddings go through :func:`gte_st.encoding.encode`.
"""

from __future__ import annotations

from gte_st.evaluation.classification import evaluate_classification
from gte_st.evaluation.clustering import evaluate_clustering
from gte_st.evaluation.pair_classification import evaluate_pair_classification
from gte_st.evaluation.reranking import evaluate_reranking
from gte_st.evaluation.result import TASK_TYPES, EvalResult
from gte_st.evaluation.retrieval import evaluate_retrieval
from gte_st.evaluation.sts import evaluate_sts

__all__ = [
    "EvalResult",
    "TASK_TYPES",
    "evaluate_classification",
    "evaluate_clustering",
    "evaluate_pair_classification",
    "evaluate_reranking",
    "evaluate_retrieval",
    "evaluate_sts",
]
