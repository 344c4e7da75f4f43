"""Identity of files, models and corpora: the hashes that decide whether a cache, an index or a download matches.

* :func:`file_digest`: sha256 (or the git blob sha1 the Hub lists) of a file, streamed.
* :func:`model_fingerprint`: everything that decides a loaded model's embeddings (weights, modules, length, prompts).
* :func:`corpus_fingerprint`: the (id, text) pairs of a corpus, in order.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

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


def corpus_fingerprint(ids: list[str], texts: list[str]) -> str:
    """sha256 over the (id, text) pairs of a corpus, in order."""
    digest = hashlib.sha256()
    for doc_id, text in zip(ids, texts):
        digest.update(doc_id.encode())
        digest.update(b"\0")
        digest.update(text.encode())
        digest.update(b"\1")
    return digest.hexdigest()


__all__ = ["corpus_fingerprint", "file_digest", "model_fingerprint"]
