"""A runner over the `mteb <https://github.com/embeddings-benchmark/mteb>`_ package: mteb's own tasks and evaluators,
on mteb's datasets (downloaded from the Hugging Face Hub) or on local files (no Hub access).

:func:`load_local_data` fills an mteb task with data already on disk, read by the same readers as ``gte-st eval``
(:mod:`gte_st.evaluation.readers`): a BEIR folder for a retrieval task, an STS file for an STS task, a labelled file
for a classification task. :func:`model_identity` names the results: mteb files them under
``results/<name>/<revision>/<task>.json``, which for a local directory is ``local/<folder name>`` and gte-st's model
fingerprint (:func:`gte_st.fingerprint.model_fingerprint`), so two different models never share a result file.
Install with ``pip install 'gte-st[mteb]'``.

Example::

    gte-st eval my-gte --task mteb --mteb-tasks STSBenchmark SciFact \\
        --mteb-data ../shared/data/stsb ../shared/data/beir_scifact
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer

from gte_st.errors import UsageError
from gte_st.evaluation.readers import read_beir, read_labelled_texts, read_sts
from gte_st.evaluation.retrieval import limit_corpus, limit_queries
from gte_st.fingerprint import model_fingerprint

# The mteb task types whose data :func:`load_local_data` reads, and the file each takes.
LOCAL_TASK_TYPES = {
    "Retrieval": "a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)",
    "STS": "an STS file or folder (STS-B csv, SICK txt, jsonl)",
    "Classification": "a labelled csv/tsv/jsonl (a split column, or --train-data)",
}

PIP_HINT = "the mteb runner needs the `mteb` package: pip install 'gte-st[mteb]'  (or: pip install mteb)"


def import_mteb() -> Any:
    """Import ``mteb`` lazily, with an install hint when it is missing."""
    try:
        import mteb
    except ImportError as e:
        raise ImportError(PIP_HINT) from e
    return mteb


def get_tasks(
    tasks: list[str] | None = None, task_types: list[str] | None = None, languages: list[str] | None = None
) -> list[Any]:
    """mteb task objects selected by name, type (e.g. ``"Retrieval"``) and/or ISO 639-3 language (``"eng"``)."""
    if not (tasks or task_types or languages):
        raise UsageError("select mteb tasks with --mteb-tasks, --mteb-task-types and/or --mteb-languages")
    mteb = import_mteb()
    kwargs = {"tasks": tasks, "task_types": task_types, "languages": languages}
    return list(mteb.get_tasks(**{k: v for k, v in kwargs.items() if v}))


def list_tasks(
    tasks: list[str] | None = None, task_types: list[str] | None = None, languages: list[str] | None = None
) -> list[tuple[str, str]]:
    """(name, type) of the mteb tasks matching the selection (all tasks when nothing is selected)."""
    mteb = import_mteb()
    kwargs = {"tasks": tasks, "task_types": task_types, "languages": languages}
    selected = mteb.get_tasks(**{k: v for k, v in kwargs.items() if v})
    return sorted((task.metadata.name, task.metadata.type) for task in selected)


def _split(task: Any, split: str | None) -> str:
    splits = list(task.metadata.eval_splits)
    if split is not None and split not in splits:
        raise UsageError(f"mteb task {task.metadata.name} evaluates the split(s) {splits}, not {split!r}")
    return split or splits[0]


def load_local_data(
    task: Any,
    path: str | Path,
    *,
    split: str | None = None,
    train_path: str | Path | None = None,
    max_samples: int | None = None,
    max_corpus: int | None = None,
) -> Any:
    """Fill the mteb ``task`` with the local data at ``path`` and mark it loaded, so mteb evaluates it without
    downloading anything. The evaluated split is ``split`` (default: the task's first evaluation split).

    * Retrieval: a BEIR folder, read as ``gte-st eval --task retrieval`` reads it (documents are ``title + " " +
      text``, only qrels with a score > 0; ``max_samples`` keeps the first queries, ``max_corpus`` their relevant
      documents plus the first others);
    * STS: pairs with a gold score, as ``gte-st eval --task sts`` (``max_samples``: the first pairs);
    * Classification: labelled texts; the classifier's training rows come from ``train_path`` or from the file's
      ``train`` split (mteb's own sampling: ``samples_per_label`` per label, ``n_experiments`` times).

    The same data gives the same scores as ``gte-st eval`` for retrieval and STS (both rank by cosine; mteb's
    metrics are computed by its own code). Returns ``task``.
    """
    from datasets import Dataset

    kind = task.metadata.type
    if kind not in LOCAL_TASK_TYPES:
        raise UsageError(
            f"mteb task {task.metadata.name} is a {kind} task; local data can be given for "
            + ", ".join(f"{k} ({v})" for k, v in LOCAL_TASK_TYPES.items())
        )
    if task.metadata.is_multilingual:
        raise UsageError(f"mteb task {task.metadata.name} has several language subsets; give a monolingual task")
    split = _split(task, split)
    if kind == "Retrieval":
        data = read_beir(path, split)
        limit_queries(data, max_samples)
        corpus_ids = limit_corpus(data, max_corpus)
        query_ids = list(data.queries)
        split_data: Any = {
            "corpus": Dataset.from_dict({"id": corpus_ids, "text": [data.corpus[i] for i in corpus_ids]}),
            "queries": Dataset.from_dict({"id": query_ids, "text": [data.queries[i] for i in query_ids]}),
            "relevant_docs": {qid: {doc: 1 for doc in sorted(data.qrels[qid])} for qid in query_ids},
            "top_ranked": None,
        }
        task.dataset = {"default": {split: split_data}}
    elif kind == "STS":
        pairs = read_sts(path, split)
        n = len(pairs.scores) if max_samples is None else min(max_samples, len(pairs.scores))
        columns = task.column_names
        task.dataset = {
            "default": {
                split: Dataset.from_dict(
                    {columns[0]: pairs.sentences1[:n], columns[1]: pairs.sentences2[:n], "score": pairs.scores[:n]}
                )
            }
        }
    else:
        train = read_labelled_texts(train_path or path, task.train_split)
        test = read_labelled_texts(path, split)
        labels = {label: i for i, label in enumerate(sorted(set(train.labels) | set(test.labels)))}
        column, label_column = task.input_column_name, task.label_column_name
        task.dataset = {
            "default": {
                name: Dataset.from_dict({column: data.texts, label_column: [labels[x] for x in data.labels]})
                for name, data in ((task.train_split, train), (split, test))
            }
        }
    task.filter_eval_splits([split])
    task.data_loaded = True
    return task


def model_identity(model: SentenceTransformer, name_or_path: str) -> tuple[str, str]:
    """(name, revision) mteb files the results under: ``local/<folder name>`` and the model fingerprint for a local
    directory; the Hub id and the revision it was loaded at (else the fingerprint) for a Hub model."""
    path = Path(name_or_path)
    if path.is_dir():
        return f"local/{path.resolve().name}", model_fingerprint(model)
    revision = getattr(model.model_card_data, "base_model_revision", None) or model_fingerprint(model)
    return (name_or_path if "/" in name_or_path else f"local/{name_or_path}"), revision


def run_mteb(
    model: SentenceTransformer, tasks: list[Any], output_folder: str | Path, name: str | None = None,
    revision: str | None = None,
) -> Any:  # fmt: skip
    """Run ``tasks`` with mteb and let mteb write its own result files under ``output_folder``, named ``name`` at
    ``revision`` (see :func:`model_identity`) when given."""
    mteb = import_mteb()
    output_folder = Path(output_folder)
    if not hasattr(mteb, "evaluate"):  # mteb 1.x
        return mteb.MTEB(tasks=tasks).run(model, output_folder=str(output_folder))
    from mteb.cache import ResultCache
    from mteb.models import SentenceTransformerEncoderWrapper

    wrapped: Any = model
    if name is not None:
        wrapped = SentenceTransformerEncoderWrapper(model)
        wrapped.mteb_model_meta = wrapped.mteb_model_meta.model_copy(update={"name": name, "revision": revision})
    return mteb.evaluate(wrapped, tasks, cache=ResultCache(output_folder))
