"""Teacher-score distillation: the student's cosines pulled to scores given with the batch as labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from gte_st.losses.in_batch import InBatchView
from gte_st.losses.wrapper import LossWrapper


@dataclass
class ScoreDistillationConfig:
    """The options of :class:`ScoreDistillationLoss`, checked by :meth:`validate` without a model."""

    score_distillation_weight: float = 1.0

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the first option whose value the term cannot use."""
        if not self.score_distillation_weight >= 0:
            raise ValueError(f"score_distillation_weight must be >= 0, got {self.score_distillation_weight}")


class ScoreDistillationLoss(LossWrapper):
    config_class = ScoreDistillationConfig

    def __init__(
        self, model: SentenceTransformer | None, loss: nn.Module, score_distillation_weight: float = 1.0
    ) -> None:
        r"""
        ``loss`` plus :math:`\sigma` times the MSE between the student's cosines of each anchor to its own columns
        and the teacher scores given as labels:

        .. math::

            \mathcal L = \mathcal L_{\text{loss}} + \frac{\sigma}{B(1+k)}\sum_i\sum_{j=0}^{k}
              \big(\cos(\hat q_i, \hat c_{ij}) - t_{ij}\big)^2

        with :math:`c_{i0}` the positive and :math:`c_{ij}` the j-th negative of row i. The labels are a
        ``(B, 1+k)`` tensor on the cosine scale (a dataset's ``pos_scores``/``neg_scores`` columns, FlagEmbedding's
        distillation layout, which ``gte-st train`` reads into a ``label`` column); a batch without labels (a source
        without scores) adds no term.

        Reason: a teacher that is not a dense model -- e.g. the BM25 + dense hybrid
        (:func:`gte_st.search.teacher.hybrid_teacher_rows`), which ranks SciFact far better than the model alone -- can
        still teach the student its order, through an MSE on unit-vector cosines.

        Args:
            model: The SentenceTransformer model (the wrapped loss's).
            loss: The in-batch loss to add the term to (any loss with ``compute_loss_from_embeddings``; it is given
                the same labels and should ignore them).
            score_distillation_weight: :math:`\sigma`. Default 1.

        References:
            - Hofstätter et al., *Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
              Distillation*, 2020: https://arxiv.org/abs/2010.02666 (distilling a teacher's scores)

        Inputs:
            +-------------------------------------------------+----------------------------------------------+
            | Texts                                           | Labels                                       |
            +=================================================+==============================================+
            | (anchor, positive, negative_1, ..., negative_k) | teacher scores of (positive, negative_1..k), |
            |                                                 | shape (B, 1+k), on the cosine scale          |
            +-------------------------------------------------+----------------------------------------------+

        Example:
            ::

                import gte_st

                model = gte_st.build_model()
                loss = gte_st.losses.ScoreDistillationLoss(
                    model, gte_st.losses.NormalizedMSELoss(model), score_distillation_weight=20.0
                )
        """
        super().__init__(model, loss, ScoreDistillationConfig(score_distillation_weight))

    def term_state(
        self, view: InBatchView, labels: Tensor | None, context: dict, chunk_size: int | None = None
    ) -> Tensor | None:
        """The labels as a ``(local rows, columns - 1)`` float tensor (checked), or None for a batch without them."""
        if labels is None:
            return None
        name = type(self).__name__
        expected = (view.local_size, len(view.docs))
        labels = torch.as_tensor(labels, device=view.queries.device).float()
        if labels.dim() == 1 and expected[1] == 1:
            labels = labels.unsqueeze(1)
        if tuple(labels.shape) != expected:
            raise ValueError(
                f"{name}: teacher scores must have shape (rows, 1 + negatives) = {expected}, got {tuple(labels.shape)}"
            )
        if not torch.isfinite(labels).all():
            raise ValueError(f"{name}: teacher scores contain NaN or inf")
        return labels

    def term_for_rows(self, view: InBatchView, scores: Tensor | None, begin: int, end: int) -> Tensor:
        if scores is None:
            return torch.zeros((), device=view.queries.device)
        rows = view.rows(begin, end)
        queries = view.queries[rows]
        own = torch.stack([(queries * column[rows]).sum(dim=-1) for column in view.docs], dim=1)
        squared = ((own - scores[begin:end]) ** 2).sum() / scores.size(1)
        return self.config.score_distillation_weight * squared * view.row_weight


__all__ = ["ScoreDistillationConfig", "ScoreDistillationLoss"]
