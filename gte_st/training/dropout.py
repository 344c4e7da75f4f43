"""Dropout masks while the encoder trains: drawn from 64-bit random words on CPUs by default.

PyTorch's CPU dropout draws one ``bernoulli_`` sample per element from its Mersenne-Twister generator, one thread at a
time. Training a BERT / MiniLM encoder (dropout 0.1 on the hidden states and on the attention probabilities) on a CPU
spends about a quarter of each step there (docs/benchmarks.md, "Training throughput", profiled with
``scripts/bench_train_throughput.py --profile``); the matmuls, which use every core, take half.

``training_dropout="fast"`` draws the same masks four times cheaper: one 64-bit random word gives four 15-bit lanes,
and an element is dropped when its lane is below ``t = round(p * 32768)``:

.. math::

    \\text{keep}_i = [\\, u_i \\ge t \\,], \\quad u_i \\sim U\\{0, \\dots, 2^{15} - 1\\}, \\qquad
    y_i = x_i \\cdot \\text{keep}_i / (1 - t / 2^{15})

so each element is dropped independently with probability ``t / 32768`` (within ``1 / 65536`` of ``p``; 0.1 becomes
0.100006) and the output is unbiased as with :func:`torch.nn.functional.dropout`. The masks come from the same
generator (``torch.manual_seed`` still makes a run reproducible); they are other draws than stock PyTorch's, so a run
is not bit-identical to one with ``training_dropout="torch"``, the same function in distribution.

The change lasts as long as the training loop (:meth:`gte_st.training.GTETrainer.train`): the model's
:class:`torch.nn.Dropout` modules are replaced by :class:`FastDropout` and put back after, and an encoder that trains
with eager attention (:mod:`gte_st.training.attention`) uses :func:`eager_attention_fast_dropout`, registered with
transformers' ``AttentionInterface``, for its attention-probability dropout. Nothing is saved: dropout modules have no
weights and ``config.json`` does not record the attention kernel. ``"auto"`` uses the fast masks on a CPU and PyTorch's
elsewhere (CUDA draws its masks in parallel).

Example::

    from gte_st.training.dropout import training_dropout

    with training_dropout(model, "auto"):   # fast masks on a CPU
        trainer.train()
"""

from __future__ import annotations

import contextlib
import logging
import math
import typing
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from gte_st.training.attention import hf_encoder

logger = logging.getLogger(__name__)

# ``gte-st train --training_dropout``: auto (fast masks on a CPU, PyTorch's elsewhere), fast or torch.
TrainingDropout = Literal["auto", "fast", "torch"]
TRAINING_DROPOUT: tuple[str, ...] = typing.get_args(TrainingDropout)
DEFAULT_TRAINING_DROPOUT = "auto"

# The name of the eager attention with fast dropout in transformers' AttentionInterface.
FAST_DROPOUT_ATTENTION = "gte_eager_fast_dropout"

_LANE_BITS = 15
_LANES = 1 << _LANE_BITS


def resolve_training_dropout(choice: str, device_type: str) -> str:
    """The dropout masks to train with for ``choice`` on ``device_type`` (``"cpu"``, ``"cuda"`` ...): ``"fast"`` or
    ``"torch"``."""
    if choice not in TRAINING_DROPOUT:
        raise ValueError(f"training_dropout must be one of {', '.join(TRAINING_DROPOUT)}, got {choice!r}")
    if choice == "auto":
        return "fast" if device_type == "cpu" else "torch"
    return choice


def drop_threshold(p: float) -> int:
    """The 15-bit lane value below which an element is dropped for dropout probability ``p``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return round(p * _LANES)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A boolean mask of ``shape``, each element False (dropped) with probability ``drop_threshold(p) / 32768``,
    drawn as four 15-bit lanes per 64-bit word of the default generator."""
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_()  # 63 random bits each
    lanes = words.view(torch.int16)[:count].bitwise_and_(_LANES - 1)
    return lanes.ge(drop_threshold(p)).view(shape)


