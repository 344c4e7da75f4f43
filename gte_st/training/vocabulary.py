"""The vocabulary of a training run: ``--extend_vocab`` before training, the [UNK] guard on every source, and the new
tokens' own learning rate (``--new_token_learning_rate``). The rules live in :mod:`gte_st.vocabulary`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from datasets import DatasetDict
from transformers import TrainerCallback

from gte_st.training.arguments import RecipeArguments
from gte_st.vocabulary import (
    check_unknown_tokens,
    extend_vocabulary,
    new_rows_only,
    new_token_rows,
    read_token_file,
    unknown_pieces,
)

if TYPE_CHECKING:
    from gte_st.training.recipe import Stage

logger = logging.getLogger(__name__)


def check_vocabulary_options(recipe: RecipeArguments, where: str) -> None:
    """The vocabulary options of a stage, checked before anything is loaded."""
    if recipe.extend_vocab is not None and recipe.extend_vocab != "auto":
        if not Path(recipe.extend_vocab).expanduser().is_file():
            raise FileNotFoundError(
                f"{where}: --extend_vocab {recipe.extend_vocab}: file not found (give a file of tokens, one per line, "
                "or auto)"
            )
    if recipe.extend_vocab_min_count < 1:
        raise ValueError(f"{where}: --extend_vocab_min_count must be >= 1, got {recipe.extend_vocab_min_count}")
    if recipe.new_token_learning_rate is not None and not recipe.new_token_learning_rate > 0:
        raise ValueError(f"{where}: --new_token_learning_rate must be > 0, got {recipe.new_token_learning_rate}")


def _text_columns(dataset: Any) -> dict[str, list[str]]:
    return {c: dataset[c] for c in dataset.column_names if c == "anchor" or c.startswith(("positive", "negative"))}


def prepare_vocabulary(
    model: Any, stages: list[Stage], stage_data: list[tuple[DatasetDict, dict[str, str]]]
) -> list[dict[str, Any]]:
    """Extend the vocabulary for every stage that asks (``--extend_vocab``, in stage order, from that stage's
    training texts), then check every source's [UNK] share (:func:`gte_st.vocabulary.check_unknown_tokens`: a
    warning, or an error above the limit unless ``--allow_unknown_tokens``). Returns what was added, per stage."""
    added: list[dict[str, Any]] = []
    for stage, (data, _) in zip(stages, stage_data):
        recipe = stage.recipe
        if recipe.extend_vocab is None:
            continue
        if recipe.extend_vocab == "auto":
            texts = [t for dataset in data.values() for column in _text_columns(dataset).values() for t in column]
            counts = unknown_pieces(model.tokenizer, texts)
            tokens = sorted((t for t, n in counts.items() if n >= recipe.extend_vocab_min_count),
                            key=lambda t: (-counts[t], t))  # fmt: skip
        else:
            tokens = read_token_file(recipe.extend_vocab, model.tokenizer)
        extension = extend_vocabulary(model, tokens, init=recipe.extend_vocab_init, seed=stage.args.seed)
        added.append({
            "stage": stage.name, "source": recipe.extend_vocab, "min_count": recipe.extend_vocab_min_count,
            "new_token_learning_rate": recipe.new_token_learning_rate, **extension.to_dict(),
        })  # fmt: skip
    for stage, (data, locations) in zip(stages, stage_data):
        if stage.recipe.new_token_learning_rate is not None and new_token_rows(model) is None:
            raise ValueError(
                f"stage {stage.name}: --new_token_learning_rate needs new tokens: set --extend_vocab (auto or a file) "
                "in this or an earlier stage"
            )
        for name, dataset in data.items():
            check_unknown_tokens(
                model, _text_columns(dataset), f"stage {stage.name}: {locations[name]}",
                allow=stage.recipe.allow_unknown_tokens,
            )  # fmt: skip
    return added


class NewTokenLearningRate(TrainerCallback):
    """Trains the input-embedding matrix in a parameter group of its own at ``learning_rate``, moving only the rows
    :func:`gte_st.vocabulary.extend_vocabulary` added: while training runs, a gradient hook keeps only their rows
    (:func:`gte_st.vocabulary.new_rows_only`; before gradient clipping, so the old rows count for nothing).
    :class:`~gte_st.training.trainer.GTETrainer` builds its optimizer with ``parameter_groups``."""

    def __init__(self, weight: torch.nn.Parameter, first_new: int, count: int, learning_rate: float) -> None:
        self.weight, self.first_new, self.count = weight, first_new, count
        self.parameter_groups = [{"params": [weight], "lr": learning_rate, "weight_decay": 0.0}]
        self._hook: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._hook = self.weight.register_hook(lambda grad: new_rows_only(grad, self.first_new, self.count))

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def new_token_callbacks(model: Any, recipe: RecipeArguments) -> list[TrainerCallback]:
    """``[NewTokenLearningRate]`` when the stage sets ``--new_token_learning_rate`` (and the model has new rows)."""
    rows = new_token_rows(model)
    if recipe.new_token_learning_rate is None or rows is None:
        return []
    return [NewTokenLearningRate(*rows, learning_rate=recipe.new_token_learning_rate)]


__all__ = ["NewTokenLearningRate", "check_vocabulary_options", "new_token_callbacks", "prepare_vocabulary"]
