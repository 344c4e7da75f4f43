"""``gte_st.load``: any GTE model as a plain ``SentenceTransformer``, without ``trust_remote_code``.

A checkpoint in the original remote-code layout (``model_type: new``: gte-base/large-en-v1.5, gte-multilingual-base
and their fine-tunes) is converted once with :func:`gte_st.convert.convert_checkpoint` into a local cache and loaded
from there; everything else (BERT-style GTE models, native ``gte``, ModernBERT, any sentence-transformers model)
loads exactly as ``SentenceTransformer(name_or_path)`` would.

The cache lives in ``$GTE_ST_CACHE`` or else ``$HF_HOME/gte_st/converted``: Hub models under
``<namespace>--<name>/<commit>`` (with ``refs/<revision>`` naming the commit a branch or tag resolved to, so that
``HF_HUB_OFFLINE=1`` finds them again), local directories under ``local/<fingerprint>`` (their path and the size
and modification time of their config and weights).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from gte_st.convert import convert_checkpoint, is_original_layout
from gte_st.weights import check_safetensors, naming_weight_files

logger = logging.getLogger(__name__)

# What a conversion needs from a Hub snapshot: configs, weights, tokenizer; never the remote code or exports.
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "pytorch_model*.bin", "*.txt", "*.model"]


# A tokenizer is one of these files (fast tokenizers, WordPiece, SentencePiece, byte-level BPE).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def _transformer_folder(model_dir: Path) -> Path:
    """The folder of a model directory's transformer module (``modules.json``'s first entry; the directory itself for
    a bare Hugging Face encoder)."""
    modules = model_dir / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
            return model_dir / (entries[0].get("path") or "")
        except (ValueError, IndexError, AttributeError, TypeError):
            raise ValueError(f"{modules}: not a readable modules.json") from None
    return model_dir


def check_model_location(name_or_path: str | os.PathLike, *, option: str = "model") -> None:
    """Fail early, before anything is loaded, when ``name_or_path`` cannot be a model: a path that does not exist, a
    folder without ``modules.json`` / ``config.json``, or a model folder without tokenizer files (a model loaded
    without its tokenizer maps every word to [UNK] and scores nonsense without a word). Hub ids pass (they are
    checked when they load)."""
    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir() or not ((local / "modules.json").is_file() or (local / "config.json").is_file()):
            raise FileNotFoundError(f"{option} {name} is not a model directory (no modules.json or config.json)")
        folder = _transformer_folder(local)
        check_safetensors(local)
        has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
        if not has_bpe and not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"{option} {name} has no tokenizer files in {folder} ({', '.join(TOKENIZER_FILES)} or "
                "vocab.json + merges.txt); save the model with its tokenizer (model.save / tokenizer.save_pretrained)"
            )
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{option} directory {name} does not exist")


def converted_cache_dir() -> Path:
    """Where converted checkpoints are kept: ``$GTE_ST_CACHE``, else ``$HF_HOME/gte_st/converted``."""
    from huggingface_hub import constants

    return Path(os.environ.get("GTE_ST_CACHE") or Path(constants.HF_HOME) / "gte_st" / "converted")


def _local_key(path: Path) -> str:
    digest = hashlib.sha256(str(path.resolve()).encode())
    for name in sorted(p.name for p in path.iterdir() if p.is_file()):
        if name == "config.json" or name.endswith((".safetensors", ".bin", ".index.json")):
            stat = (path / name).stat()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _convert_into(cache_entry: Path, src: Path) -> Path:
    """Convert ``src`` into ``cache_entry`` atomically (a concurrent conversion of the same entry is harmless)."""
    if (cache_entry / "modules.json").is_file() or (cache_entry / "config.json").is_file():
        return cache_entry
    cache_entry.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_entry.with_name(f"{cache_entry.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    convert_checkpoint(src, partial)
    try:
        os.replace(partial, cache_entry)
    except OSError:  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
    logger.info(f"Converted {src} (original GTE layout) into {cache_entry}")
    return cache_entry


def _hub_entry(repo_id: str, revision: str | None, token: str | bool | None) -> tuple[Path | None, Path | None]:
    """``(cache_entry, snapshot)`` for a Hub model in the original layout, ``(None, None)`` for any other model.

    Only ``config.json`` is fetched to decide; the full snapshot only when the commit is not converted yet. Offline,
    a converted commit is found through ``refs/<revision>`` even when the Hugging Face cache no longer holds it.
    """
    from huggingface_hub import constants

    from gte_st.hub import download_snapshot

    root = converted_cache_dir() / repo_id.replace("/", "--")
    ref = root / "refs" / (revision or "main")
    try:
        path, commit, _ = download_snapshot(
            repo_id, revision, local_dir=None, token=token, allow_patterns=["config.json"]
        )
    except FileNotFoundError:
        if constants.is_offline_mode() and ref.is_file() and (root / ref.read_text().strip()).is_dir():
            return root / ref.read_text().strip(), None
        raise
    config = path / "config.json"
    if not config.is_file() or not is_original_layout(json.loads(config.read_text(encoding="utf-8"))):
        return None, None
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    entry = root / commit
    if entry.is_dir():
        return entry, None
    snapshot, _, _ = download_snapshot(repo_id, commit, local_dir=None, token=token, allow_patterns=SNAPSHOT_PATTERNS)
    return entry, snapshot


def load(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    **kwargs: Any,
) -> Any:
    """Load any GTE model as a plain ``SentenceTransformer``; original-layout checkpoints are converted first.

    Args:
        name_or_path: A local model directory or a Hub repository id.
        revision: Hub branch, tag or commit.
        token: Hub token for private repositories.
        **kwargs: Passed on to ``SentenceTransformer(...)`` (``device``, ``model_kwargs``, ``truncate_dim``, ...).
            ``trust_remote_code`` is refused: nothing here runs remote code.

    Returns:
        A ``sentence_transformers.SentenceTransformer``. For an original-layout checkpoint it is loaded from the
        converted copy in :func:`converted_cache_dir` (converted on first use, then reused, also offline).

    Example::

        import gte_st

        model = gte_st.load("Alibaba-NLP/gte-base-en-v1.5")   # converted once, CLS pooling kept
        embeddings = model.encode(["what is a text embedding?"])
    """
    from sentence_transformers import SentenceTransformer

    if kwargs.pop("trust_remote_code", False):
        raise ValueError("gte_st.load never runs remote code; drop trust_remote_code")
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        config = local / "config.json"
        if config.is_file() and is_original_layout(json.loads(config.read_text(encoding="utf-8"))):
            entry = _convert_into(converted_cache_dir() / "local" / _local_key(local), local)
            return SentenceTransformer(str(entry), **kwargs)
        with naming_weight_files(local):
            return SentenceTransformer(str(local), **kwargs)
    if local.exists() or str(name_or_path).startswith((".", "/", "~")):
        raise FileNotFoundError(f"model directory {name_or_path} does not exist")
    repo_id = str(name_or_path)
    entry, snapshot = _hub_entry(repo_id, revision, token)
    if entry is None:
        return SentenceTransformer(repo_id, revision=revision, token=token, **kwargs)
    if snapshot is not None:
        _convert_into(entry, snapshot)
    return SentenceTransformer(str(entry), **kwargs)


__all__ = ["SNAPSHOT_PATTERNS", "TOKENIZER_FILES", "check_model_location", "converted_cache_dir", "load"]
