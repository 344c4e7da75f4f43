"""The weight files of a model or checkpoint folder: which one cannot be read, and why, named in one line.

Loading libraries report a damaged or refused file without naming it (``SafetensorError: Error while deserializing
header``, ``UnpicklingError: Weights only load failed ...``); gte-st checks the safetensors headers of a model folder
before any work (cheap: only the headers are read) and, when a load or a save fails anyway, finds the file at fault.
The refusal of a pickle that ``torch.load(weights_only=True)`` does not trust is right and stays: only the message
changes.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

from gte_st.errors import GteStError

# Pickled tensors in model folders and Trainer checkpoints (weights, optimizer, scheduler, RNG state).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


class WeightFileError(GteStError, OSError):
    """A weight file cannot be read (incomplete, corrupted, refused) or written (disk full); the message names it."""


def _safetensors_error() -> type[BaseException]:
    from safetensors import SafetensorError

    return SafetensorError


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's refusals run to a paragraph)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first.split(". ")[0].rstrip(".")


def check_safetensors(folder: str | os.PathLike) -> None:
    """Read the header of every ``*.safetensors`` file under ``folder``; a file that is not a complete safetensors
    file (half-written, truncated, another format) is a :class:`WeightFileError` naming it."""
    from safetensors import safe_open

    for path in sorted(Path(folder).rglob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as f:
                f.keys()
        except (_safetensors_error(), OSError) as exc:
            raise WeightFileError(
                f"{path}: not a complete safetensors file ({_first_line(exc)}); it may be half-written: save or "
                "download it again"
            ) from None


def unreadable_pickle(folder: str | os.PathLike) -> tuple[Path, BaseException] | None:
    """The first pickled file under ``folder`` (:data:`PICKLE_SUFFIXES`) that ``torch.load(weights_only=True)``
    refuses or cannot read, with the reason; None when every one loads."""
    import torch

    for path in sorted(p for p in Path(folder).rglob("*") if p.suffix in PICKLE_SUFFIXES and p.is_file()):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- any reason a load fails is the answer
            return path, exc
    return None


@contextlib.contextmanager
def naming_weight_files(folder: str | os.PathLike, *, doing: str = "loading") -> Iterator[None]:
    """Turn a weight-file failure inside the block (loading or saving ``folder``) into a :class:`WeightFileError`
    that names the file and says what to do."""
    try:
        yield
    except pickle.UnpicklingError as exc:
        found = unreadable_pickle(folder)
        where = found[0] if found else Path(folder)
        raise WeightFileError(
            f"{where}: refused by torch.load(weights_only=True) ({_first_line(found[1] if found else exc)}); "
            "gte-st does not unpickle files that could run code: re-save it with safetensors from a trusted copy"
        ) from None
    except _safetensors_error() as exc:
        if doing == "loading":
            check_safetensors(folder)
        reason = "is the disk full or a file size limit set?" if doing == "saving" else "save it again"
        raise WeightFileError(f"{folder}: {doing} a safetensors file failed ({_first_line(exc)}); {reason}") from None


__all__ = ["PICKLE_SUFFIXES", "WeightFileError", "check_safetensors", "naming_weight_files", "unreadable_pickle"]
