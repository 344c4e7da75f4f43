"""What an export verified, recorded next to its artifacts, and whether an artifact may still be used.

Every variant :func:`gte_st.export.export` writes gets an entry in ``gte_st_export.json`` (in the transformer folder,
beside ``onnx/`` and ``openvino/``), keyed by variant name (``openvino-int8-static``, ``onnx-O2``, ...):

* the gate: minimum / mean cosine against the torch model on the parity sample, the threshold it was judged by, the
  precision class and the precision it was run in;
* the artifact's files with their size, modification time and sha256;
* the torch model it was verified against: :func:`gte_st.fingerprint.model_fingerprint` of the loaded model and the
  records (:func:`gte_st.fingerprint.file_records`) of the files it is loaded from (weights, configs, tokenizer;
  everything in the model folder but the artifacts, hidden files, ``README.md`` and ``checkpoints/``).

:func:`usable_artifacts` is the rule ``backend="auto"`` (:mod:`gte_st.export.auto`) applies: an artifact is used only
when its gate passed at the default threshold of its precision class (:data:`~gte_st.export.parity.PARITY_THRESHOLDS`;
an export run with a lowered ``--threshold`` is recorded but not trusted), its files are the ones that were gated,
and the torch files are the ones it was verified against -- a model folder whose weights changed since the export
(a further training run saved into it, a hand edit) keeps its artifacts on disk, but they are *stale* and never used.

Example::

    from gte_st.export.manifest import usable_artifacts

    usable, rejected = usable_artifacts("my-gte")
    # usable: [ArtifactRecord(variant='openvino-int8-static', file_name='openvino/...xml', ...)]
    # rejected: {'onnx-O2': 'stale: model.safetensors changed since the export verified it'}
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gte_st.export.parity import PARITY_THRESHOLDS
from gte_st.export.runtime import transformer_subdir
from gte_st.files import atomic_write_json
from gte_st.fingerprint import file_records

MANIFEST_FILE = "gte_st_export.json"
MANIFEST_FORMAT = "gte-st-export"
MANIFEST_VERSION = 1
ARTIFACT_FOLDERS = ("onnx", "openvino")
# Files and folders of a model directory that do not decide the torch model's embeddings.
NOT_MODEL_FILES = ("README.md", "checkpoints")


def manifest_path(model_dir: str | Path) -> Path:
    """``gte_st_export.json`` in the model's transformer folder (where ``onnx/`` and ``openvino/`` are)."""
    model_dir = Path(model_dir)
    return model_dir / transformer_subdir(model_dir) / MANIFEST_FILE


def model_file_paths(model_dir: str | Path) -> list[str]:
    """The files (relative to ``model_dir``) the torch model is loaded from: every file of the folder except the
    exported artifacts (``onnx/``, ``openvino/`` of the transformer folder), the manifest, hidden files and folders
    (locks, work folders), ``README.md`` and ``checkpoints/``."""
    model_dir = Path(model_dir)
    transformer = Path(transformer_subdir(model_dir))
    skipped = {transformer / folder for folder in ARTIFACT_FOLDERS} | {transformer / MANIFEST_FILE}
    skipped |= {Path(name) for name in NOT_MODEL_FILES}
    paths = []
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if any(relative == skip or skip in relative.parents for skip in skipped):
            continue
        paths.append(relative.as_posix())
    return paths


def artifact_files(file_name: str) -> list[str]:
    """The files of an artifact (relative to the transformer folder): an IR is its ``.xml`` and ``.bin``."""
    path = Path(file_name)
    return [path.as_posix(), path.with_suffix(".bin").as_posix()] if path.suffix == ".xml" else [path.as_posix()]


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    """The manifest of ``model_dir`` (an empty one when there is none or it cannot be read)."""
    import json

    try:
        data = json.loads(manifest_path(model_dir).read_text(encoding="utf8"))
    except (OSError, ValueError):
        data = None
    if (
        not isinstance(data, dict)
        or data.get("format") != MANIFEST_FORMAT
        or not isinstance(data.get("variants"), dict)
    ):
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "variants": {}}
    return data


