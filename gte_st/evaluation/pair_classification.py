"""Pair classification: is a pair a paraphrase / duplicate? Average precision and best-threshold F1 of cosine."""

from __future__ import annotations

from pathlib import Path

from gte_st.evaluation.embedding import ModelOrLoader, PairEvaluator, make_evaluator, resolve_model
from gte_st.evaluation.readers import read_pairs
from gte_st.evaluation.result import EvalResult, dataset_name
from gte_st.vocabulary import warn_unknown_tokens


def evaluate_pair_classification(
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
    """Average precision (main score), best-threshold F1 / precision / recall / accuracy and MCC of the cosine
    similarity, computed by sentence-transformers' ``BinaryClassificationEvaluator``.

    Args:
        path: MRPC ``msr_paraphrase_<split>.txt``, a ``sentence1,sentence2,label`` csv, an ``s1<TAB>s2<TAB>label``
            file (LCQMC), a jsonl with those keys, or a folder with one file per split.
        compile: Encode with a ``torch.compile``'d copy of the model (:func:`gte_st.encoding.encode`; torch models
            only): about a minute to compile once, then faster on CPU.
    """
    data = read_pairs(path, split)
    n = len(data.labels) if max_samples is None else min(max_samples, len(data.labels))
    if len(set(data.labels[:n])) < 2:
        raise ValueError(f"{path}: pair classification needs both labels 0 and 1 among the first {n} pairs")
    model = resolve_model(model)  # after the data is read and checked
    warn_unknown_tokens(model, {"sentence1": data.sentences1, "sentence2": data.sentences2}, str(path))
    evaluator = make_evaluator(
        PairEvaluator,
        precision,
        compile,
        sentences1=data.sentences1[:n],
        sentences2=data.sentences2[:n],
        labels=data.labels[:n],
        batch_size=batch_size,
        similarity_fn_names=["cosine"],
        write_csv=False,
    )
    scores = evaluator(model)
    metrics = {key: scores[f"cosine_{key}"] for key in ("ap", "f1", "precision", "recall", "accuracy")}
    return EvalResult(
        task_type="PairClassification",
        dataset=dataset or dataset_name(path),
        split=data.split,
        metrics=metrics,
        main_score="ap",
        details={
            "pairs": n,
            "mcc": float(scores["cosine_mcc"]),
            "f1_threshold": float(scores["cosine_f1_threshold"]),
            "accuracy_threshold": float(scores["cosine_accuracy_threshold"]),
            "encode_precision": precision,
            "encode_compile": compile,
        },
    )
