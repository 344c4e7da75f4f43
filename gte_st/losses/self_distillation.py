"""Self-distillation to a frozen teacher (by default the model as it was when training started)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from gte_st.losses.frozen import FrozenEmbeddings, frozen_copy, frozen_name, load_frozen
from gte_st.losses.in_batch import InBatchView
from gte_st.losses.wrapper import LossWrapper

DISTILLATION_TARGETS = ("similarities", "embeddings")
TEACHER_CONTEXT = "teacher_embeddings"


@dataclass
class SelfDistillationConfig:
    """The options of :class:`SelfDistillationLoss`, checked by :meth:`validate` without a model. ``teacher`` is a
    path or Hub id here (the loss also takes a model)."""

    distillation_weight: float = 1.0
    distillation_target: Literal["similarities", "embeddings"] = "similarities"
    teacher: str | None = None

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the first option whose value the term cannot use."""
        if not self.distillation_weight >= 0:
            raise ValueError(f"distillation_weight must be >= 0, got {self.distillation_weight}")
        if self.distillation_target not in DISTILLATION_TARGETS:
            raise ValueError(
                f"distillation_target must be one of {DISTILLATION_TARGETS}, got {self.distillation_target!r}"
            )
        if self.teacher is not None and not isinstance(self.teacher, str):
            raise ValueError(f"teacher must be a model path or Hub id, got {self.teacher!r}")


class SelfDistillationLoss(LossWrapper):
    config_class = SelfDistillationConfig

    def __init__(
        self,
        model: SentenceTransformer,
        loss: nn.Module,
        distillation_weight: float = 1.0,
        distillation_target: Literal["similarities", "embeddings"] = "similarities",
        teacher: SentenceTransformer | str | None = None,
    ) -> None:
        r"""
        ``loss`` plus :math:`\delta` times the MSE between the student's and a frozen teacher's in-batch geometry:

        .. math::

            \mathcal L = \mathcal L_{\text{loss}} + \frac{\delta}{B\,N}\sum_i\sum_{c}
              \big(\cos(\hat q_i, \hat c) - \cos(\hat q^T_i, \hat c^T)\big)^2
              \quad\text{(``similarities'', default)}

        over each anchor :math:`\hat q_i` and every candidate :math:`\hat c` of the (gathered) batch -- the positives
        and the hard negatives, N of them, :math:`{}^T` marking the teacher's embeddings -- or, with
        ``distillation_target="embeddings"``, :math:`\frac{\delta}{B\,K}\sum_i\sum_{k}\lVert \hat e_{ik} -
        \hat e^T_{ik}\rVert^2` over the normalised embeddings of all K columns (equal dimensions needed; under
        ``MatryoshkaLoss`` the teacher is truncated like the student).

        Reason: short fine-tuning on a narrow domain loses general quality (e.g. STS); staying close to the base
        model's geometry keeps it. The embedded default job (``gte-st train``) uses it with :math:`\delta = 30`.

        Args:
            model: The SentenceTransformer model (the wrapped loss's).
            loss: The in-batch loss to add the term to (any loss with ``compute_loss_from_embeddings``).
            distillation_weight: :math:`\delta`. Default 1.
            distillation_target: ``"similarities"`` (default) or ``"embeddings"``.
            teacher: The frozen teacher: a model, or a path/Hub id to load; default a frozen copy of ``model`` as it
                is when the loss is built.

        References:
            - Hinton et al., *Distilling the Knowledge in a Neural Network*, 2015: https://arxiv.org/abs/1503.02531
            - Reimers & Gurevych, *Making Monolingual Sentence Embeddings Multilingual using Knowledge
              Distillation*, 2020: https://arxiv.org/abs/2004.09813 (an MSE to a teacher's embeddings)

        Example:
            ::

                import gte_st

                model = gte_st.build_model()
                loss = gte_st.losses.SelfDistillationLoss(
                    model, gte_st.losses.NormalizedMSELoss(model), distillation_weight=30.0
                )
        """
        label = None if teacher is None else frozen_name(teacher)
        super().__init__(model, loss, SelfDistillationConfig(distillation_weight, distillation_target, label))
        if teacher is None:
            teacher_model = frozen_copy(model)
            self.teacher_label = "frozen copy of the initial model"
        else:
            teacher_model = load_frozen(teacher, device=getattr(model, "device", None))
            self.teacher_label = label
        self.teacher = teacher_model
        self._teacher_embeddings = FrozenEmbeddings()

    def term_context(self, sentence_features: list[dict[str, Tensor]], chunk_size: int | None) -> dict:
        return {TEACHER_CONTEXT: self._teacher_embeddings(self.teacher, sentence_features, chunk_size)}

    def term_state(
        self, view: InBatchView, labels: Tensor | None, context: dict, chunk_size: int | None = None
    ) -> InBatchView:
        """The teacher's view, gathered the same way as the student's, without a graph."""
        if TEACHER_CONTEXT not in context:
            raise ValueError(f"{type(self).__name__} needs the teacher's embeddings (its batch_context)")
        teacher = context[TEACHER_CONTEXT]
        student_dim, teacher_dim = view.queries.size(-1), teacher[0].size(-1)
        if self.config.distillation_target == "embeddings" and student_dim < teacher_dim == self._full_dimension():
            teacher = [F.normalize(t[..., :student_dim].float(), dim=-1) for t in teacher]  # a Matryoshka dimension
        with torch.no_grad():
            return InBatchView.build(teacher, None, self.gather_across_devices, type(self).__name__)

    def _full_dimension(self) -> int | None:
        model = getattr(self.model, "module", self.model)  # DDP
        get = getattr(model, "get_sentence_embedding_dimension", None)
        return get() if get is not None else None

    def term_for_rows(self, view: InBatchView, teacher: InBatchView, begin: int, end: int) -> Tensor:
        """Sum over the rows of the squared student-teacher difference, divided by the global number of terms."""
        rows = view.rows(begin, end)
        total_rows = view.local_size * view.world_size
        if self.config.distillation_target == "similarities":
            candidates, _ = view.forward_candidates()
            teacher_candidates, _ = teacher.forward_candidates()
            student = view.queries[rows] @ candidates.T
            target = teacher.queries[rows] @ teacher_candidates.T
            squared = ((student - target) ** 2).sum() / (total_rows * candidates.size(0))
        else:
            pairs = list(zip(view.tensors(), teacher.tensors()))
            if pairs[0][0].size(-1) != pairs[0][1].size(-1):
                raise ValueError(
                    f"distillation_target='embeddings' needs equal dimensions, got student {pairs[0][0].size(-1)} "
                    f"and teacher {pairs[0][1].size(-1)}; use 'similarities'"
                )
            squared = sum(((student[rows] - target[rows]) ** 2).sum() for student, target in pairs)
            squared = squared / (total_rows * len(pairs))
        return self.config.distillation_weight * squared * view.world_size

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "teacher": self.teacher_label}


__all__ = ["DISTILLATION_TARGETS", "SelfDistillationConfig", "SelfDistillationLoss"]
