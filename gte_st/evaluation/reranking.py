"""Reranking: order each query's candidates by cosine similarity; MAP and MRR@10."""

from __future__ import annotations

from pathlib import Path

from gte_st.evaluation.embedding import ModelOrLoader, RerankEvaluator, make_evaluator, resolve_model
from gte_st.evaluation.readers import read_reranking
from gte_st.evaluation.result import EvalResult, dataset_name
from gte_st.vocabulary import warn_unknown_tokens


def evaluate_reranking(
    model: ModelOrLoader,
    path: str | Path,
    *,
    split: str | None = None,
    batch_size: int = 64,
    precision: str = "fp32",
    compile: bool = False,
    max_samples: int | None = None,
    dataset: str | None = None,
    at_k: int = 10,
) -> EvalResult:
    """MAP (main score), MRR@10 and nDCG@10 over queries that have at least one positive and one negative
    candidate, computed by sentence-transformers' ``RerankingEvaluator``.

    Args:
        path: WikiQA-style ``question<TAB>candidate<TAB>label`` file, a jsonl with ``query``, ``positive``,
            ``negative``, or a folder with one file per split.
        max_samples: Evaluate only the first N queries.
        compile: Encode with a ``torch.compile``'d copy of the model (:func:`gte_st.encoding.encode`; torch models
            only): about a minute to compile once, then faster on CPU.
    """
    samples = read_reranking(path, split)
    samples = [s for s in samples if s["positive"] and s["negative"]][:max_samples]
    candidates = [text for s in samples for text in [*s["positive"], *s["negative"]]]
    if not samples:
        raise ValueError(f"{path}: no query with at least one positive and one negative candidate")
    model = resolve_model(model)  # after the data is read and checked
    warn_unknown_tokens(model, {"query": [s["query"] for s in samples], "candidates": candidates}, str(path))
    evaluator = make_evaluator(
        RerankEvaluator, precision, compile, samples=samples, at_k=at_k, batch_size=batch_size, write_csv=False
    )
    scores = evaluator(model)
    name = Path(path).name.lower()
    inferred = "train" if "train" in name else "dev" if "dev" in name else "test"
    return EvalResult(
        task_type="Reranking",
        dataset=dataset or dataset_name(path),
        split=split or inferred,
        metrics={
            "map": scores["map"],
            f"mrr_at_{at_k}": scores[f"mrr@{at_k}"],
            f"ndcg_at_{at_k}": scores[f"ndcg@{at_k}"],
        },
        main_score="map",
        details={"queries": len(samples), "encode_precision": precision, "encode_compile": compile},
    )
