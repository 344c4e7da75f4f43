"""Evaluation before, during and after training: sentence-transformers evaluators (so ``--eval_strategy`` and
``--load_best_model_at_end`` work) that embed through :func:`gte_st.encoding.encode` and report
:class:`~gte_st.evaluation.EvalResult` records.

Three kinds of task: ``--eval_sts`` files and ``--eval_beir`` folders (sentence-transformers' own evaluators, as
before), the default job's held-out docstrings, and ``--eval_task TASK[:SPLIT]=PATH`` entries, which run the
evaluator :data:`gte_st.registry.EVAL_TASKS` registers under ``TASK`` -- the one ``gte-st eval --task TASK`` runs, so
a task evaluated during training reports what ``gte-st eval`` reports for the same model and file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import BaseEvaluator

from gte_st.evaluation.embedding import RetrievalEvaluator, STSEvaluator, make_evaluator
from gte_st.evaluation.readers import read_beir, read_sts
from gte_st.evaluation.result import EvalResult
from gte_st.evaluation.retrieval import IR_EVALUATOR_SETTINGS, limit_corpus, retrieval_metrics
from gte_st.registry import EVAL_TASKS, eval_path_tasks
from gte_st.training.arguments import RecipeArguments

# Every training-time task encodes in batches of this size, at the recipe's ``eval_precision`` (fp32 unless asked).
EVAL_BATCH_SIZE = 64
# The retrieval metrics are gte_st.evaluation.retrieval's (one list for `gte-st eval` and training).
IR_SETTINGS = {**IR_EVALUATOR_SETTINGS, "batch_size": EVAL_BATCH_SIZE, "show_progress_bar": False}
# The dataset name of the default job's held-out docstring queries (its "test" split is the one it reports).
REPORTED_HELD_OUT = "docstrings-held-out"


@dataclass(frozen=True)
class EvalTaskSpec:
    """One parsed ``--eval_task`` entry: ``TASK=PATH`` or ``TASK:SPLIT=PATH``.

    ``TASK`` is an :data:`~gte_st.registry.EVAL_TASKS` name; ``SPLIT`` (optional) is the evaluator's ``split``
    keyword -- the split ``gte-st eval --split`` picks: the file of a folder (``sts-dev.csv``), the rows of a file
    with a split column, the qrels of a BEIR folder -- and without it the evaluator's own default applies (for
    most, ``test`` or what the file holds). The entry is split at its first ``=`` (a task name holds none, a path
    may) and the part before it at its first ``:``."""

    entry: str
    task: str
    split: str | None
    path: str


def parse_eval_task(entry: str, where: str = "--eval_task") -> EvalTaskSpec:
    """One ``--eval_task`` entry, checked without reading its data: the ``=``, a task :data:`EVAL_TASKS` holds (and
    that evaluates files), a split only where the task takes one, and a path that exists. Each fault is a one-line
    ``ValueError`` naming ``where`` (the option) and the entry."""
    head, sep, path = entry.partition("=")
    name = f"{where} {entry!r}"
    if not sep or not head.strip() or not path.strip():
        raise ValueError(f"{name}: expected TASK=PATH or TASK:SPLIT=PATH (e.g. reranking=wikiqa-dev.tsv)")
    task, colon, split = (part.strip() for part in head.partition(":"))
    if colon and not split:
        raise ValueError(f"{name}: the split after ':' is empty (TASK:SPLIT=PATH)")
    choices = eval_path_tasks()
    if task not in choices:
        # mteb (registered, but no file evaluator) evaluates mteb task names, not a PATH
        why = (
            f" training can run on a PATH (run `gte-st eval --task {task}` on the saved model)"
            if task in EVAL_TASKS
            else ""
        )
        raise ValueError(f"{name}: {task!r} is not an evaluation task{why}; choose one of {', '.join(choices)}")
    if colon and "split" not in EVAL_TASKS.entry(task).metadata.get("options", {}):
        raise ValueError(f"{name}: task {task} takes no split; use {task}=PATH")
    if not Path(path).expanduser().exists():
        raise ValueError(f"{name}: {path} does not exist")
    return EvalTaskSpec(entry, task, split or None, path)


class RegisteredTaskEvaluator(BaseEvaluator):
    """A sentence-transformers evaluator (``BaseEvaluator``, which sentence-transformers also exports as
    ``SentenceEvaluator``) that runs one :data:`~gte_st.registry.EVAL_TASKS` evaluator on one data path.

    The evaluator function is looked up in the registry (never in a table of its own), so training evaluates with
    exactly the function ``gte-st eval --task TASK`` runs, with ``options`` as its keywords. A call returns the
    :class:`EvalResult`'s metrics prefixed with the evaluator's ``name`` (``{name}_{metric}``, as
    sentence-transformers' evaluators do, so ``--eval_strategy`` logs ``eval_{name}_{metric}`` and
    ``--metric_for_best_model`` can name one), and ``primary_metric`` is the result's main score (set by the first
    call: the registry records no main score, the result does). ``output_path`` is unused: the registered
    evaluators write no files."""

    def __init__(self, task: str, path: str, name: str, options: dict[str, Any]) -> None:
        super().__init__()
        self.task = task
        self.path = path
        self.name = name
        self.options = dict(options)
        self.evaluate_fn = EVAL_TASKS.get(task)

    def evaluate(self, model: Any) -> EvalResult:
        """The registered evaluator's :class:`EvalResult` on ``model`` (a model, or a loader it calls once the data
        is read and checked).

        The registered evaluators compute their metrics with sentence-transformers evaluators of their own, which
        record each call in the model's model-card data (unnamed tables, a training-log row at step -1): those
        records are dropped, so the saved model card lists this task once, under its name, as ``__call__``
        records it."""
        card = getattr(model, "model_card_data", None)
        if card is None:
            return self.evaluate_fn(model, self.path, **self.options)
        results, logs = dict(card.eval_results_dict), [dict(row) for row in card.training_logs]
        try:
            return self.evaluate_fn(model, self.path, **self.options)
        finally:
            card.eval_results_dict, card.training_logs = results, logs

    def __call__(
        self, model: SentenceTransformer, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        result = self.evaluate(model)
        self.primary_metric = result.main_score  # prefixed below, as sentence-transformers' evaluators do
        metrics = self.prefix_name_to_metrics(result.metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics


class _DataChecked(Exception):
    """Raised by the loader :func:`check_task_data` hands an evaluator: its data was read and checked."""


def _refuse_model() -> SentenceTransformer:
    raise _DataChecked


def check_task_data(evaluator: RegisteredTaskEvaluator, where: str) -> None:
    """Read and check an evaluator's data now, with no model: the evaluator is given a loader that stops it where
    it would load the model. Every registered evaluator reads and checks its data before it resolves the model (the
    :data:`~gte_st.registry.EVAL_TASKS` contract ``gte-st eval`` relies on too), so whatever its reader rejects
    fails here, before training, as a one-line ``ValueError`` naming ``where``."""
    try:
        evaluator.evaluate(_refuse_model)
    except _DataChecked:
        return
    except (ValueError, OSError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``, ... when another task has it: task names key the WiSE-FT trials and the
    logged metrics, so two files named alike (``dev.tsv`` in two folders) must not share one."""
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name}-{n}"
    taken.add(unique)
    return unique


