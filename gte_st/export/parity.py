"""The export's parity gate: the worst-case cosine between an exported variant's embeddings and the torch model's.

.. math::

    \\text{parity} = \\min_{t \\in S} \\cos\\big(f_{\\text{torch}}(t), f_{\\text{export}}(t)\\big)

over the parity sample :math:`S` (:data:`gte_st.export.samples.PARITY_SAMPLE`: one-word texts, texts beyond the
maximum length, non-English text). The *minimum* is judged, not the mean: an int8 variant whose mean is 0.99 can
still map a one-word query to 0.95, and that query then retrieves the wrong documents. Thresholds per precision
class (:data:`PARITY_THRESHOLDS`):

* ``fp32`` 0.999 -- an fp32 graph must reproduce torch up to float reordering;
* ``bf16`` 0.99 -- bf16 keeps 8 mantissa bits; torch's own bf16 path reaches 0.9999 on MiniLM;
* ``int8`` 0.98 -- the issue's serving goal: a quantised artifact no worse than that on any text.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

PARITY_THRESHOLDS: dict[str, float] = {"fp32": 0.999, "bf16": 0.99, "int8": 0.98}


def embed(model, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """L2-normalised float32 embeddings from ``model.encode``."""
    return np.asarray(
        model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True), dtype=np.float32
    )


def cosines(reference, candidate, texts: list[str]) -> np.ndarray:
    """Per-text cosine similarity between two models' embeddings of ``texts``."""
    return (embed(reference, texts) * embed(candidate, texts)).sum(axis=1)


def parity(reference, candidate, texts: list[str]) -> tuple[float, float]:
    """(minimum, mean) cosine similarity between two models' embeddings of ``texts``."""
    values = cosines(reference, candidate, texts)
    return float(values.min()), float(values.mean())


def quality(model, sts: str | Path | None, retrieval: str | Path | None, max_corpus: int | None) -> dict[str, float]:
    """Main scores of ``model`` on the STS file and the BEIR folder (``gte_st.evaluation``), keyed
    ``"sts:<file>:<metric>"`` / ``"retrieval:<folder>:<metric>"``."""
    if not sts and not retrieval:
        return {}
    try:
        from gte_st.evaluation import evaluate_retrieval, evaluate_sts
    except ImportError as exc:
        logger.warning(f"quality deltas skipped: gte_st.evaluation is not available ({exc})")
        return {}
    scores = {}
    if sts:
        result = evaluate_sts(model, sts)
        scores[f"sts:{Path(sts).name}:{result.main_score}"] = result.metrics[result.main_score]
    if retrieval:
        result = evaluate_retrieval(model, retrieval, max_corpus=max_corpus)
        scores[f"retrieval:{Path(retrieval).name}:{result.main_score}"] = result.metrics[result.main_score]
    return scores
