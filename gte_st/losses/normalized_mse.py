"""Normalised MSE with in-batch negatives: the gte-st training objective."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.gradcache import _get_batch_size
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.util import all_gather, all_gather_with_grad, get_rank, get_world_size
from sentence_transformers.util.environment import is_dist_initialized
from torch import Tensor, nn


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


@dataclass
class InBatchView:
    """The embeddings one rank sees: L2-normalised, gathered across ranks when asked, plus text fingerprints.

    ``queries`` and each of ``docs`` have ``world_size * local_size`` rows; this rank's rows start at ``offset``.
    ``docs[0]`` are the positives, ``docs[1:]`` the hard-negative columns.
    """

    queries: Tensor
    docs: list[Tensor]
    query_fp: Tensor | None
    doc_fp: list[Tensor] | None
    offset: int
    local_size: int
    world_size: int

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
        return InBatchView(
            queries=self.queries.detach().requires_grad_(),
            docs=[doc.detach().requires_grad_() for doc in self.docs],
            query_fp=self.query_fp,
            doc_fp=self.doc_fp,
            offset=self.offset,
            local_size=self.local_size,
            world_size=self.world_size,
        )

    def tensors(self) -> list[Tensor]:
        return [self.queries, *self.docs]

    def _valid(self, begin: int, end: int, candidate_fp: Tensor | None, num_candidates: int, own_block: int) -> Tensor:
        """Mask of valid negatives for local rows [begin, end): every candidate except the row's own pair and
        any candidate whose text equals the row's anchor or positive text."""
        rows = torch.arange(begin, end, device=self.queries.device) + self.offset
        valid = torch.ones(end - begin, num_candidates, dtype=torch.bool, device=self.queries.device)
        valid[torch.arange(end - begin, device=valid.device), rows + own_block] = False
        if candidate_fp is not None:
            row_fp = torch.stack([self.query_fp[rows], self.doc_fp[0][rows]], dim=1)  # (rows, 2)
            same_text = (candidate_fp.view(1, -1, 1) == row_fp.unsqueeze(1)).any(dim=-1)
            valid &= ~same_text
        return valid

    def forward_candidates(self) -> tuple[Tensor, Tensor | None]:
        """Negatives for anchors: every positive and every hard negative in the (global) batch."""
        fp = None if self.doc_fp is None else torch.cat(self.doc_fp)
        return torch.cat(self.docs), fp

    def forward_valid(self, begin: int, end: int) -> Tensor:
        candidates, fp = self.forward_candidates()
        return self._valid(begin, end, fp, candidates.size(0), own_block=0)

    def backward_valid(self, begin: int, end: int) -> Tensor:
        """Negatives for positives (symmetric direction): every other anchor in the (global) batch."""
        return self._valid(begin, end, self.query_fp, self.queries.size(0), own_block=0)

    def global_count(self, count: Tensor) -> Tensor:
        """Sum a count over ranks when the batch is gathered (so every rank normalises by the same total)."""
        if self.world_size > 1:
            count = count.clone()
            dist.all_reduce(count)
        return count


