"""Semantic search over a corpus: a resumable, checksummed embeddings + FAISS index directory, BM25 and
BM25 -> GTE two-stage re-ranking.

Index directory layout (``meta.json`` is written last and marks the index complete; the whole directory is built
under ``<DIR>.partial`` and renamed into place, so an interrupted build never leaves an index that loads)::

    DIR/meta.json        format, model (name, sha256 of its weights, dimension, probe embeddings), counts, index
                         settings and the sha256 of every other file
    DIR/docs.jsonl       {"id", "text"} per document, in index order
    DIR/embeddings.npy   the corpus embeddings: float32, uint8 (scalar-quantised) or packed binary
    DIR/ranges.npy       per-dimension (min, max) of the uint8 quantisation (uint8 only)
    DIR/index.faiss      the FAISS index (flat inner product, HNSW or IVF; binary Hamming indexes for binary)

Python API::

    from gte_st.search import build_index, Index, retrieve

    build_index("corpus.jsonl", "my-gte", "my-index")
    index = Index.load("my-index")
    hits = index.search("what causes diabetes?", k=10)                 # [Hit(id, score, text, rank), ...]
    hits = index.search("what causes diabetes?", k=10, rerank_bm25=100)  # BM25 top-100 re-scored by the model
    hits = retrieve("my-index", "what causes diabetes?", k=5)          # cached index, for LLM pipelines
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

FORMAT = "gte-st-index"
FORMAT_VERSION = 1
PRECISIONS = {"float32": "float32", "uint8": "uint8", "int8": "uint8", "ubinary": "ubinary", "binary": "ubinary"}
INDEX_TYPES = ("flat", "hnsw", "ivf")
ID_FIELDS = ("_id", "id", "doc_id", "docid", "pid")
TEXT_FIELDS = ("text", "sentence", "content", "body", "passage", "document")
# Fixed texts whose embeddings are stored with the index: a query model that embeds them differently did not build it.
PROBE_TEXTS = [
    "A man is playing a guitar on stage.",
    "The central bank raised interest rates to fight inflation.",
    "Insulin regulates glucose uptake in muscle cells.",
    "How do I reset my password?",
]
PROBE_MIN_COSINE = 0.98


class IndexError_(Exception):
    """Base class of the index errors (named so as not to shadow the built-in ``IndexError``)."""


class CorpusError(IndexError_, ValueError):
    """The corpus file cannot be indexed (empty, duplicate ids, missing text)."""


class IncompleteIndexError(IndexError_, FileNotFoundError):
    """The directory holds no complete index (never built, or the build was interrupted)."""


class CorruptIndexError(IndexError_):
    """A file of the index does not match the checksum recorded in meta.json."""


class ModelMismatchError(IndexError_, ValueError):
    """The query model is not the model that built the index."""


@dataclass
class Hit:
    id: str
    score: float
    text: str
    rank: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------- corpus
def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf8")
    return open(path, encoding="utf-8-sig", newline="")


def _pick(fields: Sequence[str], wanted: str | None, candidates: Sequence[str]) -> str | None:
    if wanted is not None:
        return wanted
    return next((name for name in candidates if name in fields), None)


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, record) of a jsonl / csv / tsv / parquet / txt file; row numbers count from 1 (data rows)."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".jsonl") or name.endswith(".json"):
        with _open_text(path) as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise CorpusError(f"{path}: line {number} is not valid JSON ({exc})") from None
    elif name.endswith(".csv") or name.endswith(".tsv"):
        with _open_text(path) as f:
            reader = csv.DictReader(f, delimiter="\t" if name.endswith(".tsv") else ",")
            for number, row in enumerate(reader, 1):
                yield number, row
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for number, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield number, row
    elif name.endswith(".txt"):
        with _open_text(path) as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield number, {"id": str(number), "text": line.rstrip("\r\n")}
    else:
        raise CorpusError(
            f"{path}: unsupported corpus format; use .jsonl, .csv, .tsv, .parquet, .txt or a BEIR folder"
        )


def read_corpus(
    path: str | Path, *, id_field: str | None = None, text_field: str | None = None, title_field: str | None = "title"
) -> tuple[list[str], list[str]]:
    """Read (ids, texts) from a jsonl / csv / tsv / parquet / txt file or a BEIR folder (``corpus.jsonl[.gz]``).

    The id field defaults to the first of ``_id, id, doc_id, docid, pid`` present (row numbers when none is);
    the text field to the first of ``text, sentence, content, body, passage, document``. A non-empty
    ``title_field`` is prepended to the text (``"title text"``), as BEIR evaluations do.

    Raises:
        CorpusError: empty corpus, duplicate ids, or a row without text (naming the file and row).
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in ("corpus.jsonl", "corpus.jsonl.gz") if (path / name).is_file()]
        if not found:
            raise CorpusError(f"{path} is a folder without corpus.jsonl / corpus.jsonl.gz (not a BEIR folder)")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    ids: list[str] = []
    texts: list[str] = []
    first_row: dict[str, int] = {}
    id_key = text_key = None
    for number, record in _rows(path):
        if not isinstance(record, dict):
            raise CorpusError(f"{path}: row {number} is not an object")
        if text_key is None:
            id_key = _pick(list(record), id_field, ID_FIELDS)
            text_key = _pick(list(record), text_field, TEXT_FIELDS)
            if text_key is None:
                raise CorpusError(
                    f"{path}: row {number} has no text field (fields: {sorted(record)}); pass --text-field"
                )
        text = record.get(text_key)
        if text is None or not isinstance(text, str):
            raise CorpusError(f"{path}: row {number}: missing text field {text_key!r} (fields: {sorted(record)})")
        title = record.get(title_field) if title_field else None
        if isinstance(title, str) and title.strip():
            text = f"{title.strip()} {text}"
        if id_key is None:
            doc_id = str(number)
        else:
            if record.get(id_key) is None:
                raise CorpusError(f"{path}: row {number}: missing id field {id_key!r}")
            doc_id = str(record[id_key])
        if doc_id in first_row:
            raise CorpusError(f"{path}: duplicate id {doc_id!r} in rows {first_row[doc_id]} and {number}")
        first_row[doc_id] = number
        ids.append(doc_id)
        texts.append(text)
    if not ids:
        raise CorpusError(f"{path}: empty corpus (no rows)")
    return ids, texts


