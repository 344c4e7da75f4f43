"""The GTE training pipeline on top of sentence-transformers' Trainer.

* :mod:`~gte_st.training.arguments`: the options (gte-st's and Hugging Face's);
* :mod:`~gte_st.training.recipe`: recipe files and stages, checked before any work;
* :mod:`~gte_st.training.loss`: the loss of a stage by name;
* :mod:`~gte_st.training.trainer`: the Trainer (one source per batch, NaN stop) and callbacks;
* :mod:`~gte_st.training.hard_negatives`, :mod:`~gte_st.training.evaluation`, :mod:`~gte_st.training.checkpoints`;
* :mod:`~gte_st.training.run`: the run itself; :mod:`gte_st.training_summary` (outside the package, as the model
  card reads it too): what it records.

``python -m gte_st.training`` / ``accelerate launch -m gte_st.training`` = ``gte-st train``. Names are imported
lazily, so they can be read without loading torch or the Trainer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "GTETrainingArguments": "arguments",
    "RecipeArguments": "arguments",
    "mixed_precision_flags": "arguments",
    "DEFAULT_JOB": "recipe",
    "Stage": "recipe",
    "parse_stages": "recipe",
    "GTE_DIRECTIONS": "loss",
    "LOSSES": "loss",
    "build_loss": "loss",
    "GTETrainer": "trainer",
    "NonFiniteLossError": "trainer",
    "run": "run",
    "SUMMARY_FILE": "gte_st.training_summary",
    "format_summary": "gte_st.training_summary",
}

if TYPE_CHECKING:
    from gte_st.training.arguments import GTETrainingArguments, RecipeArguments, mixed_precision_flags
    from gte_st.training.loss import GTE_DIRECTIONS, LOSSES, build_loss
    from gte_st.training.recipe import DEFAULT_JOB, Stage, parse_stages
    from gte_st.training.run import run
    from gte_st.training.trainer import GTETrainer, NonFiniteLossError
    from gte_st.training_summary import SUMMARY_FILE, format_summary


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = _LAZY[name] if "." in _LAZY[name] else f"gte_st.training.{_LAZY[name]}"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'gte_st.training' has no attribute {name!r}")


__all__ = [
    "DEFAULT_JOB",
    "GTETrainer",
    "GTETrainingArguments",
    "GTE_DIRECTIONS",
    "LOSSES",
    "NonFiniteLossError",
    "RecipeArguments",
    "SUMMARY_FILE",
    "Stage",
    "build_loss",
    "format_summary",
    "mixed_precision_flags",
    "parse_stages",
    "run",
]