def record_variants(
    model_dir: str | Path,
    variants: list[Any],
    *,
    torch_fingerprint: str,
    model_files: dict[str, dict[str, Any]],
    parity_texts: int,
    run_precisions: dict[str, str | None],
    gte_st_version: str,
) -> Path:
    """Add (or replace) the entries of the written ``variants`` (:class:`~gte_st.export.variants.VariantReport`) in
    the manifest, atomically. The caller holds the model folder's export lock and has moved the files into place."""
    model_dir = Path(model_dir)
    root = model_dir / transformer_subdir(model_dir)
    manifest = read_manifest(model_dir)
    date = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    for variant in variants:
        if not variant.written:
            continue
        manifest["variants"][variant.variant] = {
            "file_name": variant.file_name,
            "files": file_records(root, artifact_files(variant.file_name)),
            "precision": variant.precision,
            "run_precision": run_precisions.get(variant.variant),
            "min_cosine": variant.min_cosine,
            "mean_cosine": variant.mean_cosine,
            "threshold": variant.threshold,
            "passed": variant.min_cosine >= variant.threshold,
            "parity_texts": parity_texts,
            "torch_fingerprint": torch_fingerprint,
            "model_files": model_files,
            "details": {k: v for k, v in variant.details.items() if k in ("inference_precision", "fused_operators")},
            "exported": date,
            "gte_st_version": gte_st_version,
        }
    path = manifest_path(model_dir)
    atomic_write_json(path, manifest)
    return path


@dataclass(frozen=True)
class ArtifactRecord:
    """A verified, fresh artifact of a model folder: its variant, file (relative to the transformer folder), the
    precision its gate ran it in (OpenVINO's ``INFERENCE_PRECISION_HINT``; ``None``: OpenVINO's default) and the
    gate's minimum cosine; ``digest`` identifies its files."""

    variant: str
    file_name: str
    run_precision: str | None
    min_cosine: float
    precision: str
    digest: str


def _rejection(model_dir: Path, entry: dict[str, Any], current: dict[str, dict[str, Any]]) -> str | None:
    """Why the artifact of ``entry`` may not be used, or ``None``."""
    precision = entry.get("precision", "int8")
    default = PARITY_THRESHOLDS.get(precision, max(PARITY_THRESHOLDS.values()))
    min_cosine = float(entry.get("min_cosine", -1.0))
    if not entry.get("passed") or min_cosine < default:
        return f"its gate gave minimum cosine {min_cosine:.5f}, below the default {precision} gate {default}"
    recorded = entry.get("model_files") or {}
    if not recorded:
        return "the export recorded no torch files"
    changed = sorted(
        name for name in set(recorded) | set(current)
        if (recorded.get(name) or {}).get("sha256") != (current.get(name) or {}).get("sha256")
    )  # fmt: skip
    if changed:
        what = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        return f"stale: {what} changed since the export verified it against the torch weights"
    root = model_dir / transformer_subdir(model_dir)
    gated = entry.get("files") or {}
    now = file_records(root, list(gated), known=gated)
    if not gated or set(now) != set(gated) or any(now[f]["sha256"] != gated[f]["sha256"] for f in gated):
        return "its files are missing or differ from the ones its gate judged"
    return None


def usable_artifacts(model_dir: str | Path) -> tuple[list[ArtifactRecord], dict[str, str]]:
    """(the artifacts of ``model_dir`` that passed their gate and are fresh, ``{variant: why not}`` for the others
    recorded in its manifest). See the module docstring for the rule."""
    import hashlib

    model_dir = Path(model_dir)
    variants = read_manifest(model_dir)["variants"]
    usable: list[ArtifactRecord] = []
    rejected: dict[str, str] = {}
    known: dict[str, dict[str, Any]] = {}
    for entry in variants.values():
        known.update(entry.get("model_files") or {})
    current = file_records(model_dir, model_file_paths(model_dir), known=known) if variants else {}
    for variant, entry in sorted(variants.items()):
        reason = _rejection(model_dir, entry, current)
        if reason is not None:
            rejected[variant] = reason
            continue
        digest = hashlib.sha256(
            "".join(f"{name}:{record['sha256']};" for name, record in sorted(entry["files"].items())).encode()
        ).hexdigest()[:16]
        usable.append(
            ArtifactRecord(
                variant=variant,
                file_name=entry["file_name"],
                run_precision=entry.get("run_precision"),
                min_cosine=float(entry["min_cosine"]),
                precision=entry.get("precision", "int8"),
                digest=digest,
            )
        )
    return usable, rejected


__all__ = [
    "MANIFEST_FILE",
    "ArtifactRecord",
    "artifact_files",
    "manifest_path",
    "model_file_paths",
    "read_manifest",
    "record_variants",
    "usable_artifacts",
]