class NormalizedMSELoss(nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        margin: float = 0.3,
        negative_weight: float = 2048.0,
        symmetric: bool = False,
        gather_across_devices: bool = False,
        mask_duplicates: bool = True,
    ) -> None:
        r"""
        Normalised MSE with in-batch negatives. For a batch of B (anchor, positive[, negatives]) rows with
        L2-normalised embeddings :math:`\hat q_i, \hat d_i`:

        .. math::

            \mathcal{L} = \frac{1}{B}\sum_i \lVert \hat q_i - \hat d_i \rVert^2
              \;+\; w \cdot \frac{1}{|\mathcal N|}\sum_{(i,n)\in\mathcal N} \operatorname{relu}\big(\cos(\hat q_i, n) - m\big)^2

        The positive term is the MSE between unit vectors, :math:`\lVert \hat q - \hat d \rVert^2 = 2 - 2\cos`. The set
        :math:`\mathcal N` pairs every anchor with every *other* positive in the batch and with every hard negative
        in the batch (its own and the other rows'); a candidate whose text equals the anchor's or its positive's text
        is never a negative. Negatives are only penalised above the margin :math:`m`, quadratically.

        Why this loss: it works directly on the cosine geometry the model is used with (unit vectors, cosine
        scores), with bounded, smooth gradients and no softmax temperature to tune; the margin lets unrelated texts
        keep a small positive similarity instead of being forced to be orthogonal, and the mean over negatives keeps
        the loss scale independent of the batch size while a bigger batch still brings more (and harder) negatives.

        Args:
            model: The SentenceTransformer model.
            margin: Cosine similarity below which a negative is not penalised. Default 0.3.
            negative_weight: Weight :math:`w` of the negative term. Default 2048 (see below).
            symmetric: Also use every other *anchor* as a negative for each positive (the doc-to-query direction);
                the negative term is then the mean of the two directions. With pairs only, both directions cover
                the same set of (anchor, other positive) pairs, so the option changes the loss only when hard
                negatives are present (they are negatives in the anchor direction only).
            gather_across_devices: Under DDP/accelerate, take negatives from every rank's batch. Gradients flow back
                to every rank (autograd-aware all-gather); the loss is normalised by the global counts, so the
                averaged gradients equal those of one process holding the concatenated batch.
            mask_duplicates: Mask candidates whose text equals the anchor's or positive's text (compared by token
                ids), so a text appearing twice in the (global) batch is never a negative for its duplicate.

        Defaults, chosen by measurement (``scripts/sweep_loss_defaults.py``; train/dev data only, see
        ``docs/benchmarks.md``): because the negative term is a *mean* over all (anchor, negative) pairs, most of
        which sit below the margin, it needs a large weight to balance the positive term; with a small weight the
        positive term pulls every pair towards cosine 1 and the embedding space contracts (retrieval got worse than
        the base model). Dev scores rose steadily with the weight up to about 2048 at margin 0.3 and were flat
        beyond. With Adam-type optimisers only the ratio between the two terms matters, not the loss scale.

        References:
            - Li et al., *Towards General Text Embeddings with Multi-stage Contrastive Learning* (GTE), 2023:
              https://huggingface.co/papers/2308.03281 (in-batch negatives, batch size matters).

        Requirements:
            1. (anchor, positive) pairs or (anchor, positive, negative_1, ..., negative_k) tuples, no labels.
            2. Batches of at least 2 rows; use ``BatchSamplers.NO_DUPLICATES`` for the cleanest negatives.

        Inputs:
            +-------------------------------------------------+--------+
            | Texts                                           | Labels |
            +=================================================+========+
            | (anchor, positive) pairs                        | none   |
            +-------------------------------------------------+--------+
            | (anchor, positive, negative_1, ..., negative_k) | none   |
            +-------------------------------------------------+--------+

        Relations:
            - :class:`CachedNormalizedMSELoss` computes the same loss with gradient caching, for batches far beyond
              memory.
            - sentence-transformers' ``MultipleNegativesRankingLoss`` (InfoNCE) is the softmax-based alternative;
              with ``directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")`` it is the GTE
              paper's joint contrastive loss.

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformerTrainer
                import gte_st

                model = gte_st.build_model()
                train_dataset = Dataset.from_dict({
                    "anchor": ["It's nice weather outside today.", "He drove to work."],
                    "positive": ["It's so sunny.", "He took the car to the office."],
                })
                loss = gte_st.losses.NormalizedMSELoss(model)
                trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        super().__init__()
        if negative_weight < 0:
            raise ValueError(f"negative_weight must be >= 0, got {negative_weight}")
        if not -1.0 <= margin < 1.0:
            raise ValueError(f"margin must be a cosine similarity in [-1, 1), got {margin}")
        self.model = model
        self.margin = margin
        self.negative_weight = negative_weight
        self.symmetric = symmetric
        self.gather_across_devices = gather_across_devices
        self.mask_duplicates = mask_duplicates

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        validate_sentence_features(sentence_features, type(self).__name__)
        fingerprints = [text_fingerprints(f) for f in sentence_features] if self.mask_duplicates else None
        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, labels, fingerprints)

    def compute_loss_from_embeddings(
        self, embeddings: list[Tensor], labels: Tensor | None = None, fingerprints: list[Tensor] | None = None
    ) -> Tensor:
        """The loss from per-column embeddings (anchor, positive, negatives...), optionally with text fingerprints."""
        view = InBatchView.build(embeddings, fingerprints, self.gather_across_devices, type(self).__name__)
        counts = self.negative_counts(view)
        return self.loss_for_rows(view, 0, view.local_size, counts)

    def negative_counts(self, view: InBatchView, chunk_size: int | None = None) -> tuple[Tensor, Tensor | None]:
        """Global numbers of (anchor, negative) pairs per direction, counted ``chunk_size`` rows at a time."""
        chunk_size = chunk_size or view.local_size
        forward = backward = torch.zeros((), dtype=torch.int64, device=view.queries.device)
        for begin in range(0, view.local_size, chunk_size):
            end = min(begin + chunk_size, view.local_size)
            forward = forward + view.forward_valid(begin, end).sum()
            if self.symmetric:
                backward = backward + view.backward_valid(begin, end).sum()
        return view.global_count(forward), view.global_count(backward) if self.symmetric else None

    def loss_for_rows(self, view: InBatchView, begin: int, end: int, counts: tuple[Tensor, Tensor | None]) -> Tensor:
        """This rank's share of the loss from its local rows [begin, end), normalised by the global counts.

        Summing it over row chunks gives the full loss; under gathering, averaging it over ranks does (which is what
        DDP's gradient averaging computes), hence the ``world_size`` factor.
        """
        rows = torch.arange(begin, end, device=view.queries.device) + view.offset
        queries, positives = view.queries[rows], view.docs[0][rows]
        scale = view.world_size
        positive = ((queries - positives) ** 2).sum(dim=-1).sum() * scale / (view.local_size * view.world_size)
        if self.negative_weight == 0:
            return positive

        candidates, _ = view.forward_candidates()
        negative = self._hinge(queries @ candidates.T, view.forward_valid(begin, end), counts[0])
        if self.symmetric:
            backward = self._hinge(positives @ view.queries.T, view.backward_valid(begin, end), counts[1])
            negative = (negative + backward) / 2
        return positive + self.negative_weight * negative * scale

    def _hinge(self, cosine: Tensor, valid: Tensor, count: Tensor) -> Tensor:
        penalty = torch.relu(cosine - self.margin) ** 2
        return (penalty * valid).sum() / torch.clamp(count, min=1)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "margin": self.margin,
            "negative_weight": self.negative_weight,
            "symmetric": self.symmetric,
            "gather_across_devices": self.gather_across_devices,
            "mask_duplicates": self.mask_duplicates,
        }

    @property
    def citation(self) -> str:
        return """
@misc{li2023generaltextembeddingsmultistage,
      title={Towards General Text Embeddings with Multi-stage Contrastive Learning},
      author={Zehan Li and Xin Zhang and Yanzhao Zhang and Dingkun Long and Pengjun Xie and Meishan Zhang},
      year={2023},
      eprint={2308.03281},
      archivePrefix={arXiv},
      primaryClass={cs.CL},
      url={https://arxiv.org/abs/2308.03281},
}
"""
