"""gte-st losses. sentence-transformers' own losses (e.g. the GTE joint contrastive loss,
``MultipleNegativesRankingLoss(directions=(...4 directions...))``) remain available beside these."""

from __future__ import annotations

from gte_st.losses.cached_normalized_mse import CachedNormalizedMSELoss
from gte_st.losses.normalized_mse import NonFiniteEmbeddingError, NormalizedMSELoss

__all__ = ["NormalizedMSELoss", "CachedNormalizedMSELoss", "NonFiniteEmbeddingError"]
