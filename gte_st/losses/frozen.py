"""Frozen models inside a loss (a distillation teacher, a false-negative guide): building, naming, embedding."""

from __future__ import annotations

import copy

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.gradcache import _create_minibatch, _get_batch_size
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn


def frozen_copy(model: SentenceTransformer) -> SentenceTransformer:
    """A frozen, evaluation-mode deep copy of ``model`` (the default self-distillation teacher)."""
    teacher = copy.deepcopy(model)
    teacher.requires_grad_(False)
    return teacher.eval()


def load_frozen(model: SentenceTransformer | str, device: str | torch.device | None = None) -> SentenceTransformer:
    """A frozen model: ``model`` itself, or loaded from a path/Hub id, with gradients off."""
    if isinstance(model, str):
        model = SentenceTransformer(model, device=None if device is None else str(device))
    model.requires_grad_(False)
    return model


def frozen_name(model: nn.Module | str) -> str:
    """How a config names a frozen model: its path/Hub id, else its model card's base model, else its class."""
    if isinstance(model, str):
        return model
    card = getattr(model, "model_card_data", None)
    return getattr(card, "base_model", None) or type(model).__name__


def same_vocabulary(model: nn.Module, other: nn.Module) -> bool:
    """Whether two models tokenise alike (equal vocabularies), so one batch's token ids mean the same to both."""
    first, second = getattr(model, "tokenizer", None), getattr(other, "tokenizer", None)
    if first is None or second is None:
        return False
    return first.get_vocab() == second.get_vocab()


class FrozenEmbeddings:
    """A frozen model's embeddings of a batch's columns, without a graph, ``chunk_size`` rows at a time.

    The last batch's embeddings are kept, keyed by the identity of its token-id tensors, so that a wrapper that
    calls the loss several times on one batch (sentence-transformers' ``MatryoshkaLoss``, once per dimension) runs the
    frozen model once. The key holds references to those tensors, so a later batch cannot reuse their identity.
    """

    def __init__(self) -> None:
        self._key: list[Tensor] = []
        self._value: list[Tensor] = []

    def __call__(
        self, model: nn.Module, sentence_features: list[dict[str, Tensor]], chunk_size: int | None = None
    ) -> list[Tensor]:
        key = [features["input_ids"] for features in sentence_features]
        # Shallow copies: a model writes its outputs into the features it is given, and the student reads them next.
        sentence_features = [dict(features) for features in sentence_features]
        if len(key) == len(self._key) and all(a is b for a, b in zip(key, self._key)):
            return self._value
        model.eval()
        with torch.no_grad():
            if chunk_size is None:
                value = [e.detach() for e in embed_columns(model, sentence_features)]
            else:
                value = []
                for features in sentence_features:
                    size = _get_batch_size(features)
                    parts = [
                        model(_create_minibatch(features, b, min(b + chunk_size, size)))["sentence_embedding"]
                        for b in range(0, size, chunk_size)
                    ]
                    value.append(torch.cat(parts).detach())
        self._key, self._value = key, value
        return value


__all__ = ["FrozenEmbeddings", "frozen_copy", "frozen_name", "load_frozen", "same_vocabulary"]
