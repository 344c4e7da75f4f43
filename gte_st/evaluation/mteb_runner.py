"""A thin runner over the `mteb <https://github.com/embeddings-benchmark/mteb>`_ package, for users with Hub access.

``mteb`` downloads its datasets from the Hugging Face Hub, so this path does not work offline; the rest of
:mod:`gte_st.evaluation` does. Install with ``pip install 'gte-st[mteb]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer

from gte_st.errors import UsageError

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


def run_mteb(model: SentenceTransformer, tasks: list[Any], output_folder: str | Path) -> Any:
    """Run ``tasks`` with mteb and let mteb write its own result files under ``output_folder``."""
    mteb = import_mteb()
    output_folder = Path(output_folder)
    if hasattr(mteb, "evaluate"):  # mteb >= 2
        from mteb.cache import ResultCache

        return mteb.evaluate(model, tasks, cache=ResultCache(output_folder))
    return mteb.MTEB(tasks=tasks).run(model, output_folder=str(output_folder))  # mteb 1.x
