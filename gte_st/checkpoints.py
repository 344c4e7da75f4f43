"""Trainer checkpoint folders (``checkpoint-<step>``): the one rule for naming them and finding the latest, shared by
local resuming (:mod:`gte_st.training`) and Hub resuming (:mod:`gte_st.hub`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
# The Trainer writes this file last: a checkpoint folder that has it is complete.
COMPLETE_MARKER = "trainer_state.json"


def checkpoint_step(name: str) -> int | None:
    """The step of a ``checkpoint-<step>`` folder name; None for any other name."""
    match = CHECKPOINT_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def latest_checkpoint_name(names: Iterable[str]) -> str | None:
    """The ``checkpoint-<step>`` name with the highest step among ``names``; None if there is none."""
    steps = [(step, name) for name in names if (step := checkpoint_step(name)) is not None]
    return max(steps)[1] if steps else None


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The complete ``checkpoint-<step>`` folder of ``directory`` with the highest step; None if there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    complete = [p.name for p in directory.iterdir() if p.is_dir() and (p / COMPLETE_MARKER).is_file()]
    name = latest_checkpoint_name(complete)
    return directory / name if name else None


__all__ = ["CHECKPOINT_RE", "checkpoint_step", "latest_checkpoint", "latest_checkpoint_name"]
