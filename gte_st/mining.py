"""Duplicate / paraphrase mining and topic clustering on embeddings.

* :func:`mine_duplicates`: every pair with cosine >= threshold, found with FAISS range search over query chunks, so
  memory is O(N * dim + chunk * matches), never O(N^2).
* :func:`cluster`: spherical k-means (FAISS) and, per cluster, the member texts nearest to its centre.

CLI::

    gte-st dedup texts.jsonl --threshold 0.9 --out pairs.jsonl
    gte-st cluster subjects.tsv --text-field subject --k 20 --out clusters.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def mine_duplicates(
    embeddings: np.ndarray, threshold: float, *, chunk_size: int = 4096
) -> list[tuple[int, int, float]]:
    """All pairs ``(i, j, cosine)`` with ``i < j`` and cosine >= ``threshold`` of L2-normalised ``embeddings``,
    best first. Exact (flat inner-product range search), chunked over the queries."""
    import faiss

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"expected a non-empty (N, dim) array of embeddings, got shape {embeddings.shape}")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    # FAISS keeps results with score > radius; nudge down so that pairs exactly at the threshold are kept.
    radius = float(np.nextafter(np.float32(threshold), np.float32(-2)))
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, len(embeddings), chunk_size):
        lims, scores, neighbours = index.range_search(embeddings[start : start + chunk_size], radius)
        for q in range(len(lims) - 1):
            i = start + q
            for j, score in zip(neighbours[lims[q] : lims[q + 1]], scores[lims[q] : lims[q + 1]]):
                if j > i and score >= threshold:
                    pairs.append((i, int(j), float(score)))
    pairs.sort(key=lambda pair: (-pair[2], pair[0], pair[1]))
    return pairs


def duplicate_groups(n: int, pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    """Connected components (size >= 2) of the duplicate graph, each sorted, largest first."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in pairs:
        root_i, root_j = find(i), find(j)
        if root_i != root_j:
            parent[max(root_i, root_j)] = min(root_i, root_j)
    groups: dict[int, list[int]] = {}
    for x in range(n):
        groups.setdefault(find(x), []).append(x)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


@dataclass
class Clustering:
    labels: np.ndarray  # (N,) cluster of each text
    centroids: np.ndarray  # (k, dim), unit length
    nearest: list[list[tuple[int, float]]]  # per cluster: (row, cosine to the centre), best first
    sizes: list[int]


def cluster(embeddings: np.ndarray, k: int, *, n_nearest: int = 5, niter: int = 25, seed: int = 0) -> Clustering:
    """Spherical k-means on L2-normalised ``embeddings``; for each cluster its ``n_nearest`` members nearest to the
    centre."""
    import faiss

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if not 1 <= k <= len(embeddings):
        raise ValueError(f"k must be between 1 and the number of texts ({len(embeddings)}), got {k}")
    kmeans = faiss.Kmeans(
        embeddings.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False, min_points_per_centroid=1
    )
    kmeans.train(embeddings)
    centroids = kmeans.centroids / np.linalg.norm(kmeans.centroids, axis=1, keepdims=True)
    _, assignment = kmeans.index.search(embeddings, 1)
    labels = assignment[:, 0].astype(np.int64)
    nearest, sizes = [], []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        scores = embeddings[members] @ centroids[c]
        order = np.argsort(-scores, kind="stable")[:n_nearest]
        nearest.append([(int(members[i]), float(scores[i])) for i in order])
        sizes.append(int(len(members)))
    return Clustering(labels=labels, centroids=centroids, nearest=nearest, sizes=sizes)


