"""The empty in-batch loss: the base a wrapper's term trains alone on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from gte_st.losses.in_batch import InBatchLoss, InBatchView


@dataclass
class ZeroConfig:
    """:class:`ZeroLoss` has no options."""

    def validate(self) -> None:
        """Nothing to check."""


class ZeroLoss(InBatchLoss):
    config_class = ZeroConfig

    def __init__(self, model: nn.Module) -> None:
        r"""
        The loss that is always 0: :math:`\mathcal L = 0` for every batch, so that a wrapper's term is the whole
        objective, e.g. ``SelfDistillationLoss(model, ZeroLoss(model))`` trains only to keep the frozen teacher's
        in-batch similarities.

        Reason: replay batches of general pairs can be trained to *keep* the base model's geometry on general text
        (``--replay_objective distillation``) rather than to learn those pairs' contrastive task again, which moves
        the model on them too (Li & Hoiem's Learning without Forgetting, with general text as the distillation data).

        Args:
            model: The SentenceTransformer model the wrapper trains.

        References:
            - Li & Hoiem, *Learning without Forgetting*, 2016: https://arxiv.org/abs/1606.09282

        Example:
            ::

                import gte_st

                model = gte_st.build_model()
                keep = gte_st.losses.SelfDistillationLoss(model, gte_st.losses.ZeroLoss(model), distillation_weight=10.0)
        """
        super().__init__()
        self.model = model
        self.config = ZeroConfig()

    @property
    def gather_across_devices(self) -> bool:  # noqa: D102
        return False

    @property
    def mask_duplicates(self) -> bool:  # noqa: D102
        return False

    def loss_for_rows(self, view: InBatchView, state: Any, begin: int, end: int) -> Tensor:
        return view.queries.new_zeros(())

    def get_config_dict(self) -> dict[str, Any]:
        return {}


__all__ = ["ZeroConfig", "ZeroLoss"]
