"""The in-batch view of a batch, and the base class of the losses computed on it.

gte-st's in-batch losses and the pieces that wrap them (:mod:`~gte_st.losses.uniformity`,
:mod:`~gte_st.losses.self_distillation`, :mod:`~gte_st.losses.score_distillation`,
:mod:`~gte_st.losses.false_negatives`) share one protocol, :class:`InBatchLoss`, so that they compose and so that
:class:`~gte_st.losses.cached.CachedLoss` can compute any composition with gradient caching, one chunk of anchor rows
at a time:

1. :meth:`InBatchLoss.batch_context`: what the loss reads from the tokenised batch besides the student's embeddings
   (text fingerprints, a frozen model's embeddings), computed once, without a graph, before the student embeds it;
2. :meth:`InBatchLoss.build_view`: the :class:`InBatchView` -- L2-normalised, gathered across ranks when asked --
   that every piece of a composition reads, so they all see the same negatives;
3. :meth:`InBatchLoss.prepare`: whole-batch quantities without a graph (global negative counts, a teacher's view);
4. :meth:`InBatchLoss.loss_for_rows`: this rank's share of the loss from its local rows ``[begin, end)``; summed over
   row chunks it is the loss, averaged over ranks (DDP's gradient average) it is the loss of one process holding the
   gathered batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sentence_transformers.base.losses.gradcache import _get_batch_size
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.util import all_gather, all_gather_with_grad, get_rank, get_world_size
from sentence_transformers.util.environment import is_dist_initialized
from torch import Tensor, nn

Direction = Literal["anchor", "positive"]


class NonFiniteEmbeddingError(ValueError):
    """Raised when a batch produced NaN/inf embeddings: the loss (and every gradient) would be non-finite."""


def column_name(index: int) -> str:
    """Human name of an input column: ``anchor``, ``positive``, ``negative_1``, ..."""
    return {0: "anchor", 1: "positive"}.get(index, f"negative_{index - 1}")


def validate_sentence_features(sentence_features: list[dict[str, Any]], loss_name: str) -> int:
    """Check the column layout of a batch and return its (local) batch size.

    Raises a ``ValueError`` naming what is wrong: fewer than two columns, or columns of unequal length.
    """
    if len(sentence_features) < 2:
        raise ValueError(
            f"{loss_name} needs (anchor, positive[, negative_1, ..., negative_k]) columns, but the batch has "
            f"{len(sentence_features)} column(s). Check the dataset's columns (labels/score columns are not inputs)."
        )
    sizes = [_get_batch_size(features) for features in sentence_features]
    if len(set(sizes)) != 1:
        described = ", ".join(f"{column_name(i)}={size}" for i, size in enumerate(sizes))
        raise ValueError(f"{loss_name}: all input columns must have the same number of rows, got {described}.")
    return sizes[0]


def text_fingerprints(features: dict[str, Any]) -> Tensor:
    """One int64 fingerprint per row, from its (unpadded) token ids: equal texts get equal fingerprints.

    Python's hash of a tuple of ints is deterministic across processes, so fingerprints can be compared across ranks.
    """
    input_ids = features["input_ids"]
    if "cu_seq_lens_q" in features:
        flat = input_ids.reshape(-1).tolist()
        bounds = features["cu_seq_lens_q"].tolist()
        rows = [tuple(flat[begin:end]) for begin, end in zip(bounds[:-1], bounds[1:])]
    else:
        mask = features.get("attention_mask")
        ids = input_ids.tolist()
        if mask is None:
            rows = [tuple(row) for row in ids]
        else:
            rows = [tuple(t for t, m in zip(row, mask_row) if m) for row, mask_row in zip(ids, mask.tolist())]
    return torch.tensor([hash(row) for row in rows], dtype=torch.int64, device=input_ids.device)


# A rule that removes candidates from a direction's negatives: (view, direction, begin, end) -> bool mask of the
# candidates to drop for local rows [begin, end) (see gte_st.losses.false_negatives).
NegativeFilter = Callable[["InBatchView", Direction, int, int], Tensor]


@dataclass
class InBatchView:
    """The embeddings one rank sees: L2-normalised, gathered across ranks when asked, plus text fingerprints.

    ``queries`` and each of ``docs`` have ``world_size * local_size`` rows; this rank's rows start at ``offset``.
    ``docs[0]`` are the positives, ``docs[1:]`` the hard-negative columns. ``negative_filters`` remove further
    candidates from the negatives (false-negative filtering); every loss reading the view's masks sees them.
    """

    queries: Tensor
    docs: list[Tensor]
    query_fp: Tensor | None
    doc_fp: list[Tensor] | None
    offset: int
    local_size: int
    world_size: int
    negative_filters: list[NegativeFilter] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        embeddings: list[Tensor],
        fingerprints: list[Tensor] | None,
        gather_across_devices: bool,
        loss_name: str,
    ) -> InBatchView:
        for index, embedding in enumerate(embeddings):
            if not torch.isfinite(embedding).all():
                raise NonFiniteEmbeddingError(
                    f"{loss_name}: the {column_name(index)} column (column {index}) produced non-finite embeddings "
                    "(NaN or inf). Common causes: a learning rate that is too high, fp16 overflow (use bf16), or "
                    "corrupted weights."
                )
        normalized = [F.normalize(embedding.float(), p=2, dim=-1) for embedding in embeddings]
        local_size = normalized[0].size(0)
        offset, world_size = 0, 1
        if gather_across_devices and is_dist_initialized():
            # Autograd-aware gather: gradients of every rank's loss flow back to the rank that embedded the text.
            normalized = [all_gather_with_grad(embedding) for embedding in normalized]
            if fingerprints is not None:
                fingerprints = [all_gather(fp) for fp in fingerprints]
            offset, world_size = get_rank() * local_size, get_world_size()
        if normalized[0].size(0) < 2:
            raise ValueError(
                f"{loss_name} needs at least 2 (anchor, positive) pairs per batch for in-batch negatives, got "
                f"{normalized[0].size(0)}. Increase the batch size (or set drop_last so no final batch of 1 remains)."
            )
        return cls(
            queries=normalized[0],
            docs=normalized[1:],
            query_fp=None if fingerprints is None else fingerprints[0],
            doc_fp=None if fingerprints is None else fingerprints[1:],
            offset=offset,
            local_size=local_size,
            world_size=world_size,
        )

    def detached(self) -> InBatchView:
        """A copy whose embeddings are fresh leaves, so row chunks can be back-propagated one at a time."""
        return replace(
            self,
            queries=self.queries.detach().requires_grad_(),
            docs=[doc.detach().requires_grad_() for doc in self.docs],
            negative_filters=list(self.negative_filters),
        )

    def tensors(self) -> list[Tensor]:
        return [self.queries, *self.docs]

    @property
    def row_weight(self) -> float:
        """Weight of one row's term in this rank's share of the global mean over rows (see
        :meth:`InBatchLoss.loss_for_rows`): ``world_size / (local_size * world_size)``."""
        return self.world_size / (self.local_size * self.world_size)

    def rows(self, begin: int, end: int) -> Tensor:
        """Global row indices of the local rows [begin, end)."""
        return torch.arange(begin, end, device=self.queries.device) + self.offset

    def _valid(self, begin: int, end: int, candidate_fp: Tensor | None, num_candidates: int, own_block: int) -> Tensor:
        """Mask of valid negatives for local rows [begin, end): every candidate except the row's own pair and
        any candidate whose text equals the row's anchor or positive text."""
        rows = self.rows(begin, end)
        valid = torch.ones(end - begin, num_candidates, dtype=torch.bool, device=self.queries.device)
        valid[torch.arange(end - begin, device=valid.device), rows + own_block] = False
        if candidate_fp is not None:
            row_fp = torch.stack([self.query_fp[rows], self.doc_fp[0][rows]], dim=1)  # (rows, 2)
            same_text = (candidate_fp.view(1, -1, 1) == row_fp.unsqueeze(1)).any(dim=-1)
            valid &= ~same_text
        return valid

    def _filtered(self, valid: Tensor, direction: Direction, begin: int, end: int) -> Tensor:
        for drop in self.negative_filters:
            valid = valid & ~drop(self, direction, begin, end)
        return valid

    def forward_candidates(self) -> tuple[Tensor, Tensor | None]:
        """Negatives for anchors: every positive and every hard negative in the (global) batch."""
        fp = None if self.doc_fp is None else torch.cat(self.doc_fp)
        return torch.cat(self.docs), fp

    def candidates(self, direction: Direction) -> Tensor:
        """The candidates of a direction: :meth:`forward_candidates` for anchors, every anchor for positives."""
        return self.forward_candidates()[0] if direction == "anchor" else self.queries

    def anchor_negative_mask(self, begin: int, end: int) -> Tensor:
        """Which of :meth:`forward_candidates` are valid negatives of the anchors of local rows [begin, end)."""
        candidates, fp = self.forward_candidates()
        valid = self._valid(begin, end, fp, candidates.size(0), own_block=0)
        return self._filtered(valid, "anchor", begin, end)

    def positive_negative_mask(self, begin: int, end: int) -> Tensor:
        """Which anchors of the (global) batch are valid negatives of the positives of local rows [begin, end)
        (the symmetric, doc-to-query direction)."""
        valid = self._valid(begin, end, self.query_fp, self.queries.size(0), own_block=0)
        return self._filtered(valid, "positive", begin, end)

    def global_count(self, count: Tensor) -> Tensor:
        """Sum a count over ranks when the batch is gathered (so every rank normalises by the same total)."""
        if self.world_size > 1:
            count = count.clone()
            dist.all_reduce(count)
        return count


