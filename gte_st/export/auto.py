"""``backend="auto"``: the fastest verified way to run a model folder on this CPU -- its torch weights, at the
encode precision :func:`gte_st.encoding.resolve_precision` picks, or one of its exported artifacts.

Which path is fastest depends on the CPU (on the AMX hosts of docs/benchmarks.md the compiled bf16 torch path and the
OpenVINO IRs were level; on a CPU with AVX-512 VNNI but no AMX an int8 IR is several times torch), so it is measured,
not ruled: :func:`choose_backend`

1. takes the artifacts of the folder that :func:`gte_st.export.manifest.usable_artifacts` allows -- passed their
   parity gate at its default threshold, files unchanged since, torch files unchanged since (a stale artifact is
   never used) -- and whose runtime is installed;
2. with none, chooses torch without measuring anything;
3. else encodes a short built-in sample (:func:`gte_st.export.calibration_sample`, one word to past the model's length)
   with torch and with each of them, in interleaved rounds (:func:`gte_st.calibration.interleaved_times`), compares
   each with torch round by round (:func:`gte_st.calibration.paired_ratios`) and keeps the fastest; a path within 5 % of the fastest that is closer to the torch weights (torch, then fp32, bf16 and
   int8 artifacts, then the higher gate) is preferred to it;
4. stores the decision in the calibration cache (:mod:`gte_st.calibration`), keyed by the CPU, the runtime versions,
   the torch files and the candidates' files: it is measured once per model folder and CPU (a few seconds for a
   MiniLM-size model), and again when any of them changes.

The choice carries its reason, which the commands print and :func:`load_auto_model` logs at INFO.

Example::

    from gte_st.encoding import encode
    from gte_st.export import load_model_dir

    model = load_model_dir("my-gte", backend="auto")   # e.g. the verified int8 IR on a CPU without AMX
    embeddings = encode(model, texts)
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gte_st.calibration import interleaved_times, paired_ratios, read_decision, write_decision
from gte_st.export.manifest import ArtifactRecord, model_file_paths, usable_artifacts
from gte_st.export.runtime import backend_of, load_onnx_model, load_openvino_model
from gte_st.export.samples import calibration_sample
from gte_st.fingerprint import file_records
from gte_st.hardware import cpu_key, describe_cpu

logger = logging.getLogger(__name__)

TORCH = "torch"
RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}
# How close to the fastest a path closer to the torch weights may be and still be preferred.
PREFERENCE_MARGIN = 0.05
FIDELITY = {"fp32": 0, "bf16": 1, "int8": 2}
CALIBRATION_TEXTS = 64


@dataclass(frozen=True)
class BackendChoice:
    """What ``backend="auto"`` runs: ``backend`` (``torch``, ``onnx``, ``openvino``), the artifact ``file_name``
    (relative to the transformer folder; ``None`` for torch), the export ``variant`` (``"torch"`` for torch), the
    ``precision`` (torch: the encode precision; OpenVINO: the precision its gate ran it in, ``None`` = OpenVINO's
    default), the ``reason``, the measured ``docs_per_s`` per candidate and the artifacts ``rejected`` with why."""

    backend: str
    file_name: str | None
    variant: str
    precision: str | None
    reason: str
    docs_per_s: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: what runs and why (the commands print it)."""
        what = "torch" if self.backend == TORCH else f"{self.backend} {self.file_name}"
        if self.precision and self.backend == TORCH:
            what += f" ({self.precision})"
        line = f"{what}: {self.reason}"
        if self.rejected:
            line += "; not used: " + "; ".join(f"{v} ({why})" for v, why in sorted(self.rejected.items()))
        return line


def _runtime_missing(record: ArtifactRecord) -> str | None:
    module = RUNTIMES[backend_of(record.file_name)]
    return None if importlib.util.find_spec(module) else f"{module} is not installed"


