"""A built index directory: loading and verifying it, checking the query model, dense / BM25 / two-stage search.

Index directory layout (``meta.json`` is written last and marks the index complete; the whole directory is built
under ``<DIR>.partial`` and renamed into place, so an interrupted build never leaves an index that loads)::

    DIR/meta.json        format, model (name, fingerprint, dimension, probe embeddings), counts, index settings and
                         the sha256 of every other file
    DIR/docs.jsonl       {"id", "text"} per document, in index order
    DIR/embeddings.npy   the corpus embeddings: float32, uint8 (scalar-quantised) or packed binary
    DIR/ranges.npy       per-dimension (min, max) of the uint8 quantisation (uint8 only)
    DIR/index.faiss      the FAISS index (flat inner product, HNSW or IVF; binary Hamming indexes for binary)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gte_st.encoding import encode
from gte_st.errors import GteStError
from gte_st.fingerprint import file_digest
from gte_st.ranking.bm25 import BM25Retriever
from gte_st.ranking.fusion import check_bm25_weight, fuse_scores

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

FORMAT = "gte-st-index"
FORMAT_VERSION = 1
PRECISIONS = {"float32": "float32", "uint8": "uint8", "int8": "uint8", "ubinary": "ubinary", "binary": "ubinary"}
INDEX_TYPES = ("flat", "hnsw", "ivf")
# Fixed texts whose embeddings are stored with the index: a query model that embeds them differently did not build it.
PROBE_TEXTS = [
    "A man is playing a guitar on stage.",
    "The central bank raised interest rates to fight inflation.",
    "Insulin regulates glucose uptake in muscle cells.",
    "How do I reset my password?",
]
PROBE_MIN_COSINE = 0.98


class SearchIndexError(GteStError):
    """Base class of the errors of index directories."""


class IncompleteIndexError(SearchIndexError, FileNotFoundError):
    """The directory holds no complete index (never built, or the build was interrupted)."""


class CorruptIndexError(SearchIndexError):
    """A file of the index does not match the checksum recorded in meta.json."""


class ModelMismatchError(SearchIndexError, ValueError):
    """The query model is not the model that built the index."""


@dataclass
class Hit:
    id: str
    score: float
    text: str
    rank: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_faiss(path: Path, precision: str):
    import faiss

    return faiss.read_index_binary(str(path)) if precision == "ubinary" else faiss.read_index(str(path))


def load_query_model(model: str | SentenceTransformer) -> tuple[SentenceTransformer, str]:
    """(model, name to record): a loaded model as is, or a model directory / Hub id loaded (directories are recorded
    as absolute paths, usable from any working directory)."""
    if not isinstance(model, str):
        config = getattr(getattr(model[0], "model", None), "config", None)
        return model, str(getattr(config, "_name_or_path", "") or "")
    from gte_st.loading import load

    name = str(Path(model).resolve()) if Path(model).is_dir() else model
    return load(model), name


# ---------------------------------------------------------------------------------------------------------- index
# What Index.load and the queries read from meta.json, with the JSON type each must have.
META_FIELDS = {"files": dict, "count": int, "precision": str, "model": dict}
MODEL_FIELDS = {"dimension": int, "probe_embeddings": list}


def _check_meta(meta: dict, meta_file: Path) -> None:
    """Every field the index reads is in ``meta.json`` with its type, else the file is named as corrupted (a
    hand-edited or truncated ``meta.json`` is not a ``KeyError`` later)."""
    for fields, record, prefix in ((META_FIELDS, meta, ""), (MODEL_FIELDS, meta.get("model"), "model.")):
        for key, kind in fields.items():
            if not isinstance(record, dict) or not isinstance(record.get(key), kind):
                raise CorruptIndexError(
                    f"{meta_file}: lacks {prefix}{key} (a JSON {kind.__name__}); rebuild the index"
                )
    if not all(isinstance(digest, str) for digest in meta["files"].values()):
        raise CorruptIndexError(f"{meta_file}: files must map file names to checksums; rebuild the index")


class Index:
    """A built index directory: documents, embeddings, FAISS index and the model that embeds queries."""

    def __init__(
        self, path: Path, meta: dict[str, Any], ids: list[str], texts: list[str], faiss_index, embeddings, ranges
    ):
        self.path = path
        self.meta = meta
        self.ids = ids
        self.texts = texts
        self.faiss_index = faiss_index
        self.embeddings = embeddings
        self.ranges = ranges
        self.precision: str = meta["precision"]
        self._row = {doc_id: row for row, doc_id in enumerate(ids)}
        self._model: SentenceTransformer | None = None
        self._bm25: BM25Retriever | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def load(cls, path: str | Path, model: str | SentenceTransformer | None = None, *, verify: bool = True) -> Index:
        """Load and (with ``verify``) checksum an index directory. ``model`` overrides the recorded model (it must be
        the same model: its dimension and its embeddings of the probe texts are checked on first use)."""
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            partial = path.with_name(path.name + ".partial")
            if partial.exists():
                raise IncompleteIndexError(
                    f"{path}: no complete index; the build at {partial} was interrupted. Run the same "
                    "`gte-st index` command again to resume it."
                )
            raise IncompleteIndexError(f"{path}: not an index directory (no meta.json); build it with `gte-st index`")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptIndexError(f"{meta_file} is not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise CorruptIndexError(f"{meta_file}: not a {FORMAT} v{FORMAT_VERSION} index")
        _check_meta(meta, meta_file)
        for name, checksum in meta["files"].items():
            file = path / name
            if not file.is_file():
                raise CorruptIndexError(f"{path}: {name} is missing")
            if verify and file_digest(file) != checksum:
                raise CorruptIndexError(
                    f"{file} is corrupted: its sha256 does not match the checksum in meta.json; rebuild the index"
                )
        try:
            ids, texts = [], []
            with open(path / "docs.jsonl", encoding="utf8") as f:
                for line in f:
                    record = json.loads(line)
                    ids.append(record["id"])
                    texts.append(record["text"])
            embeddings = np.load(path / "embeddings.npy")
            ranges = np.load(path / "ranges.npy") if (path / "ranges.npy").is_file() else None
            faiss_index = _read_faiss(path / "index.faiss", meta["precision"])
        except Exception as exc:  # unreadable despite matching checksums (e.g. verify=False)
            raise CorruptIndexError(f"{path}: cannot read the index files ({exc})") from exc
        if not (len(ids) == meta["count"] == embeddings.shape[0] == faiss_index.ntotal):
            raise CorruptIndexError(
                f"{path}: inconsistent sizes (meta {meta['count']}, docs {len(ids)}, embeddings "
                f"{embeddings.shape[0]}, faiss {faiss_index.ntotal})"
            )
        index = cls(path, meta, ids, texts, faiss_index, embeddings, ranges)
        if model is not None:
            index.set_model(model)
        return index

    # ---------------------------------------------------------------- model
    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            name = self.meta["model"].get("name")
            if not name:
                raise ModelMismatchError(f"{self.path}: the index records no model name; pass model=...")
            self.set_model(name)
        return self._model

    def set_model(self, model: str | SentenceTransformer) -> None:
        """Use ``model`` for queries after checking it is the model that built the index."""
        st_model, name = load_query_model(model)
        recorded = self.meta["model"]
        dim = st_model.get_embedding_dimension()
        if dim != recorded["dimension"]:
            raise ModelMismatchError(
                f"{self.path} was built by {recorded.get('name')!r} ({recorded['dimension']}-d embeddings); the query "
                f"model {name or type(st_model).__name__!r} gives {dim}-d embeddings"
            )
        probes = encode(st_model, PROBE_TEXTS, batch_size=16, precision=self.meta.get("encode_precision", "auto"))
        cosine = float((probes * np.asarray(recorded["probe_embeddings"], dtype=np.float32)).sum(axis=1).min())
        if cosine < PROBE_MIN_COSINE:
            raise ModelMismatchError(
                f"{self.path} was built by {recorded.get('name')!r}; the query model {name!r} embeds the probe texts "
                f"differently (cosine {cosine:.3f} < {PROBE_MIN_COSINE}): it is another model. Query with the model "
                "that built the index, or rebuild the index."
            )
        self._model = st_model

    # ---------------------------------------------------------------- search
    @property
    def bm25(self) -> BM25Retriever:
        if self._bm25 is None:
            self._bm25 = BM25Retriever(self.ids, self.texts)
        return self._bm25

    def encode_queries(self, queries: list[str], batch_size: int = 64) -> np.ndarray:
        return encode(
            self.model, list(queries), batch_size=batch_size, precision=self.meta.get("encode_precision", "auto")
        )

    def search_embeddings(
        self,
        query_embeddings: np.ndarray,
        k: int = 10,
        *,
        rescore_multiplier: int = 4,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[list[Hit]]:
        """Nearest documents to float32 query embeddings, via sentence-transformers' ``semantic_search_faiss``
        (quantised indexes are searched with quantised queries and rescored with the float32 queries)."""
        from sentence_transformers.util.quantization import semantic_search_faiss

        query_embeddings = np.asarray(query_embeddings, dtype=np.float32)
        if query_embeddings.ndim != 2 or query_embeddings.shape[1] != self.meta["model"]["dimension"]:
            raise ModelMismatchError(
                f"query embeddings have shape {query_embeddings.shape}; the index holds "
                f"{self.meta['model']['dimension']}-d embeddings"
            )
        k = max(1, min(k, len(self.ids)))
        if ef_search is not None and hasattr(self.faiss_index, "hnsw"):
            self.faiss_index.hnsw.efSearch = ef_search
        if nprobe is not None and hasattr(self.faiss_index, "nprobe"):
            self.faiss_index.nprobe = nprobe
        results, _ = semantic_search_faiss(
            query_embeddings,
            corpus_index=self.faiss_index,
            corpus_precision=self.precision,
            top_k=k,
            ranges=self.ranges,
            rescore=self.precision != "float32",
            rescore_multiplier=rescore_multiplier,
        )
        return [
            [
                Hit(self.ids[r["corpus_id"]], float(r["score"]), self.texts[r["corpus_id"]], rank)
                for rank, r in enumerate((r for r in res if r["corpus_id"] >= 0), 1)
            ]
            for res in results
        ]

    def _doc_embeddings(self, rows: list[int]) -> np.ndarray:
        if self.precision == "float32":
            return self.embeddings[rows]
        return self.encode_queries([self.texts[row] for row in rows])  # quantised index: re-embed the candidates

    def search(
        self,
        queries: str | list[str],
        k: int = 10,
        *,
        rerank_bm25: int | None = None,
        bm25_weight: float = 0.0,
        bm25_only: bool = False,
        **search_kwargs: Any,
    ) -> list[Hit] | list[list[Hit]]:
        """Top ``k`` documents per query (a list of :class:`Hit`; a list of lists for a list of queries).

        ``rerank_bm25=K``: two-stage mode, BM25's top ``K`` candidates re-scored by the model (cosine); with
        ``bm25_weight=w > 0`` the score is the hybrid ``w * BM25 + (1 - w) * cosine`` of :func:`fuse_scores`.
        ``bm25_only``: lexical BM25 alone (scores are BM25 scores).
        """
        check_bm25_weight(bm25_weight, rerank_bm25)
        single = isinstance(queries, str)
        query_list = [queries] if single else list(queries)
        if bm25_only:
            results = [
                [
                    Hit(doc_id, score, self.texts[self._row[doc_id]], rank)
                    for rank, (doc_id, score) in enumerate(res[:k], 1)
                ]
                for res in self.bm25.search(query_list, k)
            ]
        elif rerank_bm25:
            candidates = self.bm25.search(query_list, rerank_bm25)
            query_embeddings = self.encode_queries(query_list)
            results = []
            for query_embedding, cands in zip(query_embeddings, candidates):
                rows = [self._row[doc_id] for doc_id, _ in cands]
                if not rows:
                    results.append([])
                    continue
                dense = self._doc_embeddings(rows) @ query_embedding
                scores = fuse_scores(np.array([score for _, score in cands]), dense, bm25_weight)
                order = np.argsort(-scores, kind="stable")[:k]
                results.append(
                    [
                        Hit(self.ids[rows[i]], float(scores[i]), self.texts[rows[i]], rank)
                        for rank, i in enumerate(order, 1)
                    ]
                )
        else:
            results = self.search_embeddings(self.encode_queries(query_list), k, **search_kwargs)
        return results[0] if single else results

    def retrieve(self, query: str, k: int = 5, **kwargs: Any) -> list[Hit]:
        """Candidate selection for LLM pipelines: the ``k`` best documents for one query."""
        return self.search(query, k, **kwargs)


_CACHE: dict[str, Index] = {}


def retrieve(index: str | Path | Index, query: str, k: int = 5, **kwargs: Any) -> list[Hit]:
    """``k`` best documents for ``query`` from an index directory (loaded once and cached) or an :class:`Index`."""
    if not isinstance(index, Index):
        meta = Path(index) / "meta.json"
        key = f"{Path(index).resolve()}:{meta.stat().st_mtime_ns if meta.is_file() else 0}"  # a rebuilt index reloads
        if key not in _CACHE:
            _CACHE[key] = Index.load(index)
        index = _CACHE[key]
    return index.retrieve(query, k, **kwargs)
