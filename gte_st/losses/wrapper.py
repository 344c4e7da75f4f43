"""The base of a loss that wraps another loss: adds a term computed from the same batch, or filters its negatives."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sentence_transformers.base.losses.gradcache import uses_gradient_cache
from torch import Tensor, nn

from gte_st.losses.in_batch import InBatchLoss, InBatchView


class LossWrapper(InBatchLoss):
    """``loss + term`` (or ``loss`` on a filtered view): wraps a loss (gte-st's :class:`~gte_st.losses.NormalizedMSELoss`, another term, or any
    sentence-transformers loss with ``compute_loss_from_embeddings``, e.g. ``MultipleNegativesRankingLoss``) and adds
    a term computed from the same embeddings, in the manner of sentence-transformers' ``MatryoshkaLoss``.

    Wrapping a gte-st :class:`~gte_st.losses.in_batch.InBatchLoss`, the term reads the same
    :class:`~gte_st.losses.in_batch.InBatchView` (same normalisation, gathering, duplicate masking and false-negative
    filters) and the composition is computed row chunk by row chunk, so :class:`~gte_st.losses.CachedLoss` bounds
    its memory. Wrapping another loss, the term builds its own view (gathered when the wrapped loss gathers) and the
    composition is computed whole.

    A subclass has a ``config_class`` (a dataclass with ``validate()``) and implements :meth:`term_for_rows` (the
    *weighted* term of local rows [begin, end), normalised like :meth:`InBatchLoss.loss_for_rows`) and, where it
    needs them, :meth:`term_context` and :meth:`term_state`; a subclass that changes which candidates are negatives
    (:class:`~gte_st.losses.FalseNegativeFilterLoss`) overrides :meth:`build_view` instead and adds no term.
    """

    config_class: type

    def __init__(self, model: nn.Module | None, loss: nn.Module, config: Any) -> None:
        super().__init__()
        name = type(self).__name__
        if uses_gradient_cache(loss):
            raise ValueError(
                f"{name} wraps a loss before gradient caching: use CachedLoss(model, {name}(model, loss)), "
                f"not {name}(model, {type(loss).__name__}(...))"
            )
        if not isinstance(loss, InBatchLoss) and not hasattr(loss, "compute_loss_from_embeddings"):
            raise ValueError(f"{name} needs a loss computed from embeddings, got {type(loss).__name__}")
        if getattr(loss, "model", None) is not model:
            raise ValueError(f"{name}: model must be the model of the wrapped {type(loss).__name__}")
        config.validate()
        self.config = config
        self.model = model
        self.loss = loss

    @property
    def composable(self) -> bool:
        """Whether the wrapped loss reads the shared in-batch view."""
        return isinstance(self.loss, InBatchLoss)

    @property
    def gather_across_devices(self) -> bool:  # noqa: D102
        return bool(getattr(self.loss, "gather_across_devices", False))

    @property
    def mask_duplicates(self) -> bool:  # noqa: D102
        return self.loss.mask_duplicates if self.composable else False

    @property
    def chunkable(self) -> bool:  # noqa: D102
        return self.composable and self.loss.chunkable

    def batch_context(self, sentence_features: list[dict[str, Tensor]], chunk_size: int | None = None) -> dict:
        context = (
            self.loss.batch_context(sentence_features, chunk_size)
            if self.composable
            else super().batch_context(sentence_features, chunk_size)
        )
        own = self.term_context(sentence_features, chunk_size)
        if shared := sorted(set(own) & set(context)):
            raise ValueError(f"{type(self).__name__}: two pieces of the composition both provide {shared}")
        return {**context, **own}

    def build_view(self, embeddings: list[Tensor], context: dict) -> InBatchView:
        return (
            self.loss.build_view(embeddings, context) if self.composable else super().build_view(embeddings, context)
        )

    def prepare(
        self, view: InBatchView, labels: Tensor | None, context: dict, chunk_size: int | None = None
    ) -> tuple[Any, Any]:
        inner = self.loss.prepare(view, labels, context, chunk_size) if self.composable else None
        return inner, self.term_state(view, labels, context, chunk_size)

    def loss_for_rows(self, view: InBatchView, state: tuple[Any, Any], begin: int, end: int) -> Tensor:
        inner, own = state
        value = self.loss.loss_for_rows(view, inner, begin, end)
        term = self.term_for_rows(view, own, begin, end)
        return value if term is None else value + term

    def compute_loss_from_embeddings(
        self, embeddings: list[Tensor], labels: Tensor | None = None, context: dict | None = None
    ) -> Tensor:
        if self.composable:
            return super().compute_loss_from_embeddings(embeddings, labels, context)
        context = context or {}
        value = self.loss.compute_loss_from_embeddings(embeddings, labels)
        view = self.build_view(embeddings, context)
        term = self.term_for_rows(view, self.term_state(view, labels, context), 0, view.local_size)
        return value if term is None else value + term

    def term_context(self, sentence_features: list[dict[str, Tensor]], chunk_size: int | None) -> dict:
        """This term's share of :meth:`batch_context` (keys of its own)."""
        return {}

    def term_state(
        self, view: InBatchView, labels: Tensor | None, context: dict, chunk_size: int | None = None
    ) -> Any:
        """This term's share of :meth:`prepare`."""
        return None

    def term_for_rows(self, view: InBatchView, state: Any, begin: int, end: int) -> Tensor | None:
        """The weighted term of local rows [begin, end); None: no term."""
        return None

    def get_config_dict(self) -> dict[str, Any]:
        return {"loss": type(self.loss).__name__, **asdict(self.config)}

    @property
    def term_citation(self) -> str:
        """The citation of this term (added to the wrapped loss's)."""
        return ""

    @property
    def citation(self) -> str:
        return (getattr(self.loss, "citation", None) or "") + self.term_citation


__all__ = ["LossWrapper"]
