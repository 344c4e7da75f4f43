"""Building an index directory: resumable sharded encoding, quantisation, the FAISS index, checksummed metadata."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gte_st.corpus import check_corpus, read_corpus
from gte_st.encoding import encode, output_dimension
from gte_st.files import atomic_save_npy, atomic_write_json, atomic_write_text, replace_directory
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
        compile: Encode the corpus with a ``torch.compile``d copy of the model (see :func:`gte_st.encoding.encode`;
            a one-off compile, worth it for large corpora). Torch models only.
        embeddings: Precomputed float32, L2-normalised embeddings of the corpus (by ``model``): no encoding.
        corpus_name: What ``meta.json`` records as the corpus (default: the path, or ``<in-memory>``).
        model_name: What ``meta.json`` records as the query model (default: the model's path or name); e.g. the
            model directory when ``model`` is its exported artifact, so queries load the same model.
        truncate_dim: Keep the first ``truncate_dim`` dimensions of every embedding (a Matryoshka model; default the
            model's own ``truncate_dim``, else all). The index records it and embeds queries the same way.
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

    partial = out.with_name(out.name + ".partial")
    shards_dir = partial / "shards"
    build_key = {
        "corpus_sha256": corpus_fingerprint(ids, texts),
        "count": len(ids),
        "model": model_name,
        "model_fingerprint": model_sha,
        "dim": dim,
        "truncate_dim": truncate_dim,
        "prompts": prompts,
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
    atomic_write_json(build_file, build_key)

    if embeddings is not None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.shape != (len(ids), dim):
            raise ValueError(f"embeddings have shape {embeddings.shape}, expected ({len(ids)}, {dim})")
        shard_size = len(ids)
        atomic_save_npy(shards_dir / f"{0:06d}.npy", embeddings)
    n_shards = (len(ids) + shard_size - 1) // shard_size
    done = [s for s in range(n_shards) if (shards_dir / f"{s:06d}.npy").is_file()]
    if done and embeddings is None:
        logger.warning(f"{partial}: resuming, {len(done)}/{n_shards} shards already encoded")
    start = time.perf_counter()
    with tqdm(total=len(ids), desc="encoding", unit="doc", disable=not show_progress_bar) as bar:
        bar.update(sum(min(shard_size, len(ids) - s * shard_size) for s in done))
        for s in range(n_shards):
            shard_path = shards_dir / f"{s:06d}.npy"
            if shard_path.is_file():
                continue
            chunk = texts[s * shard_size : (s + 1) * shard_size]
            embeddings = encode(
                st_model, chunk, batch_size=batch_size, precision=encode_precision, compile=compile,
                truncate_dim=truncate_dim, prompt=prompts["document"],
            )  # fmt: skip
            if embeddings.shape != (len(chunk), dim):
                raise RuntimeError(
                    f"model returned embeddings of shape {embeddings.shape}, expected ({len(chunk)}, {dim})"
                )
            atomic_save_npy(shard_path, embeddings.astype(np.float32))
            bar.update(len(chunk))
    encode_s = time.perf_counter() - start

    from sentence_transformers.util.quantization import quantize_embeddings

    embeddings = np.concatenate([np.load(shards_dir / f"{s:06d}.npy") for s in range(n_shards)])
    files: dict[str, str] = {}
    ranges = None
    if precision == "uint8":
        ranges = np.vstack([embeddings.min(axis=0), embeddings.max(axis=0)]).astype(np.float32)
        stored = quantize_embeddings(embeddings, precision="uint8", ranges=ranges)
        atomic_save_npy(partial / "ranges.npy", ranges)
        files["ranges.npy"] = ""
    elif precision == "ubinary":
        stored = quantize_embeddings(embeddings, precision="ubinary")
    else:
        stored = embeddings
    atomic_save_npy(partial / "embeddings.npy", stored)
    files["embeddings.npy"] = ""
    index = _make_faiss_index(stored, precision, index_type, hnsw_m=hnsw_m, nlist=nlist, seed=seed)
    _write_faiss(index, partial / "index.faiss")
    files["index.faiss"] = ""
    docs = "".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in zip(ids, texts))
    atomic_write_text(partial / "docs.jsonl", docs)
    files["docs.jsonl"] = ""
    files = {name: file_digest(partial / name) for name in files}
    probes = encode(
        st_model, PROBE_TEXTS, batch_size=batch_size, precision=encode_precision, truncate_dim=truncate_dim
    )
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
            "fingerprint": model_sha,
            "dimension": dim,
            "truncate_dim": truncate_dim,
            "prompts": prompts,
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
    atomic_write_json(partial / "meta.json", meta)
    replace_directory(partial, out)
    return Index.load(out, model=st_model, verify=False)