# ---------------------------------------------------------------------------------------------------------- model
def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _model_sha256(name_or_path: str | None) -> str | None:
    """sha256 over the weight files of a local model directory (None for Hub ids / in-memory models)."""
    if not name_or_path or not Path(name_or_path).is_dir():
        return None
    root = Path(name_or_path)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(_sha256(file).encode())
    return digest.hexdigest() if files else None


def _load_model(model: str | SentenceTransformer) -> tuple[SentenceTransformer, str]:
    if not isinstance(model, str):
        config = getattr(getattr(model[0], "model", None), "config", None)
        return model, str(getattr(config, "_name_or_path", "") or "")
    from sentence_transformers import SentenceTransformer

    name = str(Path(model).resolve()) if Path(model).is_dir() else model  # recorded: usable from any directory
    return SentenceTransformer(model, device=None), name


def _encode(model: SentenceTransformer, texts: list[str], batch_size: int, precision: str = "auto") -> np.ndarray:
    """float32, L2-normalised embeddings through gte_st.encoding.encode (contract 4): length-sorted batches, bf16
    on CPUs with AMX / AVX512-BF16 when ``precision="auto"``."""
    from gte_st.encoding import encode

    return encode(model, texts, batch_size=batch_size, precision=precision)


# ---------------------------------------------------------------------------------------------------------- BM25
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


# ---------------------------------------------------------------------------------------------------------- build
def _make_faiss_index(
    embeddings: np.ndarray, precision: str, index_type: str, *, hnsw_m: int, nlist: int | None, seed: int
):
    import faiss

    count = embeddings.shape[0]
    nlist = nlist or max(1, min(4096, int(4 * np.sqrt(count)), count // 39))  # FAISS wants >= 39 points per cell
    if precision == "ubinary":
        bits = embeddings.shape[1] * 8
        if index_type == "flat":
            index = faiss.IndexBinaryFlat(bits)
        elif index_type == "hnsw":
            index = faiss.IndexBinaryHNSW(bits, hnsw_m)
        else:
            index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, min(nlist, count))
    else:
        dim = embeddings.shape[1]
        if index_type == "flat":
            index = faiss.IndexFlatIP(dim)
        elif index_type == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = max(40, 2 * hnsw_m)
        else:
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, min(nlist, count), faiss.METRIC_INNER_PRODUCT)
    if index_type == "ivf":
        index.cp.seed = seed
        index.train(embeddings)
        index.make_direct_map()  # rescoring reconstructs vectors by id
    index.add(embeddings)
    return index


def _write_faiss(index, path: Path) -> None:
    import faiss

    (faiss.write_index_binary if isinstance(index, faiss.IndexBinary) else faiss.write_index)(index, str(path))


