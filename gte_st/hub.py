"""Publishing GTE models and training checkpoints to the Hugging Face Hub, and pulling them back by revision.

Everything goes through ``huggingface_hub``'s own client (``HfApi``, ``snapshot_download``), so ``HF_ENDPOINT``,
``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and the token from ``HF_TOKEN`` or ``hf auth login`` work as
usual. The token is only handed to the client: it is never printed, logged or written, and an upload that contains
it (e.g. a ``training_args.bin`` pickled with ``hub_token``) is refused.

Python::

    from gte_st.hub import pull_model, push_model

    push_model("gte", "me/gte-small", revision="v1")          # one commit: weights, configs, tokenizer, ONNX, card
    path = pull_model("me/gte-small", revision="v1")          # verified snapshot (from the cache when offline)

CLI: ``gte-st push`` / ``gte-st pull`` (:mod:`gte_st.commands.push`, :mod:`gte_st.commands.pull`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from gte_st.checkpoints import CHECKPOINT_RE, latest_checkpoint_name
from gte_st.files import path_inside
from gte_st.fingerprint import file_digest

logger = logging.getLogger(__name__)

PICKLED_WEIGHTS_RE = re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin(\.index\.json)?")
# Trainer state that belongs in checkpoints, not in a published model.
TRAINER_STATE_FILES = {"optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", "scaler.pt"}


class CorruptDownloadError(OSError):
    """A downloaded file does not match the size/hash the Hub lists for it."""


def require_token(token: str | None = None) -> str:
    """The token to upload with: ``token``, else ``HF_TOKEN`` / the stored login; a clear error when there is none."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import LocalTokenNotFoundError

    token = token or get_token()
    if not token:
        raise LocalTokenNotFoundError(
            "No Hugging Face token found: uploading needs a token with write access. Set the HF_TOKEN environment "
            "variable or run `hf auth login` (nothing was uploaded)."
        )
    return token


def _api(token: str | bool | None = None) -> Any:
    from huggingface_hub import HfApi

    return HfApi(token=token, library_name="gte-st", library_version=_version())


def _version() -> str:
    from gte_st import __version__

    return __version__


def _assert_token_absent(files: dict[str, Path], token: str) -> None:
    """Refuse to upload any file that contains the token (checked in 1 MiB chunks, with overlap)."""
    needle = token.encode()
    if len(needle) < 8:  # too short to be a real token: matches would be noise
        return
    for path_in_repo, path in files.items():
        with open(path, "rb") as f:
            tail = b""
            while chunk := f.read(1 << 20):
                if needle in tail + chunk:
                    raise ValueError(
                        f"{path} ({path_in_repo}) contains your Hugging Face token; refusing to upload it. Remove the "
                        "token from that file (e.g. do not pass `hub_token` to TrainingArguments) and retry."
                    )
                tail = chunk[-(len(needle) - 1) :]


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in relative.parts)


def model_files(model_dir: str | os.PathLike) -> dict[str, Path]:
    """The files of a saved model that a push publishes, keyed by path in the repo (README.md excluded: the card is
    rendered). Raises ``ValueError`` when the directory is not a portable sentence-transformers model with
    safetensors weights."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    if not (model_dir / "modules.json").is_file():
        raise ValueError(f"{model_dir} is not a sentence-transformers model directory (no modules.json)")
    custom = [
        m["type"]
        for m in json.loads((model_dir / "modules.json").read_text())
        if not m["type"].startswith("sentence_transformers.")
    ]
    if custom:
        raise ValueError(
            f"{model_dir}/modules.json uses non-stock modules {custom}: the model would need gte-st (or custom "
            "code) to load. Save it with GTEModel.save (gte_st.build_model(...).save(path)) for the portable layout."
        )
    files: dict[str, Path] = {}
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if not path.is_file() or _is_hidden(relative) or CHECKPOINT_RE.fullmatch(relative.parts[0]):
            continue
        if relative.as_posix() == "README.md" or relative.name in TRAINER_STATE_FILES:
            continue
        if relative.name.startswith("rng_state") and relative.suffix == ".pth":
            continue
        files[relative.as_posix()] = path
    safetensors = [p for p in files if p.endswith(".safetensors")]
    if not safetensors:
        raise ValueError(
            f"{model_dir} has no safetensors weights (model.safetensors); re-save the model with safetensors"
        )
    for pickled in [p for p in files if PICKLED_WEIGHTS_RE.fullmatch(p.rsplit("/", 1)[-1])]:
        del files[pickled]  # safetensors weights are published instead of pickles
    return files


def _commit(
    api: Any,
    repo_id: str,
    files: dict[str, Path | bytes],
    *,
    revision: str,
    commit_message: str,
    create_pr: bool = False,
    delete_stale_under: str | None = None,
) -> Any:
    """One atomic commit of ``files`` onto branch ``revision``; optionally deletes the other files under a prefix."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, RepoFile

    operations: list[Any] = [
        CommitOperationAdd(
            path_in_repo=path_in_repo, path_or_fileobj=source if isinstance(source, bytes) else str(source)
        )
        for path_in_repo, source in files.items()
    ]
    if delete_stale_under is not None:
        remote = [
            entry.path
            for entry in api.list_repo_tree(repo_id, revision=revision, recursive=True)
            if isinstance(entry, RepoFile)
        ]
        stale = [p for p in remote if p.startswith(delete_stale_under) and p not in files and p != ".gitattributes"]
        operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
    return api.create_commit(
        repo_id, operations, commit_message=commit_message, revision=revision, create_pr=create_pr
    )


