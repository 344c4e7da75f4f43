"""Topic clustering on embeddings: spherical k-means (FAISS) and the texts nearest to each centre."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


__all__ = ["Clustering", "cluster"]
