"""Identity of files, models and corpora: the hashes that decide whether a cache, an index or a download matches.

* :func:`file_digest`: sha256 (or the git blob sha1 the Hub lists) of a file, streamed.
* :func:`model_fingerprint`: everything that decides a loaded model's embeddings (weights, modules, length, prompts).
* :func:`corpus_fingerprint`: the (id, text) pairs of a corpus, in order.
* :func:`file_records`: size, modification time and sha256 of files, re-hashing only those whose size or time
  changed since an earlier record (how an export's artifacts are checked against the torch files they were verified
  against, :mod:`gte_st.export.manifest`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def file_digest(path: str | os.PathLike, algorithm: Literal["sha256", "git-sha1"] = "sha256") -> str:
    """Hex digest of a file: ``"sha256"``, or ``"git-sha1"`` (the git blob id, ``sha1("blob <size>\\0" + bytes)``,
    which the Hub lists for regular files). Read in 1 MiB chunks."""
    path = Path(path)
    if algorithm == "sha256":
        digest = hashlib.sha256()
    elif algorithm == "git-sha1":
        digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    else:
        raise ValueError(f"algorithm must be 'sha256' or 'git-sha1', got {algorithm!r}")
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def model_fingerprint(model: SentenceTransformer) -> str:
    """sha256 of everything that decides a torch model's embeddings: its weights (names and bytes), module types,
    max sequence length and prompts. Models without torch weights (other backends) are identified by their path."""
    import torch

    h = hashlib.sha256()
    h.update(repr([type(m).__name__ for m in model]).encode())
    h.update(repr((model.max_seq_length, sorted(model.prompts.items()), getattr(model, "backend", "torch"))).encode())
    state = model.state_dict()
    if not state:
        h.update(str(getattr(model[0], "auto_model", model[0]).__dict__.get("name_or_path", "")).encode())
        h.update(str(getattr(model.model_card_data, "base_model", "")).encode())
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def file_records(
    root: str | os.PathLike, relative_paths: Iterable[str], known: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """``{path: {"size", "mtime_ns", "ctime_ns", "sha256"}}`` for each of ``relative_paths`` under ``root`` (missing
    files are left out). A file whose size, modification and status-change times all equal its record in ``known``
    keeps that record's sha256 without being read again: writing a file sets its status-change time, which no tool
    can set back, so a rewritten file is always hashed anew."""
    root = Path(root)
    records: dict[str, dict[str, Any]] = {}
    for relative in sorted(relative_paths):
        path = root / relative
        try:
            stat = path.stat()
        except OSError:
            continue
        earlier = (known or {}).get(relative)
        now = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}
        if earlier and all(earlier.get(k) == v for k, v in now.items()) and "sha256" in earlier:
            digest = earlier["sha256"]
        else:
            digest = file_digest(path)
        records[relative] = {**now, "sha256": digest}
    return records


def corpus_fingerprint(ids: list[str], texts: list[str]) -> str:
    """sha256 over the (id, text) pairs of a corpus, in order."""
    digest = hashlib.sha256()
    for doc_id, text in zip(ids, texts):
        digest.update(doc_id.encode())
        digest.update(b"\0")
        digest.update(text.encode())
        digest.update(b"\1")
    return digest.hexdigest()


__all__ = ["corpus_fingerprint", "file_digest", "file_records", "model_fingerprint"]
