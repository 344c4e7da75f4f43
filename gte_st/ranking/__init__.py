"""Ranking primitives shared by search and evaluation: BM25 (lexical first stage) and score fusion (hybrid
BM25 + dense re-ranking). Nothing here loads a model."""

from __future__ import annotations

from gte_st.ranking.bm25 import BM25Retriever
from gte_st.ranking.fusion import check_bm25_weight, fuse_scores

__all__ = ["BM25Retriever", "check_bm25_weight", "fuse_scores"]
