"""Duplicate and paraphrase mining on embeddings: every pair above a cosine threshold, without an N x N matrix."""

from __future__ import annotations

import numpy as np

# Queries per range search: the search's result buffers grow with chunk x neighbours above the threshold, so a
# chunk bounds the memory of a dense corpus (many near-duplicates) while staying large enough for BLAS.
DEFAULT_CHUNK_SIZE = 4096


def mine_duplicates(
    embeddings: np.ndarray, threshold: float, *, chunk_size: int = DEFAULT_CHUNK_SIZE
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


__all__ = ["duplicate_groups", "mine_duplicates"]