class InBatchLoss(nn.Module):
    """Base of a loss computed on the :class:`InBatchView` of a batch, in chunks of anchor rows (see the module
    docstring). Subclasses implement :meth:`loss_for_rows` and, where they need them, :meth:`batch_context`,
    :meth:`prepare` and :meth:`build_view`; ``forward`` and ``compute_loss_from_embeddings`` come from here.
    """

    model: nn.Module

    @property
    def gather_across_devices(self) -> bool:
        """Whether the view is gathered across ranks."""
        raise NotImplementedError

    @property
    def mask_duplicates(self) -> bool:
        """Whether candidates whose text equals a row's anchor or positive are masked (needs fingerprints)."""
        raise NotImplementedError

    @property
    def chunkable(self) -> bool:
        """Whether the whole composition is computed from the view row chunk by row chunk (every piece an
        :class:`InBatchLoss`); otherwise :class:`~gte_st.losses.cached.CachedLoss` computes it in one piece."""
        return True

    def batch_context(self, sentence_features: list[dict[str, Tensor]], chunk_size: int | None = None) -> dict:
        """What the loss reads from the tokenised batch besides the student's embeddings, without a graph, before
        the student embeds it (a frozen model runs ``chunk_size`` rows at a time). Keys are the pieces' own."""
        if not self.mask_duplicates:
            return {}
        return {"fingerprints": [text_fingerprints(features) for features in sentence_features]}

    def build_view(self, embeddings: list[Tensor], context: dict) -> InBatchView:
        """The view every piece of the composition reads."""
        return InBatchView.build(
            embeddings, context.get("fingerprints"), self.gather_across_devices, type(self).__name__
        )

    def prepare(self, view: InBatchView, labels: Tensor | None, context: dict, chunk_size: int | None = None) -> Any:
        """Whole-batch quantities, without a graph, that :meth:`loss_for_rows` needs (``chunk_size`` rows at a
        time where they are computed over the batch)."""
        return None

    def loss_for_rows(self, view: InBatchView, state: Any, begin: int, end: int) -> Tensor:
        """This rank's share of the loss from its local rows [begin, end): summed over row chunks it is the loss;
        under gathering, averaged over ranks (what DDP's gradient averaging computes) it is the loss of one process
        holding the whole gathered batch."""
        raise NotImplementedError

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        validate_sentence_features(sentence_features, type(self).__name__)
        context = self.batch_context(sentence_features)
        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, labels, context)

    def compute_loss_from_embeddings(
        self, embeddings: list[Tensor], labels: Tensor | None = None, context: dict | None = None
    ) -> Tensor:
        """The loss from per-column embeddings (anchor, positive, negatives...) and the batch context
        (:meth:`batch_context`; without it, no duplicate masking and no frozen-model terms)."""
        context = context or {}
        view = self.build_view(embeddings, context)
        return self.loss_for_rows(view, self.prepare(view, labels, context), 0, view.local_size)


__all__ = [
    "InBatchLoss",
    "InBatchView",
    "NegativeFilter",
    "NonFiniteEmbeddingError",
    "column_name",
    "text_fingerprints",
    "validate_sentence_features",
]
