"""Speed decisions measured once per machine and model, and kept on disk.

``precision="auto"`` (:mod:`gte_st.encoding`) and ``backend="auto"`` (:mod:`gte_st.export.auto`) choose the fastest
of several equivalent paths by timing them on a short calibration, because the ranking differs between CPUs (bf16
weight copies lead on AMX CPUs, bf16 autocast or an int8 IR on CPUs without AMX; docs/benchmarks.md) and a fixed
rule per CPU flag was wrong on one of the hosts measured. A decision is stored under :func:`calibration_dir` as one
JSON file per key -- the key holds everything the ranking depends on (the CPU and its instruction-set limit,
:func:`gte_st.hardware.cpu_key`; the library versions; the model's shape or files) -- so it is measured once and
measured again when any part of the key changes. Files are written atomically; a cache that cannot be read or written
only costs a new measurement.

:func:`interleaved_times` is the timing protocol: every path runs once per round, the order rotating between
rounds so that all paths see the same mix of machine load; :func:`paired_ratios` compares each path with a baseline
round by round (the two calls of a round share the machine's load at that moment) and keeps the median ratio, which
a busy machine disturbs less than the ratio of two medians.

Example::

    from gte_st.calibration import interleaved_times, paired_ratios, read_decision, write_decision

    key = {"cpu": ..., "model": ...}
    record = read_decision("precision", key)
    if record is None:
        times = interleaved_times({"fp32": run_fp32, "bf16": run_bf16}, min_rounds=3, budget_s=1.5)
        ratios = paired_ratios(times, "fp32")          # {"fp32": 1.0, "bf16": 0.62}: time relative to fp32
        record = {"choice": min(ratios, key=ratios.get), "time_vs_fp32": ratios}
        write_decision("precision", key, record)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gte_st.files import atomic_write_json

logger = logging.getLogger(__name__)

CALIBRATION_FOLDER = "calibration"


def calibration_dir() -> Path:
    """Where measured decisions are kept: ``$GTE_ST_CACHE/calibration`` when ``GTE_ST_CACHE`` is set, else
    ``$HF_HOME/gte_st/calibration`` (``~/.cache/huggingface/gte_st/calibration``)."""
    root = os.environ.get("GTE_ST_CACHE")
    if root:
        return Path(root).expanduser() / CALIBRATION_FOLDER
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "gte_st" / CALIBRATION_FOLDER


def decision_path(kind: str, key: dict[str, Any]) -> Path:
    """The file of the decision ``kind`` (e.g. ``"precision"``) for ``key``: ``<kind>-<sha256 of the key>.json``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return calibration_dir() / f"{kind}-{digest}.json"


def read_decision(kind: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored record of ``kind`` for exactly ``key`` (the file holds its key and is checked against it), or
    ``None`` when there is none or it cannot be read."""
    path = decision_path(kind, key)
    try:
        stored = json.loads(path.read_text(encoding="utf8"))
    except (OSError, ValueError):
        return None
    normal = json.loads(json.dumps(key, sort_keys=True, default=str))
    if not isinstance(stored, dict) or stored.get("key") != normal or not isinstance(stored.get("record"), dict):
        return None
    return stored["record"]


def write_decision(kind: str, key: dict[str, Any], record: dict[str, Any]) -> Path | None:
    """Store ``record`` as the decision ``kind`` for ``key`` (atomically); ``None`` and a warning when the cache
    folder is not writable (the decision then holds for this process only)."""
    path = decision_path(kind, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"key": json.loads(json.dumps(key, sort_keys=True, default=str)), "record": record})
    except OSError as exc:
        logger.warning(f"could not store the {kind} calibration in {path} ({exc}); it will be measured again")
        return None
    return path


def interleaved_times(
    paths: dict[str, Callable[[], Any]], *, min_rounds: int = 3, max_rounds: int = 7, budget_s: float = 1.5
) -> dict[str, list[float]]:
    """Seconds per call of each path, one per round: round after round every path runs once, the order rotating by
    one between rounds; at least ``min_rounds`` rounds, then more while the total stays within ``budget_s`` (judged
    by the rounds so far), up to ``max_rounds``. Warm-ups are the caller's (a first call pays one-off costs)."""
    names = list(paths)
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for round_index in range(max_rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            begin = time.perf_counter()
            paths[name]()
            times[name].append(time.perf_counter() - begin)
        elapsed = time.perf_counter() - start
        rounds = round_index + 1
        if rounds >= min_rounds and elapsed * (rounds + 1) / rounds > budget_s:
            break
    return times


def paired_ratios(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Per path, the median over rounds of its time divided by ``baseline``'s time in the same round (below 1:
    faster than the baseline)."""
    return {name: statistics.median(t / b for t, b in zip(values, times[baseline])) for name, values in times.items()}


__all__ = [
    "calibration_dir",
    "decision_path",
    "interleaved_times",
    "paired_ratios",
    "read_decision",
    "write_decision",
]
