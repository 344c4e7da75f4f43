"""Lexical BM25 retrieval (bm25s): the first stage of BM25 -> GTE two-stage search and a baseline."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class BM25Retriever:
    """Lexical BM25 (Lucene variant, k1=1.5, b=0.75) over ``texts``, built on ``bm25s``; English stop words and,
    when PyStemmer is installed, Snowball stemming."""

    def __init__(self, ids: list[str], texts: list[str], *, k1: float = 1.5, b: float = 0.75, stem: bool = True):
        try:
            import bm25s
        except ImportError:
            raise ImportError("BM25 needs bm25s: pip install 'gte-st[bm25]'") from None
        if len(ids) != len(texts):
            raise ValueError(f"BM25Retriever: {len(ids)} ids but {len(texts)} texts")
        if not ids:
            raise ValueError("BM25Retriever: empty corpus")
        self.ids = list(ids)
        self.stemmer = None
        if stem:
            try:
                import Stemmer

                self.stemmer = Stemmer.Stemmer("english")
            except ImportError:
                logger.info("PyStemmer not installed: BM25 without stemming")
        self._bm25s = bm25s
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, show_progress=False)
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index(tokens, show_progress=False)

    def search(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        """The top ``k`` (id, score) per query, best first; documents sharing no term with the query are left out."""
        if isinstance(queries, str):
            raise TypeError("BM25Retriever.search expects a list of queries")
        k = min(k, len(self.ids))
        tokens = self._bm25s.tokenize(
            list(queries), stopwords="en", stemmer=self.stemmer, show_progress=False, return_ids=False
        )
        results = []
        for query_tokens in tokens:
            if not query_tokens:
                results.append([])
                continue
            docs, scores = self.retriever.retrieve([query_tokens], k=k, show_progress=False)
            results.append([(self.ids[int(doc)], float(score)) for doc, score in zip(docs[0], scores[0]) if score > 0])
        return results
