"""File helpers shared by every module that reads user files or writes results.

The rules every command follows live here, each in one function:

* **A command owns its output and never its inputs** (:func:`check_output_path`): an output path that equals, lies
  inside or contains one of the command's inputs is refused before any work, so nothing a user gave as input can be
  overwritten or deleted by the command that reads it.
* **Paths that come from elsewhere stay inside their root** (:func:`path_inside`): a relative path read from a
  listing (a Hub tree, a manifest) is resolved under its root or refused; it never reaches ``..`` or an absolute path.
* **One writer at a time** (:func:`exclusive_lock`): a directory being built is locked with an OS file lock; a second
  writer gets a one-line error naming the process that holds it.
* **Nothing half-written is ever visible** (:func:`atomic_write_bytes`, :func:`replace_directory`), and the
  leftovers of a process that died mid-write are removed by the next run (:func:`remove_leftovers`).
* Text files are read one way, by :mod:`gte_st.readers` (UTF-8 with file, line and byte offset in errors, gzip, one
  reader per format family).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gte_st.errors import GteStError, UsageError


class ConcurrentWriteError(GteStError, RuntimeError):
    """Another process is writing the same output (it holds the output's lock)."""


class UnsafePathError(GteStError, ValueError):
    """A path read from a listing or manifest would leave the directory it belongs to."""


# Temporary names carry the writing process's id, so that leftovers of a dead process can be told from the files of a
# live one: ``.NAME.tmp-PID`` (atomic writes), ``.NAME.old-PID`` (directory swaps), ``.NAME.partial-PID`` (builds).
_LEFTOVER_RE = re.compile(r"\..+\.(?:tmp|old|partial)-(\d+)")


def _temporary_sibling(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def temporary_sibling(path: str | os.PathLike, kind: str = "tmp") -> Path:
    """``.NAME.<kind>-PID`` next to ``path``: where a new version of ``path`` is built before it is swapped in (on the
    same file system, so the swap is a rename), named so that :func:`remove_leftovers` recognises it."""
    return _temporary_sibling(Path(path), kind)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (zombies and other users' processes count as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(directory: str | os.PathLike, *, of: str | None = None, also: tuple[str, ...] = ()) -> list[Path]:
    """Remove the temporary files and folders that a process which no longer runs left in ``directory``
    (``.NAME.tmp-PID``, ``.NAME.old-PID``, ``.NAME.partial-PID`` whose PID is gone; only those of ``NAME == of``
    when ``of`` is given, for a folder the command does not own, such as the parent of its output), plus every entry
    matching one of the glob patterns ``also`` -- for callers that hold ``directory``'s lock, so no live process can
    own them. Returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        match = _LEFTOVER_RE.fullmatch(entry.name)
        if match is not None and of is not None and not entry.name.startswith(f".{of}."):
            match = None
        dead = match is not None and int(match.group(1)) != os.getpid() and not process_alive(int(match.group(1)))
        if dead or any(entry.match(pattern) for pattern in also):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, fsync it, then rename it onto ``path``."""
    path = Path(path)
    tmp = _temporary_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, interrupted) leaves nothing behind
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf8"))


def non_finite_as_null(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by ``None``, for records that must be written whatever a
    run produced (a training summary after a diverged loss): standard JSON has no NaN, and Python would write the
    non-standard ``NaN`` that strict readers (``jq``, JavaScript) refuse."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: non_finite_as_null(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [non_finite_as_null(value) for value in data]
    return data


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, standard JSON (with a final newline) atomically. A NaN or infinity, which JSON
    cannot represent (Python would write the non-standard ``NaN``), is a ``ValueError`` naming the file."""
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"{path}: not written: {exc} (a NaN or infinity has no JSON form)") from None
    atomic_write_text(path, text + "\n")


def atomic_link(target: str | os.PathLike, alias: str | os.PathLike) -> None:
    """Make ``alias`` a second name of the file ``target``: a hard link (its bytes stored once), or a copy where the
    file system has no hard links. An existing ``alias`` is replaced atomically."""
    tmp = _temporary_sibling(Path(alias))
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
    except OSError:
        shutil.copy2(target, tmp)
    os.replace(tmp, alias)


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
    old = _temporary_sibling(target, "old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(
    output: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None], *, option: str
) -> Path:
    """Refuse an output that equals, lies inside or contains one of ``inputs`` (``{"what it is": path}``; ``None``
    values and inputs that are not local paths, e.g. Hub ids, are skipped). ``option`` names the output in the
    message (``"--out"``, ``"DST"``). Returns the resolved output path.

    Why all three: writing a file over an input destroys it; a directory output is replaced as a whole, so an output
    that contains an input deletes it; and an output inside an input directory changes what the command reads (a
    conversion written into its own source folder, an index built inside the corpus folder it is reading)."""
    out = _resolved(output)
    for what, value in inputs.items():
        if value is None or not Path(value).expanduser().exists():
            continue
        source = _resolved(value)
        if _same(out, source):
            problem = "is the same path as"
        elif source.is_relative_to(out):
            problem = "contains"
        elif out.is_relative_to(source) and source.is_dir():
            problem = "lies inside"
        else:
            continue
        raise UsageError(f"{option} {output} {problem} the {what} {value}; write the output somewhere else")
    return out


def path_inside(root: str | os.PathLike, relative: str, *, where: str = "") -> Path:
    """``root / relative`` for a relative path that came from elsewhere (a Hub listing, a manifest), refused with
    :class:`UnsafePathError` when it is absolute, has a ``..`` part, or its folder resolves (through symlinks) outside
    ``root``. The last component may itself be a symlink (the Hugging Face cache links snapshot files to its blobs):
    whoever deletes through it checks the target (see :func:`gte_st.hub.verify_snapshot`)."""
    root_path = Path(root)
    candidate = Path(relative)
    label = f"{where}: " if where else ""
    if not relative or candidate.is_absolute() or ".." in candidate.parts or "\\" in relative or "\x00" in relative:
        raise UnsafePathError(f"{label}refusing the path {relative!r}: it is not a plain path inside {root_path}")
    full = root_path / candidate
    if not full.parent.resolve().is_relative_to(root_path.resolve()):
        raise UnsafePathError(f"{label}refusing the path {relative!r}: it resolves outside {root_path}")
    return full


def check_path_component(name: str, *, what: str) -> str:
    """``name`` when it is usable as one folder name (no separator, not ``.``/``..``, not empty, no NUL); a
    :class:`~gte_st.errors.UsageError` naming ``what`` otherwise."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or os.sep in name:
        raise UsageError(f"{what} {name!r} is not a plain folder name (no '/', '\\', '..' or empty names)")
    return name


def _lock_holder(lock_file: Path) -> str:
    try:
        return lock_file.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def exclusive_lock(
    target: str | os.PathLike, *, doing: str = "written", lock_file: str | os.PathLike | None = None
) -> Iterator[Path]:
    """Hold an exclusive OS lock (``flock``) on ``target`` for the duration of the block, through a lock file --
    ``.NAME.lock`` beside it unless ``lock_file`` names another (e.g. one inside a folder the command writes into) --
    that records the holder's process id and is removed on exit. A second process gets a
    :class:`ConcurrentWriteError`: ``"<target> is being <doing> by process <pid>"``. The lock dies with its process,
    so a killed writer never blocks the next run."""
    target = Path(target)
    lock_file = Path(lock_file) if lock_file is not None else target.with_name(f".{target.name}.lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise ConcurrentWriteError(
                f"{target} is being {doing} by process {_lock_holder(lock_file)}; wait for it to finish"
            ) from None
        # The holder before us may have removed the file after we opened it: then our lock is on a dead inode.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield lock_file
    finally:
        with contextlib.suppress(OSError):
            lock_file.unlink()
        os.close(fd)


__all__ = [
    "ConcurrentWriteError",
    "UnsafePathError",
    "check_output_path",
    "check_path_component",
    "exclusive_lock",
    "path_inside",
    "process_alive",
    "remove_leftovers",
    "temporary_sibling",
    "atomic_link",
    "atomic_save_npy",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "replace_directory",
]
