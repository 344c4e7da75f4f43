"""Building an index directory: resumable sharded encoding, quantisation, the FAISS index, checksummed metadata."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gte_st.corpus import check_corpus, read_corpus
from gte_st.encoding import encode, output_dimension
from gte_st.files import (
    atomic_save_npy,
    atomic_write_json,
    atomic_write_text,
    exclusive_lock,
    remove_leftovers,
    replace_directory,
)
from gte_st.fingerprint import corpus_fingerprint, file_digest, model_fingerprint
from gte_st.search.index import (
    FORMAT,
    FORMAT_VERSION,
    INDEX_TYPES,
    PRECISIONS,
    PROBE_TEXTS,
    Index,
    load_query_model,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


# FAISS wants at least this many training points per IVF cell; more cells than this many points give empty cells.
MIN_POINTS_PER_CELL = 39
# IVF cell count: about 4 * sqrt(N) (FAISS's guideline), at most this many.
MAX_IVF_CELLS = 4096
# HNSW build breadth: twice the graph degree, and never below FAISS's own default (40).
HNSW_MIN_EF_CONSTRUCTION = 40


def default_nlist(count: int) -> int:
    """IVF cells for ``count`` vectors: ``min(4 * sqrt(N), N / 39, 4096)``, at least 1."""
    return max(1, min(MAX_IVF_CELLS, int(4 * np.sqrt(count)), count // MIN_POINTS_PER_CELL))


def _make_faiss_index(
    embeddings: np.ndarray, precision: str, index_type: str, *, hnsw_m: int, nlist: int | None, seed: int
):
    import faiss

    count = embeddings.shape[0]
    nlist = nlist or default_nlist(count)
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
            index.hnsw.efConstruction = max(HNSW_MIN_EF_CONSTRUCTION, 2 * hnsw_m)
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
    compile: bool = False,
    embeddings: np.ndarray | None = None,
    seed: int = 0,
    corpus_name: str | None = None,
    model_name: str | None = None,
    truncate_dim: int | None = None,
) -> Index:
    """Encode a corpus and write an index directory (see :mod:`gte_st.search.index` for its layout).

    Encoding runs in shards of ``shard_size`` documents, each saved under ``<out>.partial/shards/`` under a name
    that carries the fingerprint of the corpus, model and settings it was encoded with: a build that is killed
    continues from the last finished shard when it is run again with the same corpus, model and settings, and a
    shard of any other build is never used. One build at a time: ``out`` is locked while it is built (a second
    process gets a one-line error naming the first), and the leftovers of a build that died are removed.

    Args:
        corpus: A corpus file / BEIR folder (see :func:`read_corpus`) or an ``(ids, texts)`` pair.
        model: A model name/path or a loaded SentenceTransformer.
        out: The index directory to create.
        precision: ``"float32"``, ``"int8"`` (= ``"uint8"`` scalar quantisation) or ``"binary"`` (= ``"ubinary"``).
        index_type: ``"flat"`` (exact inner product), ``"hnsw"`` or ``"ivf"``.
        hnsw_m: HNSW graph degree. ``nlist``: IVF cells (default :func:`default_nlist`).
        overwrite: Replace an existing index at ``out``.
        encode_precision: ``"auto"`` (bf16 on CPUs with AMX / AVX512-BF16 and on GPUs), ``"fp32"`` or ``"bf16"``;
            queries are encoded the same way.
        compile: Encode the corpus with a ``torch.compile``d copy of the model (see :func:`gte_st.encoding.encode`;
            a one-off compile, worth it for large corpora). Torch models only.
        embeddings: Precomputed float32, L2-normalised embeddings of the corpus (by ``model``): no encoding.
        corpus_name: What ``meta.json`` records as the corpus (default: the path, or ``<in-memory>``).
        model_name: What ``meta.json`` records as the query model (default: the model's path or name); e.g. the
            model directory when ``model`` is its exported artifact, so queries load the same model.
        truncate_dim: Keep the first ``truncate_dim`` dimensions of every embedding (a Matryoshka model; default the
            model's own ``truncate_dim``, else all). The index records it and embeds queries the same way.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    precision = PRECISIONS[precision]
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
    if shard_size <= 0 or batch_size <= 0:
        raise ValueError("shard_size and batch_size must be positive")
    out = Path(out)
    check_destination(out, overwrite)

    if isinstance(corpus, tuple):
        ids, texts = list(corpus[0]), list(corpus[1])
        check_corpus(ids, texts)
        corpus_name = corpus_name or "<in-memory>"
    else:
        ids, texts = read_corpus(corpus, id_field=id_field, text_field=text_field)
        corpus_name = corpus_name or str(corpus)
    st_model, loaded_name = load_query_model(model)
    model_name = model_name or loaded_name
    if truncate_dim is None:
        truncate_dim = getattr(st_model, "truncate_dim", None)
    dim = output_dimension(st_model, truncate_dim)
    model_sha = model_fingerprint(st_model)
    # Documents are embedded with the model's "document" prompt and queries (Index.encode_queries) with its "query"
    # prompt, as sentence-transformers' encode_document / encode_query do; the index records both.
    prompts = {name: st_model.prompts.get(name) or "" for name in ("query", "document")}
    build_key = {
        "corpus_sha256": corpus_fingerprint(ids, texts),
        "count": len(ids),
        "model": model_name,
        "model_fingerprint": model_sha,
        "dim": dim,
        "truncate_dim": truncate_dim,
        "prompts": prompts,
        "shard_size": len(ids) if embeddings is not None else shard_size,
        "encode_precision": encode_precision,
    }
    partial = out.with_name(out.name + ".partial")
    with exclusive_lock(out, doing="built"):
        check_destination(out, overwrite)  # again, now that no other build can be writing it
        remove_leftovers(out.parent, of=out.name)
        shards = _ShardStore(partial, build_key)
        start = time.perf_counter()
        if embeddings is not None:
            shards.save_precomputed(embeddings, (len(ids), dim))
        else:
            shards.encode_missing(
                texts, st_model, batch_size=batch_size, precision=encode_precision, compile=compile,
                show_progress_bar=show_progress_bar, truncate_dim=truncate_dim, prompt=prompts["document"] or None,
            )  # fmt: skip
        encode_s = time.perf_counter() - start
        corpus_embeddings = shards.load_all()
        files, nlist = _write_index_files(
            partial, ids, texts, corpus_embeddings, precision, index_type, hnsw_m, nlist, seed
        )
        probes = encode(
            st_model, PROBE_TEXTS, batch_size=batch_size, precision=encode_precision, truncate_dim=truncate_dim
        )
        meta = _meta(corpus_name, len(ids), model_name, model_sha, dim, probes, precision, encode_precision, encode_s)
        meta["model"].update(truncate_dim=truncate_dim, prompts=prompts)
        meta["index"] = {
            "type": index_type,
            "hnsw_m": hnsw_m if index_type == "hnsw" else None,
            "nlist": nlist,
        }
        meta["files"] = files
        shards.discard()
        # meta.json is the completion marker, written last; then the finished directory is renamed into place.
        atomic_write_json(partial / "meta.json", meta)
        replace_directory(partial, out)
    return Index.load(out, model=st_model, verify=False)


def check_destination(out: str | Path, overwrite: bool) -> None:
    """An index may be built at ``out``: it holds no index, or ``overwrite`` replaces it (checked again under the
    build's lock)."""
    out = Path(out)
    if (out / "meta.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds an index; pass overwrite=True (--overwrite) to replace it")
    if out.exists() and (not out.is_dir() or (not (out / "meta.json").exists() and any(out.iterdir()))):
        raise FileExistsError(f"{out} exists and is not an index directory; choose another --out")


class _ShardStore:
    """The encoded shards of one build under ``<out>.partial/shards/``, named ``<key>-<number>.npy`` where ``key`` is
    a digest of the build's corpus, model and settings: a shard is only ever read back by a build with the same key.
    A partial directory of another build is started over; files a dead writer left half-written are removed."""

    def __init__(self, partial: Path, build_key: dict) -> None:
        self.partial = partial
        self.dir = partial / "shards"
        self.key = hashlib.sha256(json.dumps(build_key, sort_keys=True).encode()).hexdigest()[:16]
        self.count, self.size, self.dim = build_key["count"], build_key["shard_size"], build_key["dim"]
        self.n_shards = (self.count + self.size - 1) // self.size
        build_file = partial / "build.json"
        if partial.exists():
            previous = json.loads(build_file.read_text()) if build_file.is_file() else None
            if previous != build_key:
                logger.warning(f"{partial}: an unfinished build for another corpus/model/settings; starting over")
                shutil.rmtree(partial)
        # We hold the lock of the build: every temporary file in the partial directory belongs to a dead writer.
        remove_leftovers(partial, also=(".*.tmp-*",))
        remove_leftovers(self.dir, also=(".*.tmp-*",))
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(build_file, build_key)

    def path(self, number: int) -> Path:
        return self.dir / f"{self.key}-{number:06d}.npy"

    def save_precomputed(self, embeddings: np.ndarray, shape: tuple[int, int]) -> None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.shape != shape:
            raise ValueError(f"embeddings have shape {embeddings.shape}, expected {shape}")
        atomic_save_npy(self.path(0), embeddings)

    def encode_missing(self, texts: list[str], model: SentenceTransformer, *, show_progress_bar: bool, **kw) -> None:
        from tqdm.auto import tqdm

        done = [s for s in range(self.n_shards) if self.path(s).is_file()]
        if done:
            logger.warning(f"{self.partial}: resuming, {len(done)}/{self.n_shards} shards already encoded")
        with tqdm(total=self.count, desc="encoding", unit="doc", disable=not show_progress_bar) as bar:
            bar.update(sum(min(self.size, self.count - s * self.size) for s in done))
            for s in range(self.n_shards):
                if self.path(s).is_file():
                    continue
                chunk = texts[s * self.size : (s + 1) * self.size]
                vectors = encode(model, chunk, **kw)
                if vectors.shape != (len(chunk), self.dim):
                    raise RuntimeError(
                        f"model returned embeddings of shape {vectors.shape}, expected ({len(chunk)}, {self.dim})"
                    )
                atomic_save_npy(self.path(s), vectors.astype(np.float32))
                bar.update(len(chunk))

    def load_all(self) -> np.ndarray:
        return np.concatenate([np.load(self.path(s)) for s in range(self.n_shards)])

    def discard(self) -> None:
        shutil.rmtree(self.dir)
        (self.partial / "build.json").unlink()


def _write_index_files(
    partial: Path,
    ids: list[str],
    texts: list[str],
    embeddings: np.ndarray,
    precision: str,
    index_type: str,
    hnsw_m: int,
    nlist: int | None,
    seed: int,
) -> tuple[dict[str, str], int | None]:
    """Quantise, build the FAISS index and write every index file into ``partial``; returns ``{file: sha256}`` and
    the IVF cell count (None for other index types)."""
    from sentence_transformers.util.quantization import quantize_embeddings

    names = []
    if precision == "uint8":
        ranges = np.vstack([embeddings.min(axis=0), embeddings.max(axis=0)]).astype(np.float32)
        stored = quantize_embeddings(embeddings, precision="uint8", ranges=ranges)
        atomic_save_npy(partial / "ranges.npy", ranges)
        names.append("ranges.npy")
    elif precision == "ubinary":
        stored = quantize_embeddings(embeddings, precision="ubinary")
    else:
        stored = embeddings
    atomic_save_npy(partial / "embeddings.npy", stored)
    index = _make_faiss_index(stored, precision, index_type, hnsw_m=hnsw_m, nlist=nlist, seed=seed)
    _write_faiss(index, partial / "index.faiss")
    docs = "".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in zip(ids, texts))
    atomic_write_text(partial / "docs.jsonl", docs)
    names += ["embeddings.npy", "index.faiss", "docs.jsonl"]
    return {name: file_digest(partial / name) for name in names}, getattr(index, "nlist", None)


def _meta(
    corpus_name: str,
    count: int,
    model_name: str,
    model_sha: str,
    dim: int,
    probes: np.ndarray,
    precision: str,
    encode_precision: str,
    encode_s: float,
) -> dict:
    from gte_st import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gte_st_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "corpus": corpus_name,
        "count": count,
        "model": {
            "name": model_name,
            "fingerprint": model_sha,
            "dimension": dim,
            "probe_embeddings": np.round(probes, 5).tolist(),
        },
        "precision": precision,
        "encode_precision": encode_precision,
        "encode_seconds": round(encode_s, 2),
    }
