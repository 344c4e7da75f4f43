"""WiSE-FT after training: the fine-tuned weights interpolated with the base model's (:mod:`gte_st.interpolation`),
with a fixed weight or one chosen on the run's evaluation tasks (which must be dev data for that choice)."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

from gte_st.evaluation.result import EvalResult
from gte_st.interpolation import interpolate_state_dicts
from gte_st.training.evaluation import EvalTask, evaluate

logger = logging.getLogger(__name__)

DEFAULT_GRID = tuple(round(0.1 * i, 1) for i in range(1, 11))


def _key(result: EvalResult) -> str:
    return f"{result.dataset}/{result.split}"


def parse_wise_ft(value: str | float | None, where: str = "--wise_ft") -> float | str | None:
    """``None`` (off), ``"auto"``, or the interpolation weight as a number in (0, 1]."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off")):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number in (0, 1] or 'auto', got {value!r}") from None
    if not (math.isfinite(alpha) and 0 < alpha <= 1):
        raise ValueError(f"{where} must be a number in (0, 1] or 'auto', got {value!r}")
    return alpha


def check_grid(grid: Sequence[float] | None, where: str = "--wise_ft_grid") -> tuple[float, ...]:
    """The grid of ``--wise_ft auto`` (default :data:`DEFAULT_GRID`), every value in (0, 1]."""
    values = tuple(DEFAULT_GRID if not grid else grid)
    if bad := [a for a in values if not (math.isfinite(a) and 0 < a <= 1)]:
        raise ValueError(f"{where}: every value must lie in (0, 1], got {bad}")
    return values


def choose_alpha(
    base: Mapping[str, float], scores: Mapping[float, Mapping[str, float]], tolerance: float
) -> tuple[float, bool]:
    """The rule of ``--wise_ft auto``: among the weights whose every task scores at least ``base - tolerance``, the
    one with the largest mean gain over the base; if none qualifies, the one whose worst drop is smallest.

    Args:
        base: Main score of every task for the base model (the run's 'before' evaluation).
        scores: For each candidate weight, the main score of every task.
        tolerance: The largest drop below the base allowed on any task.

    Returns:
        ``(alpha, feasible)``: the chosen weight and whether it keeps every task within the tolerance.
    """
    if not scores:
        raise ValueError("no interpolation weight was evaluated")
    gains = {alpha: [task_scores[task] - base[task] for task in base] for alpha, task_scores in scores.items()}
    feasible = [alpha for alpha, g in gains.items() if min(g, default=0.0) >= -tolerance]
    if feasible:
        return max(feasible, key=lambda a: (statistics.fmean(gains[a]) if gains[a] else 0.0, a)), True
    return max(gains, key=lambda a: (min(gains[a]), a)), False


def apply_wise_ft(
    model: SentenceTransformer,
    base_state: Mapping[str, torch.Tensor],
    wise_ft: float | str,
    *,
    tasks: Sequence[EvalTask] = (),
    before: Sequence[Mapping[str, Any]] = (),
    grid: Sequence[float] | None = None,
    tolerance: float = 0.003,
) -> dict[str, Any]:
    """Replace ``model``'s weights by their interpolation with ``base_state`` at ``wise_ft`` (a weight, or ``"auto"``:
    each weight of ``grid`` evaluated on ``tasks`` and chosen by :func:`choose_alpha` against ``before``, the base
    model's results on them and possibly others). Returns what the training summary records."""
    tuned = {key: value.detach().clone() for key, value in model.state_dict().items()}
    if wise_ft != "auto":
        model.load_state_dict(interpolate_state_dicts(base_state, tuned, float(wise_ft)))
        return {"alpha": float(wise_ft), "mode": "fixed"}
    if not tasks:
        raise ValueError("--wise_ft auto needs evaluation tasks (--eval_sts / --eval_beir / --eval_task on dev data)")
    trials: dict[float, dict[str, float]] = {}
    for alpha in check_grid(grid):
        model.load_state_dict(interpolate_state_dicts(base_state, tuned, alpha))
        results = evaluate(list(tasks), model)
        trials[alpha] = {_key(result): result.score for result in results}
        logger.info(f"WiSE-FT alpha {alpha}: {trials[alpha]}")
    # ``before`` may hold more tasks than ``tasks`` (a reported one the choice must not look at)
    chosen_on = next(iter(trials.values()))
    base = {_key(r): r.score for r in map(EvalResult.from_dict, before) if _key(r) in chosen_on}
    alpha, feasible = choose_alpha(base, trials, tolerance)
    if not feasible:
        logger.warning(
            f"WiSE-FT: no weight of {sorted(trials)} keeps every task within {tolerance} of the base model; "
            f"chose {alpha}, the smallest worst drop"
        )
    model.load_state_dict(interpolate_state_dicts(base_state, tuned, alpha))
    return {
        "alpha": alpha,
        "mode": "auto",
        "tolerance": tolerance,
        "within_tolerance": feasible,
        "base": base,
        "trials": {str(a): s for a, s in trials.items()},
    }


__all__ = ["DEFAULT_GRID", "apply_wise_ft", "check_grid", "choose_alpha", "parse_wise_ft"]