def _versions(candidates: list[ArtifactRecord]) -> dict[str, str]:
    import torch

    versions = {"torch": torch.__version__}
    for backend in sorted({backend_of(c.file_name) for c in candidates}):
        module = RUNTIMES[backend]
        versions[module] = str(getattr(importlib.import_module(module), "__version__", "?"))
    return versions


def load_candidate(model_dir: str | Path, record: ArtifactRecord, **kwargs: Any):
    """``model_dir`` with ``record``'s artifact as its encoder, run the way its gate ran it (OpenVINO: the gated
    inference precision; always gte-st's encoders, whose OpenVINO slices and static shapes serve single queries
    and batches)."""
    if backend_of(record.file_name) == "onnx":
        return load_onnx_model(model_dir, record.file_name, num_threads=kwargs.pop("num_threads", 0), **kwargs)
    return load_openvino_model(
        model_dir, record.file_name, precision=record.run_precision, encoder_options=kwargs.pop("encoder_options", {}),
        **kwargs,
    )  # fmt: skip


def _rank(variant: str, records: dict[str, ArtifactRecord]) -> tuple[int, float]:
    """Closeness to the torch weights: torch first, then fp32, bf16, int8 artifacts, then the higher gate."""
    if variant == TORCH:
        return (-1, 0.0)
    record = records[variant]
    return (FIDELITY.get(record.precision, len(FIDELITY)), -record.min_cosine)


def pick(docs_per_s: dict[str, float], records: dict[str, ArtifactRecord]) -> str:
    """The fastest path, or the one closest to the torch weights among those within :data:`PREFERENCE_MARGIN` of
    it."""
    fastest = max(docs_per_s.values())
    near = [name for name, rate in docs_per_s.items() if rate >= (1 - PREFERENCE_MARGIN) * fastest]
    return min(near, key=lambda name: _rank(name, records))


def _measure(
    model_dir: Path, candidates: list[ArtifactRecord], torch_precision: str, budget_s: float
) -> tuple[dict[str, float], str]:
    """docs/s of torch and of every candidate on the built-in sample (interleaved rounds), and torch's resolved
    precision."""
    from gte_st.encoding import encode, resolve_precision
    from gte_st.loading import load

    texts = calibration_sample(CALIBRATION_TEXTS)
    torch_model = load(model_dir, device="cpu")
    resolved = resolve_precision(torch_precision, torch_model)
    runs = {TORCH: lambda: encode(torch_model, texts, batch_size=32, precision=resolved)}
    for record in candidates:
        model = load_candidate(model_dir, record)
        runs[record.variant] = lambda model=model: encode(model, texts, batch_size=32)
    for run in runs.values():  # warm-up: kernels, OpenVINO's shape caches, torch's bf16 copy
        run()
    times = interleaved_times(runs, min_rounds=3, max_rounds=5, budget_s=budget_s)
    torch_rate = len(texts) / statistics.median(times[TORCH])
    # each path's speed relative to torch in the same round (paired_ratios), scaled by torch's median rate
    return {name: round(torch_rate / ratio, 2) for name, ratio in paired_ratios(times, TORCH).items()}, resolved


