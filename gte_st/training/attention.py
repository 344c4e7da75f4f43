"""The attention kernel of the encoder while it trains: eager attention on CPUs by default.

transformers loads encoders with PyTorch's fused ``scaled_dot_product_attention`` (SDPA), the fastest choice for
inference and on GPUs. In CPU *training* it is the slow one (docs/benchmarks.md, "Training throughput", profiled with
``scripts/bench_train_throughput.py --profile``):

- with attention dropout (BERT / MiniLM: 0.1) the CPU SDPA takes its math path, which runs a bf16 model's attention
  in fp32 (upcast copies and fp32 batched matmuls);
- without it (GTE-v1.5, ModernBERT) the CPU SDPA takes its fused flash kernel, whose backward pass is slower than the
  plain matmuls it replaces at training lengths.

Eager attention computes the same function (scores, mask, softmax -- in fp32 under autocast --, dropout, weighted
sum) with the matmuls in the training precision. So ``training_attention="auto"`` trains with eager attention on
a CPU and keeps the model's own kernel elsewhere. The change lasts as long as the training loop
(:meth:`gte_st.training.GTETrainer.train`): evaluation after training, export and serving use the model's own
kernel, and nothing is saved (``config.json`` does not record the kernel).

Example::

    from gte_st.training.attention import training_attention

    with training_attention(model, "auto"):   # eager on a CPU
        trainer.train()
"""

from __future__ import annotations

import contextlib
import logging
import typing
from collections.abc import Iterator
from typing import Any, Literal

logger = logging.getLogger(__name__)

# ``gte-st train --training_attention``: auto (eager on a CPU, the model's own kernel elsewhere) or a transformers
# attention implementation for the whole run.
TrainingAttention = Literal["auto", "eager", "sdpa"]
TRAINING_ATTENTION: tuple[str, ...] = typing.get_args(TrainingAttention)
DEFAULT_TRAINING_ATTENTION = "auto"


def resolve_training_attention(choice: str, device_type: str) -> str | None:
    """The attention implementation to train with for ``choice`` on ``device_type`` (``"cpu"``, ``"cuda"`` ...);
    ``None``: the model's own."""
    if choice not in TRAINING_ATTENTION:
        raise ValueError(f"training_attention must be one of {', '.join(TRAINING_ATTENTION)}, got {choice!r}")
    if choice == "auto":
        return "eager" if device_type == "cpu" else None
    return choice


def hf_encoder(model: Any) -> Any | None:
    """The Hugging Face model inside a SentenceTransformer whose attention kernel can be switched, else ``None``."""
    first = model[0] if hasattr(model, "__getitem__") and len(model) else None
    encoder = getattr(first, "auto_model", None)
    config = getattr(encoder, "config", None)
    if encoder is None or not hasattr(encoder, "set_attn_implementation") or config is None:
        return None
    return encoder if getattr(config, "_attn_implementation", None) else None


@contextlib.contextmanager
def training_attention(model: Any, choice: str = DEFAULT_TRAINING_ATTENTION) -> Iterator[str | None]:
    """Train ``model`` (a SentenceTransformer) with the attention kernel :func:`resolve_training_attention` picks;
    the model's own kernel is put back on exit, also after an error. Yields the kernel in use (``None``: not a
    Hugging Face encoder). A model class without the wanted kernel trains with its own (logged)."""
    wanted = resolve_training_attention(choice, model.device.type)
    encoder = hf_encoder(model)
    if encoder is None:
        yield None
        return
    own = encoder.config._attn_implementation
    if wanted is None or wanted == own:
        yield own
        return
    try:
        encoder.set_attn_implementation(wanted)
    except (ValueError, ImportError, NotImplementedError) as exc:
        logger.warning(f"training with {own} attention: {type(encoder).__name__} cannot switch to {wanted} ({exc})")
        yield own
        return
    logger.info(f"training with {wanted} attention (the model's own: {own}; put back after training)")
    try:
        yield wanted
    finally:
        encoder.set_attn_implementation(own)


__all__ = [
    "DEFAULT_TRAINING_ATTENTION",
    "TRAINING_ATTENTION",
    "TrainingAttention",
    "hf_encoder",
    "resolve_training_attention",
    "training_attention",
]
