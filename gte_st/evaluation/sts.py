"""Semantic textual similarity: Spearman and Pearson correlation of cosine similarity with gold scores."""

from __future__ import annotations

from pathlib import Path

from gte_st.evaluation.embedding import ModelOrLoader, STSEvaluator, make_evaluator, resolve_model
from gte_st.evaluation.readers import read_sts
from gte_st.evaluation.result import EvalResult, dataset_name
from gte_st.vocabulary import warn_unknown_tokens


def evaluate_sts(
    model: ModelOrLoader,
    path: str | Path,
    *,
    split: str | None = None,
    batch_size: int = 64,
    precision: str = "fp32",
    compile: bool = False,
    max_samples: int | None = None,
    dataset: str | None = None,
) -> EvalResult:
    """Spearman (main score) and Pearson correlation between the cosine similarity of the two sentences'
    embeddings and the gold score, computed by sentence-transformers' ``EmbeddingSimilarityEvaluator``.

    Args:
        model: Any SentenceTransformer.
        path: An STS-B ``sts-<split>.csv`` / ``stsbenchmark.tsv.gz``, a SICK txt, a jsonl with ``sentence1``,
            ``sentence2``, ``score``, or a folder holding one file per split (then ``split`` picks it).
        split: Split to evaluate (for folders and files with a split column); default ``"test"``.
        batch_size: Encoding batch size.
        precision: ``"fp32"`` (default: reproduces published numbers), ``"bf16"`` or ``"auto"``.
        compile: Encode with a ``torch.compile``'d copy of the model (:func:`gte_st.encoding.encode`; torch models
            only): about a minute to compile once, then faster on CPU.
        max_samples: Evaluate only the first N pairs.
        dataset: Name reported in the result (default: the data folder's name).
    """
    data = read_sts(path, split)
    n = len(data.scores) if max_samples is None else min(max_samples, len(data.scores))
    if n < 2:
        raise ValueError(f"{path}: need at least 2 scored pairs for a correlation, found {n}")
    if len(set(data.scores[:n])) == 1:
        raise ValueError(f"{path}: all {n} gold scores are {data.scores[0]}; a correlation needs scores that differ")
    model = resolve_model(model)  # after the data is read and checked
    warn_unknown_tokens(model, {"sentence1": data.sentences1, "sentence2": data.sentences2}, str(path))
    evaluator = make_evaluator(
        STSEvaluator,
        precision,
        compile,
        sentences1=data.sentences1[:n],
        sentences2=data.sentences2[:n],
        scores=data.scores[:n],
        batch_size=batch_size,
        main_similarity="cosine",
        similarity_fn_names=["cosine"],
        write_csv=False,
    )
    scores = evaluator(model)
    return EvalResult(
        task_type="STS",
        dataset=dataset or dataset_name(path),
        split=data.split,
        metrics={"spearman": scores["spearman_cosine"], "pearson": scores["pearson_cosine"]},
        main_score="spearman",
        details={"pairs": n, "encode_precision": precision, "encode_compile": compile},
    )