def _prepare_repo(api: Any, repo_id: str, branch: str, private: bool | None) -> None:
    api.create_repo(repo_id, private=private, exist_ok=True)
    if branch != "main":
        api.create_branch(repo_id, branch=branch, exist_ok=True)


def push_model(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    license: str | None = None,
) -> str:
    """Publish a saved GTE model directory in one atomic commit.

    The commit holds the safetensors weights, the tokenizer and sentence-transformers configs (portable layout),
    ``onnx/`` files when present, ``training_summary.json`` / ``eval_results.json`` when present, and a ``README.md``
    rendered from ``model_cards/`` by :func:`gte_st.model_card.render_model_card`. Files of an earlier push that the
    model no longer has are deleted in the same commit, so the revision mirrors the directory. The directory itself
    is never modified.

    Args:
        model_dir: The saved model.
        repo_id: ``namespace/name`` on the Hub; created (``private`` or public) when missing.
        revision: Branch to push to (created from ``main`` when missing); defaults to ``main``.
        private: Create the repository as private (ignored when it exists).
        create_pr: Open a pull request against ``revision`` instead of committing to it.
        commit_message: Defaults to ``"Upload GTE model with gte-st <version>"``.
        token: Defaults to ``HF_TOKEN`` / the stored login.
        license: Licence for the card; defaults to the base model's.

    Returns:
        The URL of the commit (of the pull request with ``create_pr``).
    """
    from gte_st.model_card import render_model_card

    files: dict[str, Path | bytes] = dict(model_files(model_dir))  # the directory is checked before the token
    token = require_token(token)
    _assert_token_absent(files, token)  # type: ignore[arg-type]
    files["README.md"] = render_model_card(model_dir, repo_id=repo_id, license=license).encode()
    branch = revision or "main"
    api = _api(token)
    try:
        _prepare_repo(api, repo_id, branch, private)
        info = _commit(
            api,
            repo_id,
            files,
            revision=branch,
            commit_message=commit_message or f"Upload GTE model with gte-st {_version()}",
            create_pr=create_pr,
            delete_stale_under="",
        )
    except Exception as exc:
        raise RuntimeError(
            f"push of {model_dir} to {repo_id}@{branch} failed ({type(exc).__name__}: {exc}). Hub commits are "
            f"atomic: the remote revision is unchanged (unless the connection dropped after the Hub had accepted "
            f"the whole commit); {model_dir} was not modified."
        ) from exc
    logger.info(f"Pushed {model_dir} to {repo_id}@{branch}: {info.commit_url}")
    return str(info.pr_url if create_pr else info.commit_url)


