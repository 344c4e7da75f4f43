"""Clustering: k-means on embeddings, V-measure against the gold labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gte_st.encoding import encode
from gte_st.evaluation.embedding import ModelOrLoader, resolve_model
from gte_st.evaluation.readers import read_labelled_texts
from gte_st.evaluation.result import EvalResult, dataset_name
from gte_st.evaluation.sampling import stratified_subsample
from gte_st.vocabulary import warn_unknown_tokens


def evaluate_clustering(
    model: ModelOrLoader,
    path: str | Path,
    *,
    split: str | None = None,
    n_clusters: int | None = None,
    batch_size: int = 64,
    precision: str = "fp32",
    compile: bool = False,
    max_samples: int | None = None,
    seed: int = 42,
    dataset: str | None = None,
) -> EvalResult:
    """V-measure (main score) and NMI (adjusted Rand index in ``details``) of scikit-learn k-means (``n_init=10``) with as many
    clusters as gold labels (or ``n_clusters``).

    Args:
        path: csv/tsv with a header naming a text and a label column (e.g. 20 Newsgroups ``subjects.tsv``:
            ``split, label, doc_id, subject``), or jsonl. With a ``split`` column, ``split`` picks the rows
            (default: ``"test"`` if present, else all rows).
        max_samples: Randomly keep at most N texts (seeded) -- k-means on many thousands of texts is slow.
        compile: Encode with a ``torch.compile``'d copy of the model (:func:`gte_st.encoding.encode`; torch models
            only): about a minute to compile once, then faster on CPU.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, v_measure_score

    full = read_labelled_texts(path)
    available = sorted(set(full.splits)) if full.splits is not None else []
    wanted = split or ("test" if "test" in available or not available else "+".join(available))
    data = read_labelled_texts(path, split) if split and available else full
    if not split and "test" in available:
        data = read_labelled_texts(path, "test")
    texts, labels = stratified_subsample(data, max_samples, seed)
    k = n_clusters or len(np.unique(labels))
    if k < 2 or len(texts) < k:
        raise ValueError(f"{path}: need at least 2 clusters and one text per cluster (k={k}, texts={len(texts)})")
    model = resolve_model(model)  # after the data is read and checked
    warn_unknown_tokens(model, {"text": texts}, str(path))
    embeddings = encode(model, texts, batch_size=batch_size, precision=precision, compile=compile)
    predicted = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(embeddings)
    return EvalResult(
        task_type="Clustering",
        dataset=dataset or dataset_name(path),
        split=wanted,
        metrics={
            "v_measure": v_measure_score(labels, predicted),
            "nmi": normalized_mutual_info_score(labels, predicted),
        },
        main_score="v_measure",
        details={
            "texts": len(texts),
            "clusters": k,
            "adjusted_rand_index": float(adjusted_rand_score(labels, predicted)),
            "encode_precision": precision,
            "encode_compile": compile,
        },
    )
