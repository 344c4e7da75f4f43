"""File helpers shared by every module that reads user files or writes results: text opening (gzip, BOM) and
atomic writes (a reader never sees a half-written file or directory)."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Open a UTF-8 text file for reading, transparently gunzipping ``*.gz`` and dropping a byte-order mark.

    Newlines are left as they are (``newline=""``), which is what the ``csv`` module needs.
    """
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, fsync it, then rename it onto ``path``."""
    path = Path(path)
    tmp = _temporary_sibling(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, standard JSON (with a final newline) atomically. A NaN or infinity, which JSON
    cannot represent (Python would write the non-standard ``NaN``), is a ``ValueError`` naming the file."""
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"{path}: not written: {exc} (a NaN or infinity has no JSON form)") from None
    atomic_write_text(path, text + "\n")


def atomic_save_npy(path: str | os.PathLike, array: Any) -> None:
    """``numpy.save`` atomically (the file name is kept exactly: no ``.npy`` is appended)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


def replace_directory(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete directory ``new`` at ``target`` with renames on one file system: ``target`` is always either
    absent, the old complete directory or the new one (the old one is deleted last)."""
    new, target = Path(new), Path(target)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


__all__ = [
    "atomic_save_npy",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "open_text",
    "replace_directory",
]