def choose_backend(
    model_dir: str | Path, *, torch_precision: str = "auto", budget_s: float = 8.0, measure: bool = True
) -> BackendChoice:
    """What ``backend="auto"`` runs for ``model_dir`` on this CPU (see the module docstring for the rule).

    Args:
        model_dir: A local model directory (anything else runs on torch: it has no recorded exports).
        torch_precision: The encode precision torch would run at (``"auto"``: the calibrated one).
        budget_s: Time the measurement may take when it is not cached (at least 3 rounds are run).
        measure: ``False``: never measure; use a cached decision, else torch.
    """
    local = Path(model_dir).expanduser()
    if not local.is_dir():
        return BackendChoice(TORCH, None, TORCH, torch_precision, "not a local model directory: no recorded exports")
    usable, rejected = usable_artifacts(local)
    candidates = []
    for record in usable:
        if (missing := _runtime_missing(record)) is not None:
            rejected[record.variant] = missing
        else:
            candidates.append(record)
    if not candidates:
        reason = "no verified, fresh export in the model folder" if not rejected else "no usable export"
        return BackendChoice(TORCH, None, TORCH, torch_precision, reason, rejected=rejected)
    records = {record.variant: record for record in candidates}
    torch_files = file_records(local, model_file_paths(local))
    key = {
        "cpu": cpu_key(),
        "versions": _versions(candidates),
        "torch_precision": torch_precision,
        "torch_files": hashlib.sha256(
            "".join(f"{name}:{r['sha256']};" for name, r in sorted(torch_files.items())).encode()
        ).hexdigest(),
        "candidates": {record.variant: record.digest for record in candidates},
    }
    record = read_decision("backend", key)
    where = "cached"
    if record is None or record.get("choice") not in {TORCH, *records}:
        if not measure:
            return BackendChoice(TORCH, None, TORCH, torch_precision, "not measured on this CPU", rejected=rejected)
        start = time.perf_counter()
        docs_per_s, resolved = _measure(local, candidates, torch_precision, budget_s)
        # The measured models sit in reference cycles, so they outlive _measure until the cyclic collector runs, and
        # an OpenVINO model compiled while their CPU executors still exist ran slower (docs/benchmarks.md, "Host C:
        # what auto picks"): release them before anything is loaded for real.
        gc.collect()
        record = {
            "choice": pick(docs_per_s, records),
            "docs_per_s": docs_per_s,
            "torch_precision": resolved,
            "texts": CALIBRATION_TEXTS,
            "seconds": round(time.perf_counter() - start, 2),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        write_decision("backend", key, record)
        where = f"measured now in {record['seconds']} s"
    rates = record["docs_per_s"]
    choice = record["choice"]
    ratio = rates[choice] / rates[TORCH] if rates.get(TORCH) else float("nan")
    summary = ", ".join(f"{name} {rate}" for name, rate in sorted(rates.items(), key=lambda kv: -kv[1]))
    if choice == TORCH:
        reason = f"torch is the fastest verified path on {describe_cpu()} (docs/s: {summary}; {where})"
        return BackendChoice(TORCH, None, TORCH, record["torch_precision"], reason, rates, rejected)
    chosen = records[choice]
    reason = (
        f"{choice} (gate minimum cosine {chosen.min_cosine:.4f}) is the fastest verified path on {describe_cpu()}, "
        f"{ratio:.2f}x torch {record['torch_precision']} (docs/s: {summary}; {where})"
    )
    return BackendChoice(
        backend_of(chosen.file_name), chosen.file_name, choice, chosen.run_precision, reason, rates, rejected
    )


def load_choice(model_dir: str | Path, choice: BackendChoice, **kwargs: Any):
    """The model ``choice`` names: the folder's torch weights (:func:`gte_st.loading.load`) or the chosen artifact
    (:func:`load_candidate`)."""
    if choice.backend == TORCH:
        from gte_st.loading import load

        return load(model_dir, **kwargs)
    usable, _ = usable_artifacts(model_dir)
    record = next((r for r in usable if r.variant == choice.variant), None)
    if record is None:  # changed since the choice: never load an artifact that is no longer verified
        raise RuntimeError(f"{model_dir}: the export {choice.variant} is no longer verified; choose again")
    return load_candidate(model_dir, record, **kwargs)


def load_auto_model(model_dir: str | Path, **kwargs: Any):
    """``load_model_dir(model_dir, backend="auto")``: :func:`choose_backend`, logged at INFO, then
    :func:`load_choice`."""
    choice = choose_backend(model_dir)
    logger.info(f"backend auto for {model_dir}: {choice.describe()}")
    return load_choice(model_dir, choice, **kwargs)


__all__ = ["BackendChoice", "choose_backend", "load_auto_model", "load_candidate", "load_choice", "pick"]
