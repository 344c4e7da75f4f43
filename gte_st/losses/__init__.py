"""gte-st losses: the normalised-MSE core, the pieces that wrap an in-batch loss, and gradient caching.

- :class:`NormalizedMSELoss`: normalised MSE with in-batch negatives (InfoNCE's weights, so its gradient is
  ``2 tau`` x MultipleNegativesRankingLoss's with the defaults).
- Pieces that wrap a loss, each adding one thing (in the manner of sentence-transformers' ``MatryoshkaLoss``):
  :class:`UniformityLoss`, :class:`SelfDistillationLoss`, :class:`ScoreDistillationLoss` (terms) and
  :class:`FalseNegativeFilterLoss` (which candidates are negatives).
- :class:`CachedLoss`: any of them (or a composition) with gradient caching.
- :class:`ZeroLoss`: the empty loss, so that a piece's term trains alone (replay batches trained by distillation).

Each piece has a config dataclass whose ``validate()`` checks its options without a model. sentence-transformers'
own losses (e.g. ``MultipleNegativesRankingLoss``, ``MatryoshkaLoss``) combine with these.
"""

from __future__ import annotations

from gte_st.losses.cached import CachedConfig, CachedLoss
from gte_st.losses.false_negatives import FalseNegativeFilterConfig, FalseNegativeFilterLoss
from gte_st.losses.in_batch import InBatchLoss, InBatchView, NonFiniteEmbeddingError
from gte_st.losses.normalized_mse import NormalizedMSEConfig, NormalizedMSELoss
from gte_st.losses.score_distillation import ScoreDistillationConfig, ScoreDistillationLoss
from gte_st.losses.self_distillation import SelfDistillationConfig, SelfDistillationLoss
from gte_st.losses.uniformity import UniformityConfig, UniformityLoss
from gte_st.losses.wrapper import LossWrapper
from gte_st.losses.zero import ZeroConfig, ZeroLoss

__all__ = [
    "CachedConfig",
    "CachedLoss",
    "FalseNegativeFilterConfig",
    "FalseNegativeFilterLoss",
    "InBatchLoss",
    "InBatchView",
    "LossWrapper",
    "NonFiniteEmbeddingError",
    "NormalizedMSEConfig",
    "NormalizedMSELoss",
    "ScoreDistillationConfig",
    "ScoreDistillationLoss",
    "SelfDistillationConfig",
    "SelfDistillationLoss",
    "UniformityConfig",
    "UniformityLoss",
    "ZeroConfig",
    "ZeroLoss",
]