def _embed(model_name: str | SentenceTransformer, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    from gte_st.encoding import encode

    model = SentenceTransformer(model_name) if isinstance(model_name, str) else model_name
    return encode(model, texts, batch_size=batch_size, show_progress_bar=progress)


def _common_args(parser: argparse.ArgumentParser) -> None:
    from gte_st.model import default_base_model

    parser.add_argument("file", help="jsonl / csv / tsv / parquet / txt (one text per line) file")
    parser.add_argument("--model", default=default_base_model(), help="model directory or name (default: MiniLM)")
    parser.add_argument("--id-field")
    parser.add_argument("--text-field")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", help="write the results as JSON lines to this file")
    parser.add_argument("--no-progress", action="store_true")


def _dedup_main(argv: list[str]) -> int:
    from gte_st.search import CorpusError, read_corpus

    parser = argparse.ArgumentParser(prog="gte-st dedup", description="Mine near-duplicate / paraphrase pairs.")
    _common_args(parser)
    parser.add_argument("--threshold", type=float, default=0.9, help="minimum cosine similarity (default 0.9)")
    parser.add_argument("--chunk-size", type=int, default=4096, help="queries per range-search chunk")
    args = parser.parse_args(argv)
    try:
        ids, texts = read_corpus(args.file, id_field=args.id_field, text_field=args.text_field, title_field=None)
        embeddings = _embed(args.model, texts, args.batch_size, not args.no_progress)
        pairs = mine_duplicates(embeddings, args.threshold, chunk_size=args.chunk_size)
    except (CorpusError, FileNotFoundError, ValueError) as exc:
        print(f"gte-st dedup: {exc}", file=sys.stderr)
        return 2
    groups = duplicate_groups(len(texts), pairs)
    records = [
        {"id1": ids[i], "id2": ids[j], "score": round(score, 6), "text1": texts[i], "text2": texts[j]}
        for i, j, score in pairs
    ]
    if args.out:
        with open(args.out, "w", encoding="utf8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    for record in records[: 10 if args.out else len(records)]:
        print(
            f"{record['score']:.4f}  {record['id1']}  {record['id2']}  {record['text1'][:60]!r}  {record['text2'][:60]!r}"
        )
    redundant = sum(len(g) - 1 for g in groups)
    print(
        f"{len(pairs)} pairs with cosine >= {args.threshold} among {len(texts)} texts; {len(groups)} duplicate "
        f"groups; keeping one text per group drops {redundant} texts"
        + (f"; pairs written to {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    return 0


def _cluster_main(argv: list[str]) -> int:
    from gte_st.search import CorpusError, read_corpus

    parser = argparse.ArgumentParser(prog="gte-st cluster", description="Group texts into k topics (k-means).")
    _common_args(parser)
    parser.add_argument("--k", type=int, required=True, help="number of clusters")
    parser.add_argument("--nearest", type=int, default=5, help="texts shown per cluster (nearest to the centre)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        ids, texts = read_corpus(args.file, id_field=args.id_field, text_field=args.text_field, title_field=None)
        embeddings = _embed(args.model, texts, args.batch_size, not args.no_progress)
        result = cluster(embeddings, args.k, n_nearest=args.nearest, seed=args.seed)
    except (CorpusError, FileNotFoundError, ValueError) as exc:
        print(f"gte-st cluster: {exc}", file=sys.stderr)
        return 2
    order = sorted(range(args.k), key=lambda c: -result.sizes[c])
    records = [
        {
            "cluster": c,
            "size": result.sizes[c],
            "nearest": [
                {"id": ids[row], "score": round(score, 6), "text": texts[row]} for row, score in result.nearest[c]
            ],
            "members": [ids[row] for row in np.flatnonzero(result.labels == c)],
        }
        for c in order
    ]
    if args.out:
        with open(args.out, "w", encoding="utf8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    for record in records:
        print(f"## cluster {record['cluster']} ({record['size']} texts)")
        for item in record["nearest"]:
            print(f"   {item['score']:.3f}  {item['text'][:100]}")
    return 0


def main(argv: list[str] | None = None, command: str = "dedup") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if command == "dedup":
        return _dedup_main(argv)
    if command == "cluster":
        return _cluster_main(argv)
    raise ValueError(f"unknown command {command!r}; expected 'dedup' or 'cluster'")


__all__ = ["Clustering", "cluster", "duplicate_groups", "main", "mine_duplicates"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[2:], command=sys.argv[1]))
