"""False-negative filtering: in-batch and hard negatives too close to the positive are not negatives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor

from gte_st.losses.frozen import FrozenEmbeddings, frozen_name, load_frozen, same_vocabulary
from gte_st.losses.in_batch import Direction, InBatchLoss, InBatchView
from gte_st.losses.wrapper import LossWrapper

STRATEGIES = ("absolute", "relative")
GUIDE_CONTEXT = "guide_embeddings"


@dataclass
class FalseNegativeFilterConfig:
    """The options of :class:`FalseNegativeFilterLoss`, checked by :meth:`validate` without a model. ``guide`` is a
    path or Hub id here (the loss also takes a model)."""

    false_negative_margin: float = 0.0
    false_negative_strategy: Literal["absolute", "relative"] = "absolute"
    guide: str | None = None

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the first option whose value the filter cannot use."""
        if self.false_negative_strategy not in STRATEGIES:
            raise ValueError(
                f"false_negative_strategy must be one of {STRATEGIES}, got {self.false_negative_strategy!r}"
            )
        margin = self.false_negative_margin
        if self.false_negative_strategy == "absolute" and not -2.0 <= margin <= 2.0:
            raise ValueError(f"false_negative_margin (absolute) must be a cosine difference in [-2, 2], got {margin}")
        if self.false_negative_strategy == "relative" and not 0.0 <= margin <= 1.0:
            raise ValueError(f"false_negative_margin (relative) must be a fraction in [0, 1], got {margin}")
        if self.guide is not None and not isinstance(self.guide, str):
            raise ValueError(f"guide must be a model path or Hub id, got {self.guide!r}")


class PositiveAwareThreshold:
    """The rule of :class:`FalseNegativeFilterLoss` for one batch: which candidates of a direction to drop, judged
    by the similarities of ``source`` (the guide's view), or of the view being filtered when ``source`` is None."""

    def __init__(self, margin: float, strategy: str, source: InBatchView | None = None) -> None:
        self.margin, self.strategy, self.source = margin, strategy, source

    def __call__(self, view: InBatchView, direction: Direction, begin: int, end: int) -> Tensor:
        judge = self.source if self.source is not None else view
        with torch.no_grad():
            rows = judge.rows(begin, end)
            own = (judge.queries if direction == "anchor" else judge.docs[0])[rows].detach()
            positive = (judge.queries[rows] * judge.docs[0][rows]).sum(dim=-1).detach()
            similarity = own @ judge.candidates(direction).detach().T
            if self.strategy == "absolute":
                threshold = positive - self.margin
            else:
                threshold = positive - positive.abs() * self.margin
            return similarity > threshold.unsqueeze(1)


