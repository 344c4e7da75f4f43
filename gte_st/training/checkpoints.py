"""Checkpoints of a stage: dropping the ones whose weights are not finite, and writing the final model atomically."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

from gte_st.checkpoints import latest_checkpoint
from gte_st.files import non_finite_as_null, remove_leftovers, replace_directory, temporary_sibling

logger = logging.getLogger(__name__)


def _weights_finite(checkpoint: Path) -> bool:
    from safetensors.torch import load_file

    files = list(checkpoint.rglob("*.safetensors"))
    return bool(files) and all(all(torch.isfinite(t).all() for t in load_file(f).values()) for f in files)


def discard_non_finite_checkpoints(directory: Path) -> Path | None:
    """Delete checkpoints whose weights hold NaN/inf; return the last good one."""
    while (checkpoint := latest_checkpoint(directory)) is not None and not _weights_finite(checkpoint):
        logger.warning(f"removing {checkpoint}: its weights are not finite")
        shutil.rmtree(checkpoint)
    return checkpoint


def save_atomically(
    model: SentenceTransformer, final_dir: Path, extra_files: dict[str, Any], keep: Path | None
) -> None:
    """Write the model (portable layout) and ``extra_files`` (JSON) into a temporary sibling directory, then swap it
    in place of ``final_dir`` with renames: ``final_dir`` is always either absent, the old or the new complete model.
    ``keep`` (a sub-directory of the old ``final_dir``, e.g. checkpoints) is moved into the new one. A NaN or infinity
    in ``extra_files`` (a diverged loss in the summary) is written as ``null``: the model is saved whatever the run
    logged, and the JSON stays standard."""
    final_dir = final_dir.resolve()
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final_dir.parent, of=final_dir.name)
    tmp = temporary_sibling(final_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    moved = None
    try:
        model.save(str(tmp))
        for name, content in extra_files.items():
            text = json.dumps(non_finite_as_null(content), indent=2, allow_nan=False)
            (tmp / name).write_text(text + "\n", encoding="utf8")
        if keep is not None and keep.exists():
            moved = tmp / keep.relative_to(final_dir)
            os.replace(keep, moved)
        replace_directory(tmp, final_dir)
    except BaseException:
        if moved is not None and moved.exists() and not keep.exists():
            os.replace(moved, keep)  # the kept folder goes back where it was: a failed save loses nothing
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["discard_non_finite_checkpoints", "save_atomically"]