class _MaskedScale(torch.autograd.Function):
    """``where(keep, x, 0) * scale`` keeping only the boolean mask for the backward pass (as ``native_dropout`` does);
    ``where`` reads the mask as it is, where a product would first cast it to ``x``'s dtype (measured slower, also
    with the mask kept as ``keep * scale`` in a 16-bit ``x``'s dtype)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None, None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """:func:`torch.nn.functional.dropout` with masks from :func:`keep_mask`; identity outside training or for a
    ``p`` below one lane step."""
    threshold = drop_threshold(p)
    if not training or threshold == 0:
        return x
    keep = keep_mask(x.shape, p, x.device)
    return _MaskedScale.apply(x, keep, 1.0 / (1.0 - threshold / _LANES))


class FastDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` drawing its masks with :func:`fast_dropout` (``inplace`` is not used)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def eager_attention_fast_dropout(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention (BERT's ``eager_attention_forward``: scores, additive mask, softmax, dropout,
    weighted sum) with the attention-probability dropout of :func:`fast_dropout`; keys and values with fewer heads
    than the queries are repeated per group. Without dropout it computes what BERT's computes, under autocast too."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    if key.shape[1] != query.shape[1]:
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask[:, :, :, : key.shape[-2]]
    # softmax in fp32, as autocast runs it, then the probabilities in the dtype of the weighted sum (bf16 under
    # autocast, where the matmul would cast them anyway): dropout reads and writes half the bytes
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(value.dtype)
    attn_weights = fast_dropout(attn_weights, dropout, module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(FAST_DROPOUT_ATTENTION, eager_attention_fast_dropout)
    AttentionMaskInterface.register(FAST_DROPOUT_ATTENTION, eager_mask)  # the additive mask eager attention takes


def _swap_dropouts(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace every :class:`torch.nn.Dropout` with ``p > 0`` by a :class:`FastDropout`; returns what to put back."""
    swapped = []
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and drop_threshold(child.p) > 0:
                fast = FastDropout(child.p)
                fast.train(child.training)
                setattr(parent, name, fast)
                swapped.append((parent, name, child))
    return swapped


def _eager_encoder(model: Any) -> Any | None:
    """The Hugging Face encoder of a SentenceTransformer when it runs transformers' eager attention, else ``None``."""
    encoder = hf_encoder(model)
    return encoder if encoder is not None and encoder.config._attn_implementation == "eager" else None


@contextlib.contextmanager
def training_dropout(model: Any, choice: str = DEFAULT_TRAINING_DROPOUT) -> Iterator[str]:
    """Train ``model`` (a SentenceTransformer or any module) with the dropout masks :func:`resolve_training_dropout`
    picks; the model's own dropout modules and attention kernel are put back on exit, also after an error. Yields
    ``"fast"`` or ``"torch"``."""
    parameter = next(model.parameters(), None)
    wanted = resolve_training_dropout(choice, parameter.device.type if parameter is not None else "cpu")
    if wanted == "torch":
        yield wanted
        return
    swapped = _swap_dropouts(model)
    encoder = _eager_encoder(model)
    switched = False
    try:  # the swapped modules come back even if switching the kernel fails
        if encoder is not None:
            _register_attention()
            encoder.set_attn_implementation(FAST_DROPOUT_ATTENTION)
            switched = True
        logger.info(f"training with fast dropout masks ({len(swapped)} dropout modules; put back after training)")
        yield wanted
    finally:
        if switched:
            encoder.set_attn_implementation("eager")
        for parent, name, original in swapped:
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)


__all__ = [
    "DEFAULT_TRAINING_DROPOUT",
    "FAST_DROPOUT_ATTENTION",
    "TRAINING_DROPOUT",
    "FastDropout",
    "TrainingDropout",
    "drop_threshold",
    "eager_attention_fast_dropout",
    "fast_dropout",
    "keep_mask",
    "resolve_training_dropout",
    "training_dropout",
]
