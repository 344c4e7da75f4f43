"""gte-st: GTE (General Text Embedding) models as first-class sentence-transformers citizens.

Public API::

    import gte_st

    model = gte_st.build_model("sentence-transformers/all-MiniLM-L6-v2")   # Transformer + GTEMeanPooling
    loss = gte_st.losses.NormalizedMSELoss(model)                          # normalised MSE, in-batch negatives
    model.save("gte")                                                      # portable: loads with plain SentenceTransformer

Attributes are imported lazily, so ``import gte_st`` (and the ``gte-st`` CLI's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY_ATTRIBUTES = {
    "GTEMeanPooling": "gte_st.pooling",
    "GTEModel": "gte_st.model",
    "build_model": "gte_st.model",
    "default_base_model": "gte_st.model",
    "retrieve": "gte_st.search",
    "load": "gte_st.loading",
}

if TYPE_CHECKING:
    from gte_st import convert, losses
    from gte_st.loading import load
    from gte_st.model import GTEModel, build_model, default_base_model
    from gte_st.pooling import GTEMeanPooling
    from gte_st.search import retrieve


def __getattr__(name: str) -> Any:
    if name in ("losses", "convert"):
        return importlib.import_module(f"gte_st.{name}")
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    raise AttributeError(f"module 'gte_st' has no attribute {name!r}")


__all__ = [
    "GTEMeanPooling",
    "GTEModel",
    "build_model",
    "convert",
    "default_base_model",
    "load",
    "losses",
    "retrieve",
    "__version__",
]
