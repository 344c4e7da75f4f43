"""Evaluation before, during and after training: sentence-transformers evaluators (so ``--eval_strategy`` and
``--load_best_model_at_end`` work) that embed through :func:`gte_st.encoding.encode` and report
:class:`~gte_st.evaluation.EvalResult` records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

from gte_st.evaluation.embedding import RetrievalEvaluator, STSEvaluator, make_evaluator
from gte_st.evaluation.readers import read_beir, read_sts
from gte_st.evaluation.result import EvalResult
from gte_st.evaluation.retrieval import IR_EVALUATOR_SETTINGS, limit_corpus, retrieval_metrics
from gte_st.training.arguments import RecipeArguments

# The retrieval metrics are gte_st.evaluation.retrieval's (one list for `gte-st eval` and training).
IR_SETTINGS = {**IR_EVALUATOR_SETTINGS, "batch_size": 64, "show_progress_bar": False}


@dataclass
class EvalTask:
    """One evaluation: a sentence-transformers evaluator and how to report its scores as an ``EvalResult``."""

    evaluator: Any
    task_type: str
    dataset: str
    split: str

    def run(self, model: SentenceTransformer) -> EvalResult:
        scores = self.evaluator(model)
        prefix = f"{self.evaluator.name}_cosine_" if self.task_type == "Retrieval" else f"{self.evaluator.name}_"
        values = {k.removeprefix(prefix): float(v) for k, v in scores.items() if k.startswith(prefix)}
        if self.task_type == "Retrieval":
            metrics, main = retrieval_metrics(values), "ndcg_at_10"
        else:
            metrics, main = {"spearman": values["spearman_cosine"], "pearson": values["pearson_cosine"]}, "spearman"
        return EvalResult(self.task_type, self.dataset, self.split, metrics, main)


def build_eval_tasks(recipe: RecipeArguments, held_out: dict[str, Any] | None = None) -> list[EvalTask]:
    """Evaluation tasks from the recipe's ``eval_sts``/``eval_beir`` (and the default job's held-out split)."""
    tasks: list[EvalTask] = []
    if held_out is not None:
        evaluator = make_evaluator(RetrievalEvaluator, "auto", **held_out, name="docstrings", **IR_SETTINGS)
        tasks.append(EvalTask(evaluator, "Retrieval", "docstrings-held-out", "test"))
    for path in recipe.eval_sts or []:
        pairs = read_sts(path)
        name = Path(path).name.split(".")[0]
        evaluator = make_evaluator(STSEvaluator, "auto", sentences1=pairs.sentences1, sentences2=pairs.sentences2,
                                   scores=pairs.scores, name=name, batch_size=64)  # fmt: skip
        tasks.append(EvalTask(evaluator, "STS", name, Path(path).stem))
    for folder in recipe.eval_beir or []:
        data = read_beir(folder, recipe.eval_beir_split)
        corpus = {doc: data.corpus[doc] for doc in limit_corpus(data, recipe.eval_max_corpus)}
        name = Path(folder).name
        evaluator = make_evaluator(RetrievalEvaluator, "auto", queries=data.queries, corpus=corpus,
                                   relevant_docs=data.qrels, name=name, **IR_SETTINGS)  # fmt: skip
        tasks.append(EvalTask(evaluator, "Retrieval", name, recipe.eval_beir_split))
    return tasks


def evaluate(tasks: list[EvalTask], model: SentenceTransformer) -> list[EvalResult]:
    """Run every task on ``model`` (in eval mode, without gradients)."""
    model.eval()
    with torch.inference_mode():
        return [task.run(model) for task in tasks]


__all__ = ["EvalTask", "build_eval_tasks", "evaluate"]