def push_checkpoint(
    checkpoint_dir: str | os.PathLike,
    repo_id: str,
    *,
    branch: str = "checkpoints",
    token: str | None = None,
    private: bool | None = None,
) -> str:
    """Upload one Trainer checkpoint folder (``checkpoint-<step>``) under ``checkpoint-<step>/`` on ``branch``.

    The folder is uploaded as is (weights, optimizer, scheduler, RNG and trainer state), in one commit, so
    :func:`pull_latest_checkpoint` + ``trainer.train(resume_from_checkpoint=path)`` resumes exactly like a local
    resume. Returns the commit URL.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not CHECKPOINT_RE.fullmatch(checkpoint_dir.name) or not checkpoint_dir.is_dir():
        raise ValueError(f"{checkpoint_dir} is not a Trainer checkpoint folder named checkpoint-<step>")
    token = require_token(token)
    files = {
        f"{checkpoint_dir.name}/{path.relative_to(checkpoint_dir).as_posix()}": path
        for path in sorted(checkpoint_dir.rglob("*"))
        if path.is_file() and not _is_hidden(path.relative_to(checkpoint_dir))
    }
    _assert_token_absent(files, token)
    api = _api(token)
    try:
        _prepare_repo(api, repo_id, branch, private)
        info = _commit(
            api,
            repo_id,
            dict(files),
            revision=branch,
            commit_message=f"Training checkpoint {checkpoint_dir.name}",
            delete_stale_under=f"{checkpoint_dir.name}/",
        )
    except Exception as exc:
        raise RuntimeError(
            f"push of {checkpoint_dir} to {repo_id}@{branch} failed ({type(exc).__name__}: {exc}). Hub commits are "
            "atomic: the remote branch is unchanged (unless the connection dropped after the Hub had accepted the "
            "whole commit)."
        ) from exc
    return str(info.commit_url)


def split_repo_revision(spec: str) -> tuple[str, str | None]:
    """``"me/gte@v2"`` -> ``("me/gte", "v2")``; ``"me/gte"`` -> ``("me/gte", None)`` (``--resume-from-hub`` syntax)."""
    repo_id, _, revision = spec.partition("@")
    if not repo_id or (_ and not revision):
        raise ValueError(f"expected REPO_ID or REPO_ID@REVISION, got {spec!r}")
    return repo_id, revision or None


def _remote_listing(api: Any, repo_id: str, commit: str, local_dir: Path | None, cache_dir: str | None) -> dict:
    """path -> (size, git blob sha1, lfs sha256 or None) of ``repo_id`` at ``commit``: from the Hub when online, else
    from the listing ``snapshot_download`` cached next to the files."""
    from huggingface_hub import RepoFile, constants

    if not constants.is_offline_mode():
        return {
            entry.path: (entry.size, entry.blob_id, entry.lfs.sha256 if entry.lfs else None)
            for entry in api.list_repo_tree(repo_id, revision=commit, recursive=True)
            if isinstance(entry, RepoFile)
        }
    try:
        from huggingface_hub._tree_cache import read_tree_cache, tree_cache_folder_for_local_dir
        from huggingface_hub.file_download import repo_folder_name
    except ImportError:  # another huggingface_hub layout: nothing to verify against offline
        return {}
    folder = (
        tree_cache_folder_for_local_dir(str(local_dir))
        if local_dir is not None
        else os.path.join(cache_dir or constants.HF_HUB_CACHE, repo_folder_name(repo_id=repo_id, repo_type="model"))
    )
    entries = read_tree_cache(folder, commit) or {}
    return {path: (e.size, e.blob_id, e.lfs_sha256) for path, e in entries.items()}


def _discard(local_file: Path, root: Path, local_dir: Path | None, relative: str) -> None:
    """Remove a bad download (and its cache blob / local_dir metadata) so that the next pull fetches it again."""
    if local_file.is_symlink():
        # A cache snapshot links to its repository's blobs/ folder; a link pointing anywhere else is only unlinked.
        target = local_file.resolve()
        if local_dir is None and target.parent == root.parent.parent.resolve() / "blobs":
            target.unlink(missing_ok=True)
    local_file.unlink(missing_ok=True)
    if local_dir is not None:
        metadata = path_inside(local_dir / ".cache" / "huggingface" / "download", f"{relative}.metadata")
        metadata.unlink(missing_ok=True)


def verify_snapshot(
    root: str | os.PathLike, listing: dict[str, tuple[int, str, str | None]], *, prefix: str = "", where: str = ""
) -> int:
    """Check every listed file under ``prefix`` against its size and hash (sha256 for LFS files, git blob sha1
    otherwise). A bad file is removed and :class:`CorruptDownloadError` raised. Returns the number of files checked."""
    root = Path(root)
    local_dir = root if not (root.parent.name == "snapshots") else None
    # Every path of the listing must name a file inside the snapshot before any file is read or removed: the listing
    # comes from the network, where huggingface_hub's own checks of the paths it downloads do not apply.
    selected = {
        relative: (path_inside(root, relative, where=f"{where} listing" if where else "Hub listing"), entry)
        for relative, entry in sorted(listing.items())
        if relative.startswith(prefix)
    }
    checked = 0
    for relative, (local_file, (size, blob_id, lfs_sha256)) in selected.items():
        if not local_file.is_file():
            raise CorruptDownloadError(f"{relative} of {where} is listed on the Hub but missing from {root}")
        algorithm, expected = ("sha256", lfs_sha256) if lfs_sha256 else ("git-sha1", blob_id)
        actual, actual_size = file_digest(local_file, algorithm), local_file.stat().st_size
        if (size is not None and actual_size != size) or expected != actual:
            _discard(local_file, root, local_dir, relative)
            raise CorruptDownloadError(
                f"{relative} of {where} is corrupted: got {actual_size} bytes with {algorithm} {actual}, the Hub "
                f"lists {size} bytes with {expected}. The bad copy was removed from the cache; pull again."
            )
        checked += 1
    return checked


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The network errors of the HTTP client huggingface_hub uses (httpx, or httpx2 in huggingface_hub 2.x)."""
    errors: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def download_snapshot(
    repo_id: str,
    revision: str | None,
    *,
    local_dir: str | os.PathLike | None,
    token: str | None,
    allow_patterns: list[str] | None = None,
    cache_dir: str | None = None,
) -> tuple[Path, str, dict]:
    """Resolve ``revision``, download (or find in the cache when offline) and verify every file against the Hub's
    listing (:func:`verify_snapshot`). Returns (path, commit, listing). What :func:`pull_model`,
    :func:`pull_latest_checkpoint` and :func:`gte_st.load` download goes through here."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RevisionResolutionError

    api = _api(token)
    offline = constants.is_offline_mode()
    where = f"{repo_id}@{revision or 'main'}"
    try:
        resolved = api.resolve_revision(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline)
        path = snapshot_download(
            repo_id,
            revision=resolved,
            local_dir=local_dir,
            cache_dir=cache_dir,
            token=token,
            allow_patterns=allow_patterns,
            library_name="gte-st",
            library_version=_version(),
        )
    except (LocalEntryNotFoundError, RevisionResolutionError) as exc:
        if offline:
            raise FileNotFoundError(
                f"{where} is not in the local Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE}) and "
                "HF_HUB_OFFLINE=1 forbids downloading it: pull it once while online, or unset HF_HUB_OFFLINE."
            ) from exc
        raise
    except _transport_errors() as exc:  # the connection dropped, a body ended early, a timeout, ...
        raise ConnectionError(
            f"download of {where} failed ({type(exc).__name__}: {exc}); what was already complete is kept, pull again"
        ) from exc
    commit = resolved.resolved
    listing = _remote_listing(api, repo_id, commit, Path(local_dir) if local_dir else None, cache_dir)
    if allow_patterns is not None:
        from huggingface_hub.utils import filter_repo_objects

        listing = {p: listing[p] for p in filter_repo_objects(list(listing), allow_patterns=allow_patterns)}
    if not listing:
        logger.warning(f"{where}: no file listing to verify {path} against (none cached with the snapshot)")
    verify_snapshot(path, listing, where=f"{where} ({commit[:8]})")
    return Path(path), commit, listing


def pull_model(
    repo_id: str, *, revision: str | None = None, local_dir: str | os.PathLike | None = None, token: str | None = None
) -> Path:
    """Download a model snapshot (into the Hugging Face cache, or ``local_dir``) and verify every file against the
    Hub's listing (size + git blob sha1 / LFS sha256). With ``HF_HUB_OFFLINE=1`` the cached snapshot of
    ``revision`` is used (a clear ``FileNotFoundError`` when it was never pulled). Returns the snapshot folder,
    loadable with ``SentenceTransformer(path)``."""
    path, commit, _ = download_snapshot(repo_id, revision, local_dir=local_dir, token=token)
    logger.info(f"Pulled {repo_id}@{revision or 'main'} ({commit}) to {path}")
    return path


def pull_latest_checkpoint(
    repo_id: str, *, revision: str = "checkpoints", local_dir: str | os.PathLike, token: str | None = None
) -> Path:
    """Download the highest ``checkpoint-<step>/`` of ``revision`` into ``local_dir`` and verify it. Returns the
    checkpoint folder, ready for ``trainer.train(resume_from_checkpoint=path)``. Offline, the highest checkpoint
    already pulled into ``local_dir`` is returned."""
    from huggingface_hub import RepoFolder, constants

    local_dir = Path(local_dir)
    if constants.is_offline_mode():
        name = latest_checkpoint_name([p.name for p in local_dir.glob("checkpoint-*") if p.is_dir()])
        if name is None:
            raise FileNotFoundError(
                f"HF_HUB_OFFLINE=1 and no checkpoint of {repo_id}@{revision} was pulled into {local_dir} before"
            )
        return local_dir / name
    api = _api(token)
    resolved = api.resolve_revision(repo_id, revision=revision)
    folders = [e.path for e in api.list_repo_tree(repo_id, revision=resolved.resolved) if isinstance(e, RepoFolder)]
    name = latest_checkpoint_name(folders)
    if name is None:
        raise FileNotFoundError(f"{repo_id}@{revision} has no checkpoint-<step>/ folder (found: {folders})")
    path, _, _ = download_snapshot(
        repo_id, resolved.resolved, local_dir=local_dir, token=token, allow_patterns=[f"{name}/*"]
    )
    return path / name


__all__ = [
    "CorruptDownloadError",
    "download_snapshot",
    "model_files",
    "pull_latest_checkpoint",
    "pull_model",
    "push_checkpoint",
    "push_model",
    "require_token",
    "split_repo_revision",
    "verify_snapshot",
]