@dataclass
class EvalTask:
    """One evaluation: a sentence-transformers evaluator and how to report its scores as an ``EvalResult``.

    ``task_type``, ``dataset`` and ``split`` describe the built-in tasks' results (``--eval_sts``, ``--eval_beir``,
    the default job's held-out set). A :class:`RegisteredTaskEvaluator` reports its own :class:`EvalResult`;
    for it they hold the registry task name, the dataset name and the asked split (``""``: the evaluator's)."""

    evaluator: Any
    task_type: str
    dataset: str
    split: str

    def run(self, model: SentenceTransformer) -> EvalResult:
        """``model`` evaluated on this task, as an :class:`EvalResult`."""
        if isinstance(self.evaluator, RegisteredTaskEvaluator):
            return self.evaluator.evaluate(model)
        scores = self.evaluator(model)
        prefix = f"{self.evaluator.name}_cosine_" if self.task_type == "Retrieval" else f"{self.evaluator.name}_"
        values = {k.removeprefix(prefix): float(v) for k, v in scores.items() if k.startswith(prefix)}
        if self.task_type == "Retrieval":
            metrics, main = retrieval_metrics(values), "ndcg_at_10"
        else:
            metrics, main = {"spearman": values["spearman_cosine"], "pearson": values["pearson_cosine"]}, "spearman"
        return EvalResult(self.task_type, self.dataset, self.split, metrics, main)


