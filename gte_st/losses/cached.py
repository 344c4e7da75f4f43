"""Any loss computed from embeddings, computed with gradient caching (GradCache)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.gradcache import (
    CachedLossMixin,
    _validate_mini_batch_num_tokens,
    has_static_embedding_input,
    uses_gradient_cache,
)
from torch import Tensor, nn

from gte_st.losses.in_batch import InBatchLoss, validate_sentence_features


@dataclass
class CachedBatch:
    """What :meth:`CachedLoss.forward` knows about a batch besides its embeddings (the labels and the wrapped loss's
    :meth:`~gte_st.losses.in_batch.InBatchLoss.batch_context`). It travels to ``calculate_loss`` through
    ``CachedLossMixin.forward_cached``'s ``labels`` argument, so no per-batch state is kept on the loss."""

    labels: Tensor | None
    context: dict


@dataclass
class CachedConfig:
    """The options of :class:`CachedLoss`, checked by :meth:`validate` without a model."""

    mini_batch_size: int = 32
    mini_batch_num_tokens: int | None = None

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the first option whose value the loss cannot use."""
        if not (isinstance(self.mini_batch_size, int) and self.mini_batch_size >= 1):
            raise ValueError(f"mini_batch_size must be an integer >= 1, got {self.mini_batch_size}")
        _validate_mini_batch_num_tokens(self.mini_batch_num_tokens)


class CachedLoss(CachedLossMixin, nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        loss: nn.Module,
        mini_batch_size: int = 32,
        mini_batch_num_tokens: int | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        """
        ``loss`` computed with gradient caching (Gao et al., 2021), so that the batch -- and with it the number of
        in-batch negatives -- can grow far beyond what fits in memory at once. ``loss`` is any gte-st in-batch loss
        or composition (:class:`~gte_st.losses.NormalizedMSELoss` and the terms wrapping it), or any loss with
        ``compute_loss_from_embeddings`` (e.g. a term wrapped around sentence-transformers'
        ``MultipleNegativesRankingLoss``).

        Built on sentence-transformers' ``CachedLossMixin`` (the machinery behind
        ``CachedMultipleNegativesRankingLoss``): (1) embed every mini-batch without a graph (and compute the wrapped
        loss's batch context, e.g. a frozen teacher's embeddings, ``mini_batch_size`` rows at a time), (2) compute
        the loss over the whole batch and back-propagate it to the embeddings only -- for a gte-st composition
        chunked over ``mini_batch_size`` anchor rows, so the similarity matrix is never materialised whole -- and
        (3) re-embed each mini-batch with a graph and push the cached embedding gradients through it. Loss and
        gradients equal the uncached loss's (up to float rounding); peak memory depends on ``mini_batch_size``, not
        on the batch size. sentence-transformers' ``MatryoshkaLoss`` wraps it as it wraps its own cached losses.

        Args:
            model: The SentenceTransformer model (the wrapped loss's).
            loss: The loss to compute with gradient caching.
            mini_batch_size: Rows embedded (and loss rows computed) at once; bounds memory. Default 32.
            mini_batch_num_tokens: Optionally pack embedding mini-batches by non-padding token count instead.
            show_progress_bar: Show progress bars over the mini-batches.

        References:
            - Gao et al., *Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup*, 2021:
              https://huggingface.co/papers/2101.06983

        Example:
            ::

                import gte_st

                model = gte_st.build_model()
                loss = gte_st.losses.CachedLoss(model, gte_st.losses.NormalizedMSELoss(model), mini_batch_size=32)
                # use with per_device_train_batch_size=1024 in SentenceTransformerTrainingArguments
        """
        super().__init__()
        name = type(self).__name__
        if has_static_embedding_input(model):
            raise ValueError(f"{name} cannot mini-batch a StaticEmbedding model; use the loss uncached.")
        if uses_gradient_cache(loss):
            raise ValueError(f"{name}: {type(loss).__name__} already uses gradient caching")
        if getattr(loss, "model", None) is not model:
            raise ValueError(f"{name}: model must be the model of the wrapped {type(loss).__name__}")
        if not isinstance(loss, InBatchLoss) and not hasattr(loss, "compute_loss_from_embeddings"):
            raise ValueError(f"{name} needs a loss computed from embeddings, got {type(loss).__name__}")
        self.config = CachedConfig(mini_batch_size, mini_batch_num_tokens)
        self.config.validate()
        self.model = model
        self.loss = loss
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        validate_sentence_features(sentence_features, type(self).__name__)
        context = (
            self.loss.batch_context(sentence_features, chunk_size=self.mini_batch_size)
            if isinstance(self.loss, InBatchLoss)
            else {}
        )
        return self.forward_cached(sentence_features, CachedBatch(labels, context))

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: CachedBatch | Tensor | None = None, *, with_backward: bool = False
    ) -> Tensor:
        batch = labels if isinstance(labels, CachedBatch) else CachedBatch(labels, {})
        embeddings = [torch.cat(column) for column in reps]
        if not (isinstance(self.loss, InBatchLoss) and self.loss.chunkable):
            if isinstance(self.loss, InBatchLoss):
                total = self.loss.compute_loss_from_embeddings(embeddings, batch.labels, batch.context)
            else:
                total = self.loss.compute_loss_from_embeddings(embeddings, batch.labels)
            if with_backward:
                total.backward()
                total = total.detach()
            return total
        loss = self.loss
        view = loss.build_view(embeddings, batch.context)
        state = loss.prepare(view, batch.labels, batch.context, self.mini_batch_size)
        # Chunks are computed on detached copies; their gradients are then pushed through the normalisation
        # (and the cross-rank gather) in one backward call.
        leaves = view.detached() if with_backward else view
        total = torch.zeros((), device=view.queries.device)
        for begin in range(0, view.local_size, self.mini_batch_size):
            end = min(begin + self.mini_batch_size, view.local_size)
            chunk = loss.loss_for_rows(leaves, state, begin, end)
            if with_backward:
                chunk.backward()
                chunk = chunk.detach()
            total = total + chunk
        if with_backward:
            pairs = [(t, leaf.grad) for t, leaf in zip(view.tensors(), leaves.tensors()) if leaf.grad is not None]
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        return total

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "loss": type(self.loss).__name__,
            "mini_batch_size": self.mini_batch_size,
            "mini_batch_num_tokens": self.mini_batch_num_tokens,
        }

    @property
    def citation(self) -> str:
        return (
            (getattr(self.loss, "citation", None) or "")
            + """
@misc{gao2021scaling,
    title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
    author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
    year={2021},
    eprint={2101.06983},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}
"""
        )


__all__ = ["CachedBatch", "CachedConfig", "CachedLoss"]
