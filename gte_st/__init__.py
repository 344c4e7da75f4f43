"""gte-st: GTE (General Text Embedding) models as first-class sentence-transformers citizens.

Public API::

    import gte_st

    model = gte_st.build_model("sentence-transformers/all-MiniLM-L6-v2")   # Transformer + GTEMeanPooling
    loss = gte_st.losses.NormalizedMSELoss(model)                          # normalised MSE, in-batch negatives
    model.save("gte")                                                      # portable: loads with plain SentenceTransformer
"""

from __future__ import annotations

__version__ = "0.1.0"

from gte_st import losses
from gte_st.model import GTEModel, build_model, default_base_model
from gte_st.pooling import GTEMeanPooling

__all__ = ["GTEMeanPooling", "GTEModel", "build_model", "default_base_model", "losses", "__version__"]