def registered_task(spec: EvalTaskSpec, name: str, max_corpus: int | None = None, precision: str = "fp32") -> EvalTask:
    """The :class:`EvalTask` of one ``--eval_task`` entry, its data read and checked (:func:`check_task_data`).

    The evaluator gets the keywords every registered task takes -- ``batch_size``, ``precision`` (the recipe's
    ``eval_precision``, as the other training-time tasks) and ``dataset`` (``name``) -- plus ``split`` when the entry
    names one and ``max_corpus`` (``--eval_max_corpus``) when the task has that option."""
    options: dict[str, Any] = {"batch_size": EVAL_BATCH_SIZE, "precision": precision, "dataset": name}
    if spec.split is not None:
        options["split"] = spec.split
    if max_corpus is not None and "max_corpus" in EVAL_TASKS.entry(spec.task).metadata.get("options", {}):
        options["max_corpus"] = max_corpus
    evaluator = RegisteredTaskEvaluator(spec.task, spec.path, name, options)
    check_task_data(evaluator, f"--eval_task {spec.entry!r}")
    return EvalTask(evaluator, spec.task, name, spec.split or "")


def build_eval_tasks(recipe: RecipeArguments, held_out: dict[str, Any] | None = None) -> list[EvalTask]:
    """Evaluation tasks from the recipe's ``eval_sts``/``eval_beir``/``eval_task`` (and the default job's held-out
    splits, :func:`gte_st.default_data.default_datasets`: the reported ``test`` queries, and the ``dev`` queries when
    ``held_out`` has them, for ``--wise_ft auto`` to choose on in their place: :func:`choice_tasks`). Every file is
    read and checked here, before the model is loaded and before the first training step; a bad ``--eval_task``
    entry is a one-line ``ValueError`` naming the option and the entry.

    Every task encodes at ``recipe.eval_precision``: fp32 by default, because bf16 rounding reorders near-tied
    candidates -- it moved WikiQA MAP by up to 0.6 (docs/benchmarks.md, SciFact recipe), more than the 0.3 that
    ``--wise_ft auto`` allows -- and so that the figures are ``gte-st eval``'s on every CPU."""
    tasks: list[EvalTask] = []
    precision = recipe.eval_precision
    if held_out is not None:
        evaluator = make_evaluator(RetrievalEvaluator, precision, **held_out["test"], name="docstrings", **IR_SETTINGS)
        tasks.append(EvalTask(evaluator, "Retrieval", REPORTED_HELD_OUT, "test"))
        if held_out.get("dev", {}).get("queries"):
            evaluator = make_evaluator(
                RetrievalEvaluator, precision, **held_out["dev"], name="docstrings-dev", **IR_SETTINGS
            )
            tasks.append(EvalTask(evaluator, "Retrieval", "docstrings-dev", "dev"))
    for path in recipe.eval_sts or []:
        pairs = read_sts(path)
        name = Path(path).name.split(".")[0]
        evaluator = make_evaluator(STSEvaluator, precision, sentences1=pairs.sentences1,
                                   sentences2=pairs.sentences2, scores=pairs.scores, name=name,
                                   batch_size=EVAL_BATCH_SIZE)  # fmt: skip
        tasks.append(EvalTask(evaluator, "STS", name, Path(path).stem))
    for folder in recipe.eval_beir or []:
        data = read_beir(folder, recipe.eval_beir_split)
        corpus = {doc: data.corpus[doc] for doc in limit_corpus(data, recipe.eval_max_corpus)}
        name = Path(folder).name
        evaluator = make_evaluator(RetrievalEvaluator, precision, queries=data.queries, corpus=corpus,
                                   relevant_docs=data.qrels, name=name, **IR_SETTINGS)  # fmt: skip
        tasks.append(EvalTask(evaluator, "Retrieval", name, recipe.eval_beir_split))
    taken = {task.evaluator.name for task in tasks} | {task.dataset for task in tasks}
    for entry in recipe.eval_task or []:
        spec = parse_eval_task(entry)
        name = _unique(Path(spec.path).name.split(".")[0] or spec.task, taken)
        tasks.append(registered_task(spec, name, recipe.eval_max_corpus, precision))
    return tasks


def choice_tasks(tasks: list[EvalTask]) -> list[EvalTask]:
    """The tasks ``--wise_ft auto`` chooses on: all but the default job's reported held-out queries, which a choice
    must not look at (their ``dev`` split stands in for them)."""
    return [task for task in tasks if task.dataset != REPORTED_HELD_OUT]


def evaluate(tasks: list[EvalTask], model: SentenceTransformer) -> list[EvalResult]:
    """Run every task on ``model`` (in eval mode, without gradients)."""
    model.eval()
    with torch.inference_mode():
        return [task.run(model) for task in tasks]


__all__ = [
    "REPORTED_HELD_OUT",
    "EvalTask",
    "EvalTaskSpec",
    "RegisteredTaskEvaluator",
    "build_eval_tasks",
    "choice_tasks",
    "evaluate",
    "parse_eval_task",
]
