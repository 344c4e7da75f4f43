"""The evaluation result record shared by every task, the CLI's JSON output and the model card."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Every task type, with the model-index (task type, task name) the Hub's model cards use for it.
TASK_TYPES: dict[str, tuple[str, str]] = {
    "STS": ("semantic-similarity", "Semantic Similarity"),
    "Retrieval": ("information-retrieval", "Information Retrieval"),
    "PairClassification": ("binary-classification", "Binary Classification"),
    "Classification": ("text-classification", "Text Classification"),
    "Clustering": ("clustering", "Clustering"),
    "Reranking": ("reranking", "Reranking"),
}


@dataclass
class EvalResult:
    """One model evaluated on one dataset split.

    Args:
        task_type: One of ``"STS"``, ``"Retrieval"``, ``"PairClassification"``, ``"Classification"``,
            ``"Clustering"``, ``"Reranking"``.
        dataset: Dataset name (derived from the data path unless given).
        split: The split that was evaluated.
        metrics: Metric name -> value as a fraction in [0, 1] (e.g. ``{"spearman": 0.8203}``).
        main_score: The key of ``metrics`` that ranks models on this task.
        details: Anything else worth keeping that is not a [0, 1] score: row counts, thresholds, runtime, settings.
    """

    task_type: str
    dataset: str
    split: str
    metrics: dict[str, float]
    main_score: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {list(TASK_TYPES)}, got {self.task_type!r}")
        if self.main_score not in self.metrics:
            raise ValueError(f"main_score {self.main_score!r} is not one of its metrics {sorted(self.metrics)}")
        self.metrics = {key: float(value) for key, value in self.metrics.items()}

    @property
    def score(self) -> float:
        """The value of the main score."""
        return self.metrics[self.main_score]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        """The record of :meth:`to_dict` (``details`` optional); a ``ValueError`` names what is missing or wrong."""
        required = ("task_type", "dataset", "split", "metrics", "main_score")
        if not isinstance(data, dict) or (missing := [key for key in required if key not in data]):
            lacking = missing if isinstance(data, dict) else list(required)
            raise ValueError(f"lacks {lacking} (EvalResult dicts have {list(required)})")
        return cls(
            task_type=data["task_type"],
            dataset=data["dataset"],
            split=data["split"],
            metrics=dict(data["metrics"]),
            main_score=data["main_score"],
            details=dict(data.get("details") or {}),
        )


def dataset_name(path: str | Path) -> str:
    """A readable dataset name from a data path: the folder name for files in a dataset folder."""
    path = Path(path)
    return path.name if path.is_dir() else path.parent.name or path.stem
