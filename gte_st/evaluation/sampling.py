"""Drawing a smaller evaluation set that keeps every label's share (classification, clustering)."""

from __future__ import annotations

import numpy as np

from gte_st.evaluation.readers import LabelledTexts


def stratified_subsample(data: LabelledTexts, max_samples: int | None, seed: int) -> tuple[list[str], np.ndarray]:
    """At most ``max_samples`` texts, drawn label by label in turn (seeded) so every label keeps its share."""
    texts, labels = data.texts, np.asarray(data.labels)
    if max_samples is None or max_samples >= len(texts):
        return texts, labels
    shuffled = np.random.default_rng(seed).permutation(len(texts))
    seen: dict[str, int] = {}
    rank = np.empty(len(texts), dtype=np.int64)
    for position, i in enumerate(shuffled):
        rank[position] = seen[labels[i]] = seen.get(labels[i], -1) + 1
    keep = np.sort(shuffled[np.lexsort((np.arange(len(texts)), rank))[:max_samples]])
    return [texts[i] for i in keep], labels[keep]


__all__ = ["stratified_subsample"]
