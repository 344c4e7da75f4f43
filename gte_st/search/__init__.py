"""Semantic search over a corpus: a resumable, checksummed embeddings + FAISS index directory, BM25 and
BM25 -> GTE two-stage re-ranking (with an optional hybrid score).

Python API::

    from gte_st.search import build_index, Index, retrieve

    build_index("corpus.jsonl", "my-gte", "my-index")
    index = Index.load("my-index")
    hits = index.search("what causes diabetes?", k=10)                 # [Hit(id, score, text, rank), ...]
    hits = index.search("what causes diabetes?", k=10, rerank_bm25=100)  # BM25 top-100 re-scored by the model
    hits = retrieve("my-index", "what causes diabetes?", k=5)          # cached index, for LLM pipelines
"""

from __future__ import annotations

from gte_st.corpus import CorpusError, read_corpus
from gte_st.ranking.bm25 import BM25Retriever
from gte_st.ranking.fusion import check_bm25_weight, fuse_scores
from gte_st.search.build import build_index
from gte_st.search.index import (
    CorruptIndexError,
    Hit,
    IncompleteIndexError,
    Index,
    ModelMismatchError,
    SearchIndexError,
    retrieve,
)
from gte_st.search.teacher import hybrid_teacher_rows

__all__ = [
    "BM25Retriever",
    "CorpusError",
    "CorruptIndexError",
    "Hit",
    "IncompleteIndexError",
    "Index",
    "ModelMismatchError",
    "SearchIndexError",
    "build_index",
    "check_bm25_weight",
    "fuse_scores",
    "hybrid_teacher_rows",
    "read_corpus",
    "retrieve",
]
