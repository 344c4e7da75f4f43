"""Glue that lets sentence-transformers' evaluators embed through :func:`gte_st.encoding.encode`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import (
    BinaryClassificationEvaluator,
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
    RerankingEvaluator,
)

from gte_st.encoding import encode

ModelOrLoader: TypeAlias = "SentenceTransformer | Callable[[], SentenceTransformer] | None"


def resolve_model(model: ModelOrLoader) -> SentenceTransformer | None:
    """The model an evaluator was given, or the one its zero-argument loader returns.

    Every evaluator reads and checks its data first and resolves the model after, so ``gte-st eval`` passes a
    loader: a bad data file fails with its one-line error in a second instead of after loading a large model. (A
    SentenceTransformer is callable too, hence the ``Module`` test.)"""
    if model is None or isinstance(model, torch.nn.Module):
        return model
    return model()


class GteEncodingMixin:
    """Mixin for sentence-transformers evaluators: ``embed_inputs`` goes through :func:`gte_st.encoding.encode`
    (token-length-sorted batches, the chosen precision, optionally compiled), so the evaluators' own metric code
    runs unchanged."""

    precision_mode: str = "fp32"
    compile_mode: bool = False
    return_tensor: bool = False
    batch_size: int

    def embed_inputs(
        self, model: SentenceTransformer, sentences: Any, encode_fn_name: str | None = None, **kwargs: Any
    ) -> Any:
        # encode_fn_name is "query" / "document" for the retrieval-style evaluators: use the model's prompt of
        # that name when it has one, as model.encode_query / encode_document do.
        prompt_name = encode_fn_name if encode_fn_name and model.prompts.get(encode_fn_name) else None
        embeddings = encode(
            model, list(sentences), batch_size=self.batch_size, precision=self.precision_mode,
            prompt_name=prompt_name, compile=self.compile_mode,
        )  # fmt: skip
        return torch.from_numpy(embeddings) if self.return_tensor else embeddings


class STSEvaluator(GteEncodingMixin, EmbeddingSimilarityEvaluator):
    """sentence-transformers' EmbeddingSimilarityEvaluator embedding through gte-st's encode path."""


class PairEvaluator(GteEncodingMixin, BinaryClassificationEvaluator):
    """sentence-transformers' BinaryClassificationEvaluator embedding through gte-st's encode path."""


class RetrievalEvaluator(GteEncodingMixin, InformationRetrievalEvaluator):
    """sentence-transformers' InformationRetrievalEvaluator embedding through gte-st's encode path."""

    return_tensor = True


class RerankEvaluator(GteEncodingMixin, RerankingEvaluator):
    """sentence-transformers' RerankingEvaluator embedding through gte-st's encode path."""

    return_tensor = True


def make_evaluator(cls: type, precision: str, compile: bool = False, **kwargs: Any) -> Any:
    evaluator = cls(**kwargs)
    evaluator.precision_mode = precision
    evaluator.compile_mode = compile
    return evaluator
