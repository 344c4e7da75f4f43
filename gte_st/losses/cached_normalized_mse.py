"""Normalised MSE with in-batch negatives, computed with gradient caching (GradCache)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.gradcache import (
    CachedLossMixin,
    _validate_mini_batch_num_tokens,
    has_static_embedding_input,
)
from torch import Tensor, nn

from gte_st.losses.normalized_mse import (
    NormalizedMSELoss,
    text_fingerprints,
    validate_sentence_features,
)


@dataclass
class CachedBatch:
    """What :meth:`CachedNormalizedMSELoss.forward` knows about a batch besides its embeddings. It travels to
    ``calculate_loss`` through ``CachedLossMixin.forward_cached``'s ``labels`` argument, so no per-batch state is
    kept on the loss between the two calls."""

    labels: Tensor | None
    fingerprints: list[Tensor] | None
    teacher_embeddings: list[Tensor] | None


class CachedNormalizedMSELoss(CachedLossMixin, nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        margin: float = -1.0,
        negative_weight: float = 2.0,
        symmetric: bool = False,
        gather_across_devices: bool = False,
        mask_duplicates: bool = True,
        weighting: Literal["mean", "hardness", "infonce"] = "infonce",
        temperature: float = 0.05,
        detach_weights: bool = True,
        negative_penalty: Literal["squared_hinge", "hinge"] = "hinge",
        positive_margin: float = 1.0,
        uniformity_weight: float = 0.0,
        uniformity_t: float = 2.0,
        distillation_weight: float = 0.0,
        distillation_target: Literal["similarities", "embeddings"] = "similarities",
        teacher: SentenceTransformer | str | None = None,
        score_distillation_weight: float = 0.0,
        mini_batch_size: int = 32,
        mini_batch_num_tokens: int | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        """
        :class:`NormalizedMSELoss` computed with gradient caching (Gao et al., 2021), so that the batch -- and with it
        the number of in-batch negatives -- can grow far beyond what fits in memory at once.

        Built on sentence-transformers' ``CachedLossMixin`` (the machinery behind
        ``CachedMultipleNegativesRankingLoss``): (1) embed every mini-batch without a graph (and, with
        distillation, the teacher's embeddings), (2) compute the loss over the whole batch and back-propagate it to
        the embeddings only, chunked over ``mini_batch_size`` anchor rows so the similarity matrix is never
        materialised whole, (3) re-embed each mini-batch with a graph and push the cached embedding gradients
        through it. Loss and gradients equal the uncached loss (up to float rounding); peak memory depends on
        ``mini_batch_size``, not on the batch size.

        Args:
            model: The SentenceTransformer model.
            margin, negative_weight, symmetric, gather_across_devices, mask_duplicates, weighting, temperature,
                detach_weights, negative_penalty, positive_margin, uniformity_weight, uniformity_t,
                distillation_weight, distillation_target, teacher, score_distillation_weight: As in
                :class:`NormalizedMSELoss`.
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
                loss = gte_st.losses.CachedNormalizedMSELoss(model, mini_batch_size=32)
                # use with per_device_train_batch_size=1024 in SentenceTransformerTrainingArguments
        """
        super().__init__()
        if has_static_embedding_input(model):
            raise ValueError(
                f"{type(self).__name__} cannot mini-batch a StaticEmbedding model; use NormalizedMSELoss."
            )
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
        _validate_mini_batch_num_tokens(mini_batch_num_tokens)
        self.model = model
        self.loss = NormalizedMSELoss(
            model,
            margin=margin,
            negative_weight=negative_weight,
            symmetric=symmetric,
            gather_across_devices=gather_across_devices,
            mask_duplicates=mask_duplicates,
            weighting=weighting,
            temperature=temperature,
            detach_weights=detach_weights,
            negative_penalty=negative_penalty,
            positive_margin=positive_margin,
            uniformity_weight=uniformity_weight,
            uniformity_t=uniformity_t,
            distillation_weight=distillation_weight,
            distillation_target=distillation_target,
            teacher=teacher,
            score_distillation_weight=score_distillation_weight,
        )
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        validate_sentence_features(sentence_features, type(self).__name__)
        fingerprints = [text_fingerprints(f) for f in sentence_features] if self.loss.mask_duplicates else None
        teacher = self.loss.teacher_embeddings(sentence_features, chunk_size=self.mini_batch_size)
        return self.forward_cached(sentence_features, CachedBatch(labels, fingerprints, teacher))

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: CachedBatch | Tensor | None = None, *, with_backward: bool = False
    ) -> Tensor:
        batch = labels if isinstance(labels, CachedBatch) else CachedBatch(labels, None, None)
        embeddings = [torch.cat(column) for column in reps]
        view, teacher = self.loss.build_views(embeddings, batch.fingerprints, batch.teacher_embeddings)
        counts = self.loss.negative_counts(view, self.mini_batch_size)
        scores = self.loss.teacher_scores(batch.labels, view)
        # Chunks are computed on detached copies; their gradients are then pushed through the normalisation
        # (and the cross-rank gather) in one backward call.
        leaves = view.detached() if with_backward else view
        total = torch.zeros((), device=view.queries.device)
        for begin in range(0, view.local_size, self.mini_batch_size):
            end = min(begin + self.mini_batch_size, view.local_size)
            chunk = self.loss.loss_for_rows(leaves, begin, end, counts, teacher, scores)
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
            **self.loss.get_config_dict(),
            "mini_batch_size": self.mini_batch_size,
            "mini_batch_num_tokens": self.mini_batch_num_tokens,
        }

    @property
    def citation(self) -> str:
        return (
            self.loss.citation
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
