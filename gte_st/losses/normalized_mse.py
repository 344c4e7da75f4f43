"""Normalised MSE with in-batch negatives: the gte-st training objective."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

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

    def anchor_negative_mask(self, begin: int, end: int) -> Tensor:
        """Which of :meth:`forward_candidates` are valid negatives of the anchors of local rows [begin, end)."""
        candidates, fp = self.forward_candidates()
        return self._valid(begin, end, fp, candidates.size(0), own_block=0)

    def positive_negative_mask(self, begin: int, end: int) -> Tensor:
        """Which anchors of the (global) batch are valid negatives of the positives of local rows [begin, end)
        (the symmetric, doc-to-query direction)."""
        return self._valid(begin, end, self.query_fp, self.queries.size(0), own_block=0)

    def global_count(self, count: Tensor) -> Tensor:
        """Sum a count over ranks when the batch is gathered (so every rank normalises by the same total)."""
        if self.world_size > 1:
            count = count.clone()
            dist.all_reduce(count)
        return count


WEIGHTINGS = ("mean", "hardness", "infonce")
PENALTIES = ("squared_hinge", "hinge")
DISTILLATION_TARGETS = ("similarities", "embeddings")


class NormalizedMSELoss(nn.Module):
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
    ) -> None:
        r"""
        Normalised MSE with in-batch negatives. For a batch of B (anchor, positive[, negatives]) rows with
        L2-normalised embeddings :math:`\hat q_i, \hat d_i`, cosines :math:`s_{in} = \cos(\hat q_i, n)` and
        :math:`\mathcal N_i` the valid negatives of anchor i, the loss is

        .. math::

            \mathcal{L} = \frac{1}{B}\sum_i \big(1 - p_i\big) \Big[\lVert \hat q_i - \hat d_i \rVert^2
              \;+\; w \sum_{n\in\mathcal N_i} \omega_{in}\, \operatorname{relu}(s_{in} - m)\Big],
            \qquad
            \omega_{in} = \operatorname{softmax}_{n\in\mathcal N_i}(s_{in}/\tau),\quad
            p_i = \frac{e^{s_{ii}/\tau}}{e^{s_{ii}/\tau} + \sum_{n\in\mathcal N_i} e^{s_{in}/\tau}}

        with the weights :math:`\omega, p` treated as constants (detached), defaults :math:`m=-1` (every negative
        is pushed), :math:`w=2`, :math:`\tau=0.05`. The positive term is the MSE between unit vectors,
        :math:`\lVert \hat q - \hat d \rVert^2 = 2 - 2\cos`. :math:`\mathcal N_i` holds every *other* positive in the
        batch and every hard negative in the batch (its own and the other rows'); a candidate whose text equals the
        anchor's or its positive's text is never a negative.

        Why this form (``weighting="infonce"``): it stays an MSE on unit vectors, but each row is weighted the way
        InfoNCE weights it -- the pull on a positive fades once it is well ahead of its negatives (the factor
        :math:`1-p_i`, "gradient dissipation"), and the push concentrates on the hardest negatives
        (:math:`\omega`). Be aware that with these defaults the gradient is *exactly* :math:`2\tau` times that of
        sentence-transformers' ``MultipleNegativesRankingLoss(scale=1/tau)`` (tested): the default loss is InfoNCE's
        gradient written as a weighted MSE, which is why it trains as well as InfoNCE; the options below move away
        from it. The earlier plain form (``weighting="mean"``, ``negative_penalty="squared_hinge"``, ``margin=0.3``,
        ``negative_weight=2048``),

        .. math::

            \frac{1}{B}\sum_i \lVert \hat q_i - \hat d_i \rVert^2
              + w \cdot \frac{1}{|\mathcal N|}\sum_{i}\sum_{n\in\mathcal N_i} \operatorname{relu}(s_{in} - m)^2,

        made models worse than the base model on our benchmarks (see ``docs/benchmarks.md``).

        Options (see ``docs/benchmarks.md`` for what they measured):

        - ``weighting="mean"``: the plain mean over all (anchor, negative) pairs, the original form above.
        - ``weighting="hardness"``: each anchor's negatives are weighted by
          :math:`\omega_{in} = \operatorname{softmax}_{n\in\mathcal N_i}(s_{in}/\tau)`, and the negative term becomes
          :math:`\frac{w}{B}\sum_i\sum_n \omega_{in}\,\phi(s_{in})`. Reason: a plain mean spreads the gradient over
          all negatives, most of them easy; the softmax concentrates it on the hardest ones, as InfoNCE does.
        - ``weighting="infonce"`` (default): InfoNCE's own weights. With :math:`p_i` the softmax probability of the positive
          among [positive, valid negatives] at temperature :math:`\tau`, the positive term of row i is weighted by
          :math:`(1 - p_i)` and its negative weights become :math:`(1 - p_i)\,\omega_{in} = p_{in}` (the softmax
          probability of negative n). Reason: InfoNCE's pull on a positive *fades* once the positive is well ahead
          of its negatives ("gradient dissipation"); a constant-weight MSE keeps pulling every pair to cosine 1,
          which contracts the space. With detached weights (``detach_weights=True``),
          ``negative_penalty="hinge"``, ``margin=-1`` and ``negative_weight=2``, the gradient equals
          :math:`2\tau` times that of ``MultipleNegativesRankingLoss(scale=1/tau)`` exactly: it is InfoNCE's
          gradient written as a weighted MSE, not a new direction (tested). Other margins/weights/penalties
          depart from it.
        - ``detach_weights``: treat :math:`\omega` and :math:`p` as constants (default). Without detaching, the
          gradient also flows through the weights (for ``hardness``, towards making hard negatives even harder).
        - ``negative_penalty``: :math:`\phi(s) = \operatorname{relu}(s - m)^2` (``squared_hinge``, the earlier default) or
          :math:`\operatorname{relu}(s - m)` (``hinge``, default: a constant push, needed for the InfoNCE
          equivalence).
        - ``positive_margin`` :math:`m_p`: the positive term becomes
          :math:`\operatorname{relu}(\lVert \hat q_i - \hat d_i\rVert^2 - (2 - 2m_p)) = 2\operatorname{relu}(m_p - s_{ii})`,
          no pull once the cosine reaches :math:`m_p`. Reason: pairs need not all sit at cosine 1; ``1.0`` (default)
          is the plain MSE.
        - ``uniformity_weight`` :math:`u`, ``uniformity_t`` :math:`t`: adds
          :math:`\frac{u}{B}\sum_i \log \frac{1}{|\mathcal N_i|}\sum_{n\in\mathcal N_i} e^{-t\lVert \hat q_i - n\rVert^2}`,
          the uniformity term of alignment-uniformity (Wang & Isola, 2020) restricted to each anchor's negatives.
          Reason: with the positive MSE (= alignment) it is an MSE-geometry objective whose log-sum-exp focuses on
          the nearest negatives.
        - ``distillation_weight`` :math:`\delta`: adds :math:`\delta` times the MSE between the student's and a frozen
          ``teacher``'s in-batch cosine matrix (anchors x candidates, ``distillation_target="similarities"``) or
          their normalised embeddings of every column (``"embeddings"``, needs equal dimensions). ``teacher``
          defaults to a frozen copy of ``model`` as it is when the loss is built. Reason: short fine-tuning on a
          narrow domain loses general quality (e.g. STS); staying close to the base model's geometry keeps it.
        - ``score_distillation_weight`` :math:`\sigma`: adds :math:`\sigma` times the MSE between the student's
          cosines of each anchor to its own columns and the teacher scores given as labels,
          :math:`\frac{1}{B(1+k)}\sum_i\sum_{j=0}^{k}(\cos(\hat q_i, \hat c_{ij}) - t_{ij})^2` with
          :math:`c_{i0}` the positive and :math:`c_{ij}` the j-th negative; the labels are a ``(B, 1+k)`` tensor
          (a dataset's ``pos_scores``/``neg_scores`` columns, FlagEmbedding's distillation layout), on the cosine
          scale; batches without labels add no score term. Reason: a teacher that is not a dense model -- e.g.
          the BM25 + dense hybrid (:func:`gte_st.search.teacher.hybrid_teacher_rows`), which ranks SciFact far
          better than the model alone -- can still teach the student its order, through an MSE on unit-vector
          cosines.

        Args:
            model: The SentenceTransformer model.
            margin: Cosine similarity below which a negative is not penalised. Default -1 (every negative).
            negative_weight: Weight :math:`w` of the negative term. Default 2 (see below).
            symmetric: Also use every other *anchor* as a negative for each positive (the doc-to-query direction);
                the negative term is then the mean of the two directions (with ``infonce`` weighting, the positive
                weight is the mean of both directions' :math:`1 - p`). With pairs only and ``mean`` weighting, both
                directions cover the same set of (anchor, other positive) pairs.
            gather_across_devices: Under DDP/accelerate, take negatives from every rank's batch. Gradients flow back
                to every rank (autograd-aware all-gather); the loss is normalised by the global counts, so the
                averaged gradients equal those of one process holding the concatenated batch.
            mask_duplicates: Mask candidates whose text equals the anchor's or positive's text (compared by token
                ids), so a text appearing twice in the (global) batch is never a negative for its duplicate.
            weighting: ``"infonce"`` (default), ``"hardness"`` or ``"mean"``, see above.
            temperature: :math:`\tau` of the softmax weights. Default 0.05 (MNRL's scale 20).
            detach_weights: Detach the softmax weights. Default True.
            negative_penalty: ``"hinge"`` (default) or ``"squared_hinge"``.
            positive_margin: Cosine above which a positive pair is not pulled. Default 1.0 (always pulled).
            uniformity_weight: Weight :math:`u` of the uniformity term. Default 0 (off).
            uniformity_t: :math:`t` of the uniformity term. Default 2 (Wang & Isola's choice).
            distillation_weight: Weight :math:`\delta` of the self-distillation term. Default 0 (off).
            distillation_target: ``"similarities"`` (default) or ``"embeddings"``.
            teacher: The frozen teacher (a model or a path/Hub id to load); default a frozen copy of ``model``
                (built only when ``distillation_weight > 0``).
            score_distillation_weight: Weight :math:`\sigma` of the teacher-score term. Default 0 (off; labels
                are then ignored).

        Defaults, chosen by measurement on dev data only (``scripts/sweep_loss_defaults.py``: SciFact held-out
        *train* claims and STS-B dev; see ``docs/benchmarks.md``): on 30 steps x 32 pairs the default reached
        70.50 held-out nDCG@10 / 86.71 STS-B dev, MultipleNegativesRankingLoss 70.68 / 86.70 and the earlier mean
        form 69.46 / 86.77 (base model 69.37 / 86.73; one seed each). With the ``mean`` weighting the negative term
        averages over all (anchor, negative) pairs, most of them easy, so it needs a weight near 2048 to balance the
        positive term, and even then it only matched the base model. With Adam-type optimisers only the ratio of
        the terms matters, not the loss scale.

        References:
            - Li et al., *Towards General Text Embeddings with Multi-stage Contrastive Learning* (GTE), 2023:
              https://huggingface.co/papers/2308.03281 (in-batch negatives, batch size matters).
            - Wang & Isola, *Understanding Contrastive Representation Learning through Alignment and Uniformity on
              the Hypersphere*, 2020: https://arxiv.org/abs/2005.10242

        Requirements:
            1. (anchor, positive) pairs or (anchor, positive, negative_1, ..., negative_k) tuples; labels only for the
               teacher-score term.
            2. Batches of at least 2 rows; use ``BatchSamplers.NO_DUPLICATES`` for the cleanest negatives.

        Inputs:
            +-------------------------------------------------+----------------------------------------------+
            | Texts                                           | Labels                                       |
            +=================================================+==============================================+
            | (anchor, positive) pairs                        | none                                         |
            +-------------------------------------------------+----------------------------------------------+
            | (anchor, positive, negative_1, ..., negative_k) | none                                         |
            +-------------------------------------------------+----------------------------------------------+
            | (anchor, positive, negative_1, ..., negative_k) | teacher scores of (positive, negative_1..k), |
            | with ``score_distillation_weight > 0``          | shape (B, 1+k), on the cosine scale          |
            +-------------------------------------------------+----------------------------------------------+

        Relations:
            - :class:`CachedNormalizedMSELoss` computes the same loss with gradient caching, for batches far beyond
              memory.
            - sentence-transformers' ``MultipleNegativesRankingLoss`` (InfoNCE) is the softmax-based alternative;
              ``weighting="infonce"`` reproduces its gradient direction (see above).

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
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if negative_penalty not in PENALTIES:
            raise ValueError(f"negative_penalty must be one of {PENALTIES}, got {negative_penalty!r}")
        if distillation_target not in DISTILLATION_TARGETS:
            raise ValueError(f"distillation_target must be one of {DISTILLATION_TARGETS}, got {distillation_target!r}")
        if temperature <= 0 or uniformity_t <= 0:
            raise ValueError(f"temperature and uniformity_t must be > 0, got {temperature} and {uniformity_t}")
        if not -1.0 < positive_margin <= 1.0:
            raise ValueError(f"positive_margin must be a cosine similarity in (-1, 1], got {positive_margin}")
        if uniformity_weight < 0 or distillation_weight < 0 or score_distillation_weight < 0:
            raise ValueError("uniformity_weight, distillation_weight and score_distillation_weight must be >= 0")
        self.model = model
        self.margin = margin
        self.negative_weight = negative_weight
        self.symmetric = symmetric
        self.gather_across_devices = gather_across_devices
        self.mask_duplicates = mask_duplicates
        self.weighting = weighting
        self.temperature = temperature
        self.detach_weights = detach_weights
        self.negative_penalty = negative_penalty
        self.positive_margin = positive_margin
        self.uniformity_weight = uniformity_weight
        self.uniformity_t = uniformity_t
        self.distillation_weight = distillation_weight
        self.distillation_target = distillation_target
        self.score_distillation_weight = score_distillation_weight
        self.teacher_label = "frozen copy of the initial model" if teacher is None else teacher_name(teacher)
        self.teacher = None
        if distillation_weight > 0 and (model is not None or teacher is not None):  # no model: checking options only
            if isinstance(teacher, str):
                teacher = SentenceTransformer(teacher, device=str(model.device) if model is not None else None)
            self.teacher = frozen_copy(model) if teacher is None else teacher
            self.teacher.requires_grad_(False)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        validate_sentence_features(sentence_features, type(self).__name__)
        fingerprints = [text_fingerprints(f) for f in sentence_features] if self.mask_duplicates else None
        teacher = self.teacher_embeddings(sentence_features)
        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, labels, fingerprints, teacher)

    def teacher_embeddings(
        self, sentence_features: list[dict[str, Tensor]], chunk_size: int | None = None
    ) -> list[Tensor] | None:
        """The frozen teacher's embeddings of every column (no graph), ``chunk_size`` rows at a time."""
        if self.teacher is None:
            return None
        self.teacher.eval()
        with torch.no_grad():
            if chunk_size is None:
                return [e.detach() for e in embed_columns(self.teacher, sentence_features)]
            from sentence_transformers.base.losses.gradcache import _create_minibatch

            columns = []
            for features in sentence_features:
                size = _get_batch_size(features)
                parts = [
                    self.teacher(_create_minibatch(features, b, min(b + chunk_size, size)))["sentence_embedding"]
                    for b in range(0, size, chunk_size)
                ]
                columns.append(torch.cat(parts).detach())
            return columns

    def build_views(
        self,
        embeddings: list[Tensor],
        fingerprints: list[Tensor] | None,
        teacher_embeddings: list[Tensor] | None,
    ) -> tuple[InBatchView, InBatchView | None]:
        """The student's in-batch view and, with distillation, the teacher's (gathered the same way, no graph)."""
        name = type(self).__name__
        view = InBatchView.build(embeddings, fingerprints, self.gather_across_devices, name)
        teacher = None
        if self.distillation_weight > 0:
            if teacher_embeddings is None:
                raise ValueError(f"{name}: distillation_weight > 0 needs the teacher's embeddings")
            with torch.no_grad():
                teacher = InBatchView.build(teacher_embeddings, None, self.gather_across_devices, name)
        return view, teacher

    def compute_loss_from_embeddings(
        self,
        embeddings: list[Tensor],
        labels: Tensor | None = None,
        fingerprints: list[Tensor] | None = None,
        teacher_embeddings: list[Tensor] | None = None,
    ) -> Tensor:
        """The loss from per-column embeddings (anchor, positive, negatives...), optionally with text fingerprints
        and (for distillation) the teacher's embeddings of the same columns."""
        view, teacher = self.build_views(embeddings, fingerprints, teacher_embeddings)
        counts = self.negative_counts(view)
        scores = self.teacher_scores(labels, view)
        return self.loss_for_rows(view, 0, view.local_size, counts, teacher, scores)

    def teacher_scores(self, labels: Tensor | None, view: InBatchView) -> Tensor | None:
        """The labels as a ``(local rows, columns - 1)`` float tensor of teacher scores when the score term is on
        (checked), else None (also for a batch without labels: a source without scores adds no score term)."""
        if self.score_distillation_weight == 0 or labels is None:
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

    def negative_counts(self, view: InBatchView, chunk_size: int | None = None) -> tuple[Tensor, Tensor | None]:
        """Global numbers of (anchor, negative) pairs per direction, counted ``chunk_size`` rows at a time."""
        chunk_size = chunk_size or view.local_size
        forward = backward = torch.zeros((), dtype=torch.int64, device=view.queries.device)
        for begin in range(0, view.local_size, chunk_size):
            end = min(begin + chunk_size, view.local_size)
            forward = forward + view.anchor_negative_mask(begin, end).sum()
            if self.symmetric:
                backward = backward + view.positive_negative_mask(begin, end).sum()
        return view.global_count(forward), view.global_count(backward) if self.symmetric else None

    def loss_for_rows(
        self,
        view: InBatchView,
        begin: int,
        end: int,
        counts: tuple[Tensor, Tensor | None],
        teacher: InBatchView | None = None,
        scores: Tensor | None = None,
    ) -> Tensor:
        """This rank's share of the loss from its local rows [begin, end), normalised by the global counts
        (``scores``: the local rows' teacher scores, :meth:`teacher_scores`).

        Summing it over row chunks gives the full loss; under gathering, averaging it over ranks does (which is what
        DDP's gradient averaging computes), hence the ``world_size`` factor.
        """
        rows = torch.arange(begin, end, device=view.queries.device) + view.offset
        queries, positives = view.queries[rows], view.docs[0][rows]
        scale = view.world_size
        per_row = scale / (view.local_size * view.world_size)  # weight of one row's term in the global mean
        distance = ((queries - positives) ** 2).sum(dim=-1)
        if self.positive_margin < 1.0:
            distance = torch.relu(distance - (2.0 - 2.0 * self.positive_margin))
        positive_cosine = (queries * positives).sum(dim=-1)

        candidates, _ = view.forward_candidates()
        directions = [(positive_cosine, queries @ candidates.T, view.anchor_negative_mask(begin, end), counts[0])]
        if self.symmetric:
            directions.append(
                (positive_cosine, positives @ view.queries.T, view.positive_negative_mask(begin, end), counts[1])
            )
        fades, negatives = [], []
        for own, cosine, valid, count in directions:
            fade = self._fade(own, cosine, valid)
            fades.append(fade)
            if self.negative_weight > 0:
                negatives.append(self._negative_term(cosine, valid, count, fade, per_row, scale))
        fade = sum(fades) / len(fades) if self.weighting == "infonce" else 1.0
        loss = (fade * distance).sum() * per_row
        if negatives:
            loss = loss + self.negative_weight * sum(negatives) / len(negatives)
        if self.uniformity_weight > 0:
            loss = loss + self.uniformity_weight * self._uniformity(directions[0][1], directions[0][2]) * per_row
        if teacher is not None:
            loss = loss + self.distillation_weight * self._distillation(view, teacher, rows, candidates) * scale
        if scores is not None:
            own = torch.stack([(queries * column[rows]).sum(dim=-1) for column in view.docs], dim=1)
            squared = ((own - scores[begin:end]) ** 2).sum() / scores.size(1)
            loss = loss + self.score_distillation_weight * squared * per_row
        return loss

    def _fade(self, own: Tensor, cosine: Tensor, valid: Tensor) -> Tensor | None:
        """``1 - p_i`` (InfoNCE's weight of the positive) for ``infonce`` weighting, else None."""
        if self.weighting != "infonce":
            return None
        logits = torch.cat([own.unsqueeze(1), cosine.masked_fill(~valid, float("-inf"))], dim=1) / self.temperature
        fade = 1.0 - torch.softmax(logits, dim=1)[:, 0]
        return fade.detach() if self.detach_weights else fade

    def _negative_term(
        self, cosine: Tensor, valid: Tensor, count: Tensor, fade: Tensor | None, per_row: float, scale: int
    ) -> Tensor:
        """``mean``: the sum over these rows' valid pairs divided by the global pair count; otherwise the sum of
        the rows' weighted penalties divided by the global row count."""
        penalty = torch.relu(cosine - self.margin)
        if self.negative_penalty == "squared_hinge":
            penalty = penalty**2
        if self.weighting == "mean":
            return (penalty * valid).sum() / torch.clamp(count, min=1) * scale
        weights = torch.softmax(cosine.masked_fill(~valid, float("-inf")) / self.temperature, dim=1)
        weights = torch.nan_to_num(weights, nan=0.0)  # rows without any valid negative
        if self.detach_weights:
            weights = weights.detach()
        row_terms = (weights * penalty * valid).sum(dim=1)
        if fade is not None:
            row_terms = fade * row_terms
        return row_terms.sum() * per_row

    def _uniformity(self, cosine: Tensor, valid: Tensor) -> Tensor:
        """Sum over rows of log mean_{n valid} exp(-t ||q - n||^2); rows without a valid negative add 0."""
        exponent = (-self.uniformity_t * (2.0 - 2.0 * cosine)).masked_fill(~valid, float("-inf"))
        count = valid.sum(dim=1)
        has = count > 0
        values = torch.logsumexp(exponent[has], dim=1) - torch.log(count[has].to(exponent.dtype))
        return values.sum()

    def _distillation(self, view: InBatchView, teacher: InBatchView, rows: Tensor, candidates: Tensor) -> Tensor:
        """Sum over the rows of the squared student-teacher difference, divided by the global number of terms."""
        total_rows = view.local_size * view.world_size
        if self.distillation_target == "similarities":
            teacher_candidates, _ = teacher.forward_candidates()
            student = view.queries[rows] @ candidates.T
            target = teacher.queries[rows] @ teacher_candidates.T
            return ((student - target) ** 2).sum() / (total_rows * candidates.size(0))
        pairs = list(zip(view.tensors(), teacher.tensors()))
        if pairs[0][0].size(-1) != pairs[0][1].size(-1):
            raise ValueError(
                f"distillation_target='embeddings' needs equal dimensions, got student {pairs[0][0].size(-1)} and "
                f"teacher {pairs[0][1].size(-1)}; use 'similarities'"
            )
        squared = sum(((student[rows] - target[rows]) ** 2).sum() for student, target in pairs)
        return squared / (total_rows * len(pairs))

    def get_config_dict(self) -> dict[str, Any]:
        config = {
            "margin": self.margin,
            "negative_weight": self.negative_weight,
            "symmetric": self.symmetric,
            "gather_across_devices": self.gather_across_devices,
            "mask_duplicates": self.mask_duplicates,
            "weighting": self.weighting,
            "temperature": self.temperature,
            "detach_weights": self.detach_weights,
            "negative_penalty": self.negative_penalty,
            "positive_margin": self.positive_margin,
            "uniformity_weight": self.uniformity_weight,
            "uniformity_t": self.uniformity_t,
            "distillation_weight": self.distillation_weight,
            "distillation_target": self.distillation_target,
            "score_distillation_weight": self.score_distillation_weight,
        }
        if self.teacher is not None:
            config["teacher"] = self.teacher_label
        return config

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


def frozen_copy(model: SentenceTransformer) -> SentenceTransformer:
    """A frozen, evaluation-mode deep copy of ``model`` (the default distillation teacher)."""
    teacher = copy.deepcopy(model)
    teacher.requires_grad_(False)
    return teacher.eval()


def teacher_name(teacher: nn.Module | str) -> str:
    """How the config names a teacher: its path/Hub id, else its model card's base model, else its class."""
    if isinstance(teacher, str):
        return teacher
    card = getattr(teacher, "model_card_data", None)
    return getattr(card, "base_model", None) or type(teacher).__name__