def _read_faiss(path: Path, precision: str):
    import faiss

    return faiss.read_index_binary(str(path)) if precision == "ubinary" else faiss.read_index(str(path))


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def corpus_fingerprint(ids: list[str], texts: list[str]) -> str:
    """sha256 over the (id, text) pairs of a corpus, in order."""
    digest = hashlib.sha256()
    for doc_id, text in zip(ids, texts):
        digest.update(doc_id.encode())
        digest.update(b"\0")
        digest.update(text.encode())
        digest.update(b"\1")
    return digest.hexdigest()


def build_index(
    corpus: str | Path | tuple[list[str], list[str]],
    model: str | SentenceTransformer,
    out: str | Path,
    *,
    precision: str = "float32",
    index_type: str = "flat",
    hnsw_m: int = 32,
    nlist: int | None = None,
    batch_size: int = 64,
    shard_size: int = 4096,
    id_field: str | None = None,
    text_field: str | None = None,
    overwrite: bool = False,
    show_progress_bar: bool = True,
    encode_precision: str = "auto",
    embeddings: np.ndarray | None = None,
    seed: int = 0,
) -> Index:
    """Encode a corpus and write an index directory (see the module docstring for its layout).

    Encoding runs in shards of ``shard_size`` documents, each saved under ``<out>.partial/shards/``: a build that is
    killed continues from the last finished shard when it is run again with the same corpus, model and settings.

    Args:
        corpus: A corpus file / BEIR folder (see :func:`read_corpus`) or an ``(ids, texts)`` pair.
        model: A model name/path or a loaded SentenceTransformer.
        out: The index directory to create.
        precision: ``"float32"``, ``"int8"`` (= ``"uint8"`` scalar quantisation) or ``"binary"`` (= ``"ubinary"``).
        index_type: ``"flat"`` (exact inner product), ``"hnsw"`` or ``"ivf"``.
        hnsw_m: HNSW graph degree. ``nlist``: IVF cells (default ``min(4 * sqrt(N), N / 39)``).
        overwrite: Replace an existing index at ``out``.
        encode_precision: ``"auto"`` (bf16 on CPUs with AMX / AVX512-BF16 and on GPUs), ``"fp32"`` or ``"bf16"``;
            queries are encoded the same way.
        embeddings: Precomputed float32, L2-normalised embeddings of the corpus (by ``model``): no encoding.
    """
    from tqdm.auto import tqdm

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    precision = PRECISIONS[precision]
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
    if shard_size <= 0 or batch_size <= 0:
        raise ValueError("shard_size and batch_size must be positive")
    out = Path(out)
    if (out / "meta.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds an index; pass overwrite=True (--overwrite) to replace it")
    if out.exists() and not (out / "meta.json").exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not an index directory; choose another --out")

    if isinstance(corpus, tuple):
        ids, texts = list(corpus[0]), list(corpus[1])
        if not ids:
            raise CorpusError("empty corpus (no documents)")
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))
            raise CorpusError(f"duplicate id {dup!r} in the corpus")
        corpus_name = "<in-memory>"
    else:
        ids, texts = read_corpus(corpus, id_field=id_field, text_field=text_field)
        corpus_name = str(corpus)
    st_model, model_name = _load_model(model)
    dim = st_model.get_embedding_dimension()
    model_sha = _model_sha256(model_name)

    partial = out.with_name(out.name + ".partial")
    shards_dir = partial / "shards"
    build_key = {
        "corpus_sha256": corpus_fingerprint(ids, texts),
        "count": len(ids),
        "model": model_name,
        "model_sha256": model_sha,
        "dim": dim,
        "shard_size": shard_size,
        "encode_precision": encode_precision,
    }
    build_file = partial / "build.json"
    if partial.exists():
        previous = json.loads(build_file.read_text()) if build_file.is_file() else None
        if previous != build_key:
            logger.warning(f"{partial}: an unfinished build for another corpus/model/settings; starting over")
            shutil.rmtree(partial)
    shards_dir.mkdir(parents=True, exist_ok=True)
    build_file.write_text(json.dumps(build_key, indent=2))

    if embeddings is not None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.shape != (len(ids), dim):
            raise ValueError(f"embeddings have shape {embeddings.shape}, expected ({len(ids)}, {dim})")
        shard_size = len(ids)
        _atomic_save_npy(shards_dir / f"{0:06d}.npy", embeddings)
    n_shards = (len(ids) + shard_size - 1) // shard_size
    done = [s for s in range(n_shards) if (shards_dir / f"{s:06d}.npy").is_file()]
    if done and embeddings is None:
        logger.warning(f"{partial}: resuming, {len(done)}/{n_shards} shards already encoded")
        print(f"resuming: {len(done)}/{n_shards} shards already encoded", file=sys.stderr)
    start = time.perf_counter()
    with tqdm(total=len(ids), desc="encoding", unit="doc", disable=not show_progress_bar) as bar:
        bar.update(sum(min(shard_size, len(ids) - s * shard_size) for s in done))
        for s in range(n_shards):
            shard_path = shards_dir / f"{s:06d}.npy"
            if shard_path.is_file():
                continue
            chunk = texts[s * shard_size : (s + 1) * shard_size]
            embeddings = _encode(st_model, chunk, batch_size, encode_precision)
            if embeddings.shape != (len(chunk), dim):
                raise RuntimeError(
                    f"model returned embeddings of shape {embeddings.shape}, expected ({len(chunk)}, {dim})"
                )
            _atomic_save_npy(shard_path, embeddings.astype(np.float32))
            bar.update(len(chunk))
    encode_s = time.perf_counter() - start

    from sentence_transformers.util.quantization import quantize_embeddings

    embeddings = np.concatenate([np.load(shards_dir / f"{s:06d}.npy") for s in range(n_shards)])
    files: dict[str, str] = {}
    ranges = None
    if precision == "uint8":
        ranges = np.vstack([embeddings.min(axis=0), embeddings.max(axis=0)]).astype(np.float32)
        stored = quantize_embeddings(embeddings, precision="uint8", ranges=ranges)
        _atomic_save_npy(partial / "ranges.npy", ranges)
        files["ranges.npy"] = ""
    elif precision == "ubinary":
        stored = quantize_embeddings(embeddings, precision="ubinary")
    else:
        stored = embeddings
    _atomic_save_npy(partial / "embeddings.npy", stored)
    files["embeddings.npy"] = ""
    index = _make_faiss_index(stored, precision, index_type, hnsw_m=hnsw_m, nlist=nlist, seed=seed)
    _write_faiss(index, partial / "index.faiss")
    files["index.faiss"] = ""
    with open(partial / "docs.jsonl", "w", encoding="utf8") as f:
        for doc_id, text in zip(ids, texts):
            f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    files["docs.jsonl"] = ""
    files = {name: _sha256(partial / name) for name in files}
    probes = _encode(st_model, PROBE_TEXTS, batch_size, encode_precision)
    from gte_st import __version__

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gte_st_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "corpus": corpus_name,
        "count": len(ids),
        "model": {
            "name": model_name,
            "sha256": model_sha,
            "dimension": dim,
            "probe_embeddings": np.round(probes, 5).tolist(),
        },
        "precision": precision,
        "encode_precision": encode_precision,
        "index": {
            "type": index_type,
            "hnsw_m": hnsw_m if index_type == "hnsw" else None,
            "nlist": getattr(index, "nlist", None),
        },
        "encode_seconds": round(encode_s, 2),
        "files": files,
    }
    shutil.rmtree(shards_dir)
    build_file.unlink()
    # meta.json is the completion marker, written last; then the finished directory is renamed into place.
    tmp_meta = partial / "meta.json.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_meta, partial / "meta.json")
    if out.exists():
        trash = out.with_name(out.name + ".old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(out, trash)
        os.replace(partial, out)
        shutil.rmtree(trash)
    else:
        os.replace(partial, out)
    return Index.load(out, model=st_model, verify=False)


# ---------------------------------------------------------------------------------------------------------- index
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
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as exc:
            raise CorruptIndexError(f"{meta_file} is not valid JSON ({exc})") from None
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise CorruptIndexError(f"{meta_file}: not a {FORMAT} v{FORMAT_VERSION} index")
        for name, checksum in meta["files"].items():
            file = path / name
            if not file.is_file():
                raise CorruptIndexError(f"{path}: {name} is missing")
            if verify and _sha256(file) != checksum:
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
            name = self.meta["model"]["name"]
            if not name:
                raise ModelMismatchError(f"{self.path}: the index records no model name; pass model=...")
            self.set_model(name)
        return self._model

    def set_model(self, model: str | SentenceTransformer) -> None:
        """Use ``model`` for queries after checking it is the model that built the index."""
        st_model, name = _load_model(model)
        recorded = self.meta["model"]
        dim = st_model.get_embedding_dimension()
        if dim != recorded["dimension"]:
            raise ModelMismatchError(
                f"{self.path} was built by {recorded['name']!r} ({recorded['dimension']}-d embeddings); the query "
                f"model {name or type(st_model).__name__!r} gives {dim}-d embeddings"
            )
        probes = _encode(st_model, PROBE_TEXTS, 16, self.meta.get("encode_precision", "auto"))
        cosine = float((probes * np.asarray(recorded["probe_embeddings"], dtype=np.float32)).sum(axis=1).min())
        if cosine < PROBE_MIN_COSINE:
            raise ModelMismatchError(
                f"{self.path} was built by {recorded['name']!r}; the query model {name!r} embeds the probe texts "
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
        return _encode(self.model, list(queries), batch_size, self.meta.get("encode_precision", "auto"))

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


# ---------------------------------------------------------------------------------------------------------- CLI
def _index_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gte-st index", description="Encode a corpus into an index directory.")
    parser.add_argument("corpus", help="jsonl / csv / tsv / parquet / txt file, or a BEIR folder")
    parser.add_argument("--model", required=True, help="model directory or name")
    parser.add_argument("--out", required=True, help="index directory to create")
    parser.add_argument("--precision", default="float32", choices=sorted(PRECISIONS))
    parser.add_argument("--index", dest="index_type", default="flat", choices=INDEX_TYPES)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--nlist", type=int, help="IVF cells (default min(4*sqrt(N), N/39))")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=4096, help="documents per resumable encoding shard")
    parser.add_argument("--id-field")
    parser.add_argument("--text-field")
    parser.add_argument("--encode-precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        index = build_index(
            args.corpus,
            args.model,
            args.out,
            precision=args.precision,
            index_type=args.index_type,
            hnsw_m=args.hnsw_m,
            nlist=args.nlist,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            id_field=args.id_field,
            text_field=args.text_field,
            overwrite=args.overwrite,
            show_progress_bar=not args.no_progress,
            encode_precision=args.encode_precision,
        )
    except (IndexError_, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"gte-st index: {exc}", file=sys.stderr)
        return 2
    print(
        f"indexed {len(index)} documents into {args.out} ({index.precision}, {index.meta['index']['type']}, "
        f"{index.meta['model']['dimension']}-d, encoding {index.meta['encode_seconds']} s)"
    )
    return 0


def _search_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gte-st search", description="Query an index directory.")
    parser.add_argument("index", help="index directory built by `gte-st index`")
    parser.add_argument("queries", nargs="+", help="one or more queries")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument(
        "--rerank-bm25",
        type=int,
        nargs="?",
        const=100,
        metavar="K",
        help="two-stage: BM25 top K (default 100) re-scored by the model",
    )
    parser.add_argument(
        "--bm25-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="with --rerank-bm25: hybrid score W*BM25 + (1-W)*cosine, both min-max normalised (default 0)",
    )
    parser.add_argument("--bm25-only", action="store_true", help="lexical BM25 alone")
    parser.add_argument("--model", help="query model (default: the one recorded in the index)")
    parser.add_argument("--ef-search", type=int, help="HNSW search breadth")
    parser.add_argument("--nprobe", type=int, help="IVF cells visited")
    parser.add_argument("--json", action="store_true", help="print JSON lines {query, hits}")
    args = parser.parse_args(argv)
    if args.bm25_weight and not args.rerank_bm25:
        parser.error("--bm25-weight needs --rerank-bm25")
    if not 0.0 <= args.bm25_weight <= 1.0:
        parser.error(f"--bm25-weight must be in [0, 1], got {args.bm25_weight}")
    try:
        index = Index.load(args.index, model=args.model)
        kwargs = {}
        if not args.rerank_bm25 and not args.bm25_only:
            kwargs = {"ef_search": args.ef_search, "nprobe": args.nprobe}
        results = index.search(
            args.queries, args.k, rerank_bm25=args.rerank_bm25, bm25_weight=args.bm25_weight,
            bm25_only=args.bm25_only, **kwargs,
        )  # fmt: skip
    except (IndexError_, FileNotFoundError, ValueError, ImportError) as exc:
        print(f"gte-st search: {exc}", file=sys.stderr)
        return 2
    for query, hits in zip(args.queries, results):
        if args.json:
            print(json.dumps({"query": query, "hits": [hit.to_dict() for hit in hits]}, ensure_ascii=False))
            continue
        print(f"# {query}")
        for hit in hits:
            text = hit.text if len(hit.text) <= 100 else hit.text[:97] + "..."
            print(f"{hit.rank:>3}  {hit.score:.4f}  {hit.id}  {text}")
    return 0


def main(argv: list[str] | None = None, command: str = "search") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if command == "index":
        return _index_main(argv)
    if command == "search":
        return _search_main(argv)
    raise ValueError(f"unknown command {command!r}; expected 'index' or 'search'")


__all__ = [
    "BM25Retriever",
    "CorpusError",
    "CorruptIndexError",
    "Hit",
    "IncompleteIndexError",
    "Index",
    "ModelMismatchError",
    "build_index",
    "main",
    "read_corpus",
    "retrieve",
]
