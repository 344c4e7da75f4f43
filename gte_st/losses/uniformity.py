"""The uniformity term of alignment-uniformity, added to an in-batch loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from gte_st.losses.in_batch import InBatchView
from gte_st.losses.wrapper import LossWrapper


@dataclass
class UniformityConfig:
    """The options of :class:`UniformityLoss`, checked by :meth:`validate` without a model."""

    uniformity_weight: float = 1.0
    uniformity_t: float = 2.0

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the first option whose value the term cannot use."""
        if not self.uniformity_weight >= 0:
            raise ValueError(f"uniformity_weight must be >= 0, got {self.uniformity_weight}")
        if not self.uniformity_t > 0:
            raise ValueError(f"uniformity_t must be > 0, got {self.uniformity_t}")


class UniformityLoss(LossWrapper):
    config_class = UniformityConfig

    def __init__(
        self,
        model: SentenceTransformer | None,
        loss: nn.Module,
        uniformity_weight: float = 1.0,
        uniformity_t: float = 2.0,
    ) -> None:
        r"""
        ``loss`` plus the uniformity term of alignment-uniformity (Wang & Isola, 2020), restricted to each anchor's
        in-batch negatives:

        .. math::

            \mathcal L = \mathcal L_{\text{loss}} + \frac{u}{B}\sum_i
              \log \frac{1}{|\mathcal N_i|}\sum_{n\in\mathcal N_i} e^{-t\lVert \hat q_i - n\rVert^2}

        with :math:`\hat q_i` the L2-normalised anchor and :math:`\mathcal N_i` its valid negatives (every other
        positive and every hard negative in the batch, without duplicates of its own texts; rows without a valid
        negative add 0).

        Reason: with the positive MSE of :class:`~gte_st.losses.NormalizedMSELoss` (= alignment) it is an
        MSE-geometry objective whose log-sum-exp spreads the embeddings and focuses on the nearest negatives.

        Args:
            model: The SentenceTransformer model (the wrapped loss's).
            loss: The in-batch loss to add the term to (gte-st's losses read the same negatives; any other loss with
                ``compute_loss_from_embeddings`` gets the term over its batch's in-batch negatives).
            uniformity_weight: :math:`u`. Default 1.
            uniformity_t: :math:`t`. Default 2 (Wang & Isola's choice).

        References:
            - Wang & Isola, *Understanding Contrastive Representation Learning through Alignment and Uniformity on
              the Hypersphere*, 2020: https://arxiv.org/abs/2005.10242

        Example:
            ::

                import gte_st

                model = gte_st.build_model()
                loss = gte_st.losses.UniformityLoss(model, gte_st.losses.NormalizedMSELoss(model), uniformity_weight=0.5)
        """
        super().__init__(model, loss, UniformityConfig(uniformity_weight, uniformity_t))

    def term_for_rows(self, view: InBatchView, state: None, begin: int, end: int) -> Tensor:
        """``u`` times the sum over the rows of log mean_{n valid} exp(-t ||q - n||^2), per row weight."""
        queries = view.queries[view.rows(begin, end)]
        candidates, _ = view.forward_candidates()
        cosine, valid = queries @ candidates.T, view.anchor_negative_mask(begin, end)
        exponent = (-self.config.uniformity_t * (2.0 - 2.0 * cosine)).masked_fill(~valid, float("-inf"))
        count = valid.sum(dim=1)
        has = count > 0
        values = torch.logsumexp(exponent[has], dim=1) - torch.log(count[has].to(exponent.dtype))
        return self.config.uniformity_weight * values.sum() * view.row_weight

    @property
    def term_citation(self) -> str:
        return """
@inproceedings{wang2020understanding,
    title={Understanding Contrastive Representation Learning through Alignment and Uniformity on the Hypersphere},
    author={Tongzhou Wang and Phillip Isola},
    booktitle={International Conference on Machine Learning},
    year={2020},
    url={https://arxiv.org/abs/2005.10242},
}
"""


__all__ = ["UniformityConfig", "UniformityLoss"]