class FalseNegativeFilterLoss(LossWrapper):
    config_class = FalseNegativeFilterConfig

    def __init__(
        self,
        model: SentenceTransformer | None,
        loss: InBatchLoss,
        false_negative_margin: float = 0.0,
        false_negative_strategy: Literal["absolute", "relative"] = "absolute",
        guide: SentenceTransformer | str | None = None,
    ) -> None:
        r"""
        ``loss`` computed without its likely false negatives: a candidate n (another row's positive, any hard
        negative, or -- with ``symmetric`` -- another anchor) is no negative of row i when its similarity to the
        row's anchor comes too close to the positive's,

        .. math::

            s(q_i, n) > s(q_i, d_i) - m \quad\text{(``absolute'')}
            \qquad\text{or}\qquad
            s(q_i, n) > s(q_i, d_i) - |s(q_i, d_i)|\,m \quad\text{(``relative'')}

        where :math:`s` is the cosine of the student's own embeddings (positive-aware margin, NV-Retriever), or of a
        frozen ``guide`` model's (GISTEmbed) when one is given. For the symmetric direction the row's positive takes
        the anchor's place. ``relative`` with :math:`m = 0.05` drops negatives scoring above 95% of a positive score
        (NV-Retriever's TopK-PercPos); ``absolute`` with :math:`m = 0` drops those scoring above the positive
        (GISTEmbed's default). The decision is a constant (no gradient flows through it); the dropped candidates
        leave every piece that reads the in-batch view (the wrapped loss's negatives, its InfoNCE weights and negative
        counts, and a :class:`~gte_st.losses.UniformityLoss` around it).

        Reason: in-batch and mined negatives contain texts that are in fact relevant (SciFact claims citing several
        abstracts; paraphrases in STS-style pairs); pushing them away teaches the model wrong distances.

        Args:
            model: The SentenceTransformer model (the wrapped loss's).
            loss: A gte-st in-batch loss (:class:`~gte_st.losses.NormalizedMSELoss`, or a composition around it).
            false_negative_margin: :math:`m`. Default 0.
            false_negative_strategy: ``"absolute"`` (default) or ``"relative"``.
            guide: A frozen guide model (a model, or a path/Hub id to load) whose similarities decide; it must share
                the model's tokenizer (the batch's token ids are embedded by both). Default: the student's own
                similarities.

        References:
            - Moreira et al., *NV-Retriever: Improving text embedding models with effective hard-negative mining*,
              2024: https://arxiv.org/abs/2407.15831 (positive-aware margins)
            - Solatorio, *GISTEmbed: Guided In-sample Selection of Training Negatives for Text Embedding
              Fine-tuning*, 2024: https://arxiv.org/abs/2402.16829 (a guide model)

        Example:
            ::

                import gte_st

                model = gte_st.build_model()
                loss = gte_st.losses.FalseNegativeFilterLoss(
                    model, gte_st.losses.NormalizedMSELoss(model), false_negative_margin=0.05,
                    false_negative_strategy="relative",
                )
        """
        if not isinstance(loss, InBatchLoss):
            raise ValueError(
                f"{type(self).__name__} filters the negatives of a gte-st in-batch loss (NormalizedMSELoss), got "
                f"{type(loss).__name__}; sentence-transformers' GISTEmbedLoss filters MultipleNegativesRankingLoss's"
            )
        label = None if guide is None else frozen_name(guide)
        super().__init__(model, loss, FalseNegativeFilterConfig(false_negative_margin, false_negative_strategy, label))
        self.guide = None
        if guide is not None:
            self.guide = load_frozen(guide, device=getattr(model, "device", None))
            if model is not None and not same_vocabulary(model, self.guide):
                raise ValueError(
                    f"{type(self).__name__}: the guide model {label} has another tokenizer than the model (its "
                    "vocabulary differs); the guide embeds the batch's token ids, so it must share the tokenizer"
                )
            self._guide_embeddings = FrozenEmbeddings()

    def term_context(self, sentence_features: list[dict[str, Tensor]], chunk_size: int | None) -> dict:
        if self.guide is None:
            return {}
        return {GUIDE_CONTEXT: self._guide_embeddings(self.guide, sentence_features, chunk_size)}

    def build_view(self, embeddings: list[Tensor], context: dict) -> InBatchView:
        view = self.loss.build_view(embeddings, context)
        source = None
        if self.guide is not None:
            if GUIDE_CONTEXT not in context:
                raise ValueError(f"{type(self).__name__} needs the guide's embeddings (its batch_context)")
            with torch.no_grad():
                source = InBatchView.build(
                    context[GUIDE_CONTEXT], None, self.gather_across_devices, type(self).__name__
                )
        config = self.config
        view.negative_filters.append(
            PositiveAwareThreshold(config.false_negative_margin, config.false_negative_strategy, source)
        )
        return view

    @property
    def term_citation(self) -> str:
        return """
@misc{moreira2024nvretriever,
    title={NV-Retriever: Improving text embedding models with effective hard-negative mining},
    author={Gabriel de Souza P. Moreira and Radek Osmulski and Mengyao Xu and Ronay Ak and Benedikt Schifferer and Even Oldridge},
    year={2024},
    eprint={2407.15831},
    archivePrefix={arXiv},
}
@misc{solatorio2024gistembed,
    title={GISTEmbed: Guided In-sample Selection of Training Negatives for Text Embedding Fine-tuning},
    author={Aivin V. Solatorio},
    year={2024},
    eprint={2402.16829},
    archivePrefix={arXiv},
}
"""


__all__ = ["FalseNegativeFilterConfig", "FalseNegativeFilterLoss", "PositiveAwareThreshold"]
