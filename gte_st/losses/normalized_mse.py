"""Normalised MSE with in-batch negatives: the gte-st training objective (its core; the optional terms wrap it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor

from gte_st.losses.in_batch import InBatchLoss, InBatchView

WEIGHTINGS = ("mean", "hardness", "infonce")
PENALTIES = ("squared_hinge", "hinge")


@dataclass
class NormalizedMSEConfig:
    """The options of :class:`NormalizedMSELoss` (see its docstring), checked by :meth:`validate` without a model."""

    margin: float = -1.0
    negative_weight: float = 2.0
    symmetric: bool = False
    gather_across_devices: bool = False
    mask_duplicates: bool = True
    weighting: Literal["mean", "hardness", "infonce"] = "infonce"
    temperature: float = 0.05
    detach_weights: bool = True
    negative_penalty: Literal["squared_hinge", "hinge"] = "hinge"
    positive_margin: float = 1.0

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the first option whose value the loss cannot use."""
        if not self.negative_weight >= 0:
            raise ValueError(f"negative_weight must be >= 0, got {self.negative_weight}")
        if not -1.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be a cosine similarity in [-1, 1), got {self.margin}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.negative_penalty not in PENALTIES:
            raise ValueError(f"negative_penalty must be one of {PENALTIES}, got {self.negative_penalty!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not -1.0 < self.positive_margin <= 1.0:
            raise ValueError(f"positive_margin must be a cosine similarity in (-1, 1], got {self.positive_margin}")


class NormalizedMSELoss(InBatchLoss):
    config_class = NormalizedMSEConfig

    def __init__(
        self,
        model: SentenceTransformer | None,
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
        (:math:`\omega`). With these defaults the gradient is *exactly* :math:`2\tau` times that of
        sentence-transformers' ``MultipleNegativesRankingLoss(scale=1/tau)`` (tested): the default loss is InfoNCE's
        gradient written as a weighted MSE, which is why it trains as well as InfoNCE; the options below move away
        from it. The plain form (``weighting="mean"``, ``negative_penalty="squared_hinge"``, ``margin=0.3``,
        ``negative_weight=2048``),

        .. math::

            \frac{1}{B}\sum_i \lVert \hat q_i - \hat d_i \rVert^2
              + w \cdot \frac{1}{|\mathcal N|}\sum_{i}\sum_{n\in\mathcal N_i} \operatorname{relu}(s_{in} - m)^2,

        made models worse than the base model on our benchmarks (``docs/benchmarks.md``, "NormalizedMSELoss
        defaults").

        This class is the core objective. Further terms and rules are separate losses that wrap it (or any other
        in-batch loss), in the manner of sentence-transformers' ``MatryoshkaLoss``:
        :class:`~gte_st.losses.UniformityLoss`, :class:`~gte_st.losses.SelfDistillationLoss`,
        :class:`~gte_st.losses.ScoreDistillationLoss`, :class:`~gte_st.losses.FalseNegativeFilterLoss`;
        :class:`~gte_st.losses.CachedLoss` computes any of them with gradient caching, and sentence-transformers'
        ``MatryoshkaLoss`` trains them at several dimensions.

        Args:
            model: The SentenceTransformer model (``None`` is enough for :meth:`compute_loss_from_embeddings`).
            margin: Cosine similarity below which a negative is not penalised. Default -1 (every negative).
            negative_weight: Weight :math:`w` of the negative term. Default 2 (the InfoNCE equivalence).
            symmetric: Also use every other *anchor* as a negative for each positive (the doc-to-query direction);
                the negative term is then the mean of the two directions (with ``infonce`` weighting, the positive
                weight is the mean of both directions' :math:`1 - p`). With pairs only and ``mean`` weighting, both
                directions cover the same set of (anchor, other positive) pairs.
            gather_across_devices: Under DDP/accelerate, take negatives from every rank's batch. Gradients flow back
                to every rank (autograd-aware all-gather); the loss is normalised by the global counts, so the
                averaged gradients equal those of one process holding the concatenated batch.
            mask_duplicates: Mask candidates whose text equals the anchor's or positive's text (compared by token
                ids), so a text appearing twice in the (global) batch is never a negative for its duplicate.
            weighting: How negatives (and positives) are weighted:

                - ``"mean"``: the plain mean over all (anchor, negative) pairs, the form above.
                - ``"hardness"``: each anchor's negatives are weighted by :math:`\omega_{in}` and the negative term
                  becomes :math:`\frac{w}{B}\sum_i\sum_n \omega_{in}\,\phi(s_{in})`. Reason: a plain mean spreads
                  the gradient over all negatives, most of them easy; the softmax concentrates it on the hardest
                  ones, as InfoNCE does.
                - ``"infonce"`` (default): InfoNCE's own weights. With :math:`p_i` the softmax probability of the
                  positive among [positive, valid negatives] at temperature :math:`\tau`, the positive term of row i
                  is weighted by :math:`(1 - p_i)` and its negative weights become :math:`(1 - p_i)\,\omega_{in} =
                  p_{in}`. Reason: InfoNCE's pull on a positive fades once the positive is well ahead of its
                  negatives; a constant-weight MSE keeps pulling every pair to cosine 1, which contracts the space.
            temperature: :math:`\tau` of the softmax weights. Default 0.05 (MNRL's scale 20).
            detach_weights: Treat :math:`\omega` and :math:`p` as constants (default). Without detaching, the
                gradient also flows through the weights (for ``hardness``, towards making hard negatives harder).
            negative_penalty: :math:`\phi(s) = \operatorname{relu}(s - m)` (``"hinge"``, default: a constant push,
                needed for the InfoNCE equivalence) or :math:`\operatorname{relu}(s - m)^2` (``"squared_hinge"``).
            positive_margin: :math:`m_p`: the positive term becomes
                :math:`\operatorname{relu}(\lVert \hat q_i - \hat d_i\rVert^2 - (2 - 2m_p)) =
                2\operatorname{relu}(m_p - s_{ii})`, no pull once the cosine reaches :math:`m_p`. Reason: pairs need
                not all sit at cosine 1; ``1.0`` (default) is the plain MSE.

        The defaults were chosen by measurement on dev data only (``scripts/sweep_loss_defaults.py``: SciFact
        held-out *train* claims and STS-B dev; figures in ``docs/benchmarks.md``). With the ``mean`` weighting the
        negative term averages over all pairs, most of them easy, so it needs a weight near 2048 to balance the
        positive term. With Adam-type optimisers only the ratio of the terms matters, not the loss scale.

        References:
            - Li et al., *Towards General Text Embeddings with Multi-stage Contrastive Learning* (GTE), 2023:
              https://huggingface.co/papers/2308.03281 (in-batch negatives, batch size matters).

        Requirements:
            1. (anchor, positive) pairs or (anchor, positive, negative_1, ..., negative_k) tuples.
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
        self.config = NormalizedMSEConfig(
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
        )
        self.config.validate()
        self.model = model

    @property
    def gather_across_devices(self) -> bool:  # noqa: D102
        return self.config.gather_across_devices

    @property
    def mask_duplicates(self) -> bool:  # noqa: D102
        return self.config.mask_duplicates

    def prepare(
        self, view: InBatchView, labels: Tensor | None, context: dict, chunk_size: int | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Global numbers of (anchor, negative) pairs per direction, counted ``chunk_size`` rows at a time."""
        chunk_size = chunk_size or view.local_size
        forward = backward = torch.zeros((), dtype=torch.int64, device=view.queries.device)
        for begin in range(0, view.local_size, chunk_size):
            end = min(begin + chunk_size, view.local_size)
            forward = forward + view.anchor_negative_mask(begin, end).sum()
            if self.config.symmetric:
                backward = backward + view.positive_negative_mask(begin, end).sum()
        return view.global_count(forward), view.global_count(backward) if self.config.symmetric else None

    def loss_for_rows(self, view: InBatchView, state: tuple[Tensor, Tensor | None], begin: int, end: int) -> Tensor:
        """This rank's share of the loss from its local rows [begin, end), normalised by the global negative counts
        (``state``, from :meth:`prepare`)."""
        config = self.config
        counts = state
        rows = view.rows(begin, end)
        queries, positives = view.queries[rows], view.docs[0][rows]
        scale = view.world_size
        per_row = view.row_weight
        distance = ((queries - positives) ** 2).sum(dim=-1)
        if config.positive_margin < 1.0:
            distance = torch.relu(distance - (2.0 - 2.0 * config.positive_margin))
        positive_cosine = (queries * positives).sum(dim=-1)

        candidates, _ = view.forward_candidates()
        directions = [(positive_cosine, queries @ candidates.T, view.anchor_negative_mask(begin, end), counts[0])]
        if config.symmetric:
            directions.append(
                (positive_cosine, positives @ view.queries.T, view.positive_negative_mask(begin, end), counts[1])
            )
        fades, negatives = [], []
        for own, cosine, valid, count in directions:
            fade = self._fade(own, cosine, valid)
            fades.append(fade)
            if config.negative_weight > 0:
                negatives.append(self._negative_term(cosine, valid, count, fade, per_row, scale))
        fade = sum(fades) / len(fades) if config.weighting == "infonce" else 1.0
        loss = (fade * distance).sum() * per_row
        if negatives:
            loss = loss + config.negative_weight * sum(negatives) / len(negatives)
        return loss

    def _fade(self, own: Tensor, cosine: Tensor, valid: Tensor) -> Tensor | None:
        """``1 - p_i`` (InfoNCE's weight of the positive) for ``infonce`` weighting, else None."""
        if self.config.weighting != "infonce":
            return None
        logits = torch.cat([own.unsqueeze(1), cosine.masked_fill(~valid, float("-inf"))], dim=1)
        fade = 1.0 - torch.softmax(logits / self.config.temperature, dim=1)[:, 0]
        return fade.detach() if self.config.detach_weights else fade

    def _negative_term(
        self, cosine: Tensor, valid: Tensor, count: Tensor, fade: Tensor | None, per_row: float, scale: int
    ) -> Tensor:
        """``mean``: the sum over these rows' valid pairs divided by the global pair count; otherwise the sum of
        the rows' weighted penalties divided by the global row count."""
        config = self.config
        penalty = torch.relu(cosine - config.margin)
        if config.negative_penalty == "squared_hinge":
            penalty = penalty**2
        if config.weighting == "mean":
            return (penalty * valid).sum() / torch.clamp(count, min=1) * scale
        weights = torch.softmax(cosine.masked_fill(~valid, float("-inf")) / config.temperature, dim=1)
        weights = torch.nan_to_num(weights, nan=0.0)  # rows without any valid negative
        if config.detach_weights:
            weights = weights.detach()
        row_terms = (weights * penalty * valid).sum(dim=1)
        if fade is not None:
            row_terms = fade * row_terms
        return row_terms.sum() * per_row

    def get_config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

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


__all__ = ["NormalizedMSEConfig", "NormalizedMSELoss"]
