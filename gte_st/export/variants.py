"""Which files an export writes, how each is built, and the gate every one passes before it is moved into place.

Every variant is one entry of :data:`gte_st.registry.EXPORT_VARIANTS` (its format, the ``quantize`` value that asks
for it, its file, what it is built from and by which builder of :mod:`gte_st.export.builders`, its gate); this module
turns ``(format, quantize, optimize)`` into a plan from those entries and runs it:

=========  ================  ==============================================  ============  =====================
format     quantize          file (under the transformer folder)             gate          built by
=========  ================  ==============================================  ============  =====================
onnx       (always)          ``onnx/model.onnx``                             fp32 0.999    torch.onnx (TorchScript)
onnx       optimize=True     ``onnx/model_O2.onnx``                          fp32 0.999    ORT transformer optimizer
onnx       ``int8-dynamic``  ``onnx/model_qint8.onnx``                       int8 0.98     ORT ``quantize_dynamic``
onnx       ``int8-static``   ``onnx/model_qint8_static.onnx``                int8 0.98     ORT ``quantize_static``
openvino   ``none``          ``openvino/openvino_model.xml`` + ``.bin``      fp32 0.999    ``openvino.convert_model``
openvino   ``bf16``          ``openvino/openvino_model.xml`` + ``.bin``      bf16 0.99     same IR, run in bf16
openvino   ``int8-static``   ``openvino/openvino_model_qint8_quantized.xml``  int8 0.98     ``nncf.quantize``
openvino   ``int8-dynamic``  ``openvino/openvino_model_qint8_weights.xml``   int8 0.98     ``nncf.compress_weights``
=========  ================  ==============================================  ============  =====================

Adding a variant is a builder in :mod:`gte_st.export.builders` (unless an existing one builds it) and an entry in
the registry: ``gte-st export``'s choices, the plan, the gate, the files moved into place, the manifest and
``load_exported``'s default files all read it from there.

The names are the ones sentence-transformers uses for its own exports (``model_O2.onnx``,
``openvino_model_qint8_quantized.xml``), so ``model_kwargs={"file_name": ...}`` reads them. transformers.js picks its
file by ``dtype`` instead: ``onnx/model.onnx`` for ``fp32`` (the same name) and ``onnx/model_quantized.onnx`` for
``q8``, its dynamically quantised int8 graph, so ``onnx/model_qint8.onnx`` is also written under that name
(the variant's ``alias`` in the registry): a hard link, one copy of the weights on disk (a copy where the file system has no
hard links; the Hub stores identical files once). The ONNX quantised
variants are built from the fused ``model_O2`` graph when ``optimize`` is on (static quantisation always is: on the
unfused all-MiniLM-L6-v2 graph its QKV projections lost too much, minimum cosine 0.66). OpenVINO's IR is converted
from the verified fp32 ONNX graph; its int8 variants are gated as OpenVINO runs them by default (non-quantised layers
in bf16 on AMX CPUs). OpenVINO's CPU plugin has no run-time activation quantisation for these layers (checked on
2026.4: the compiled kernels of an int8-weight IR are ``brgemm_avx512_amx_bf16``), so ``int8-dynamic`` there means
int8 *weights* (``openvino-int8-weights``: a 4x smaller file, decompressed and computed in bf16 / f32), not int8
compute; ``int8-static`` is OpenVINO's int8-compute variant.
With ``down_projections="search"`` the OpenVINO ``int8-static`` variant also quantises the feed-forward
down-projections the model tolerates, after splitting their inputs' outlier channels
(:mod:`gte_st.export.outlier_channels`), chosen by measurement on a selection sample the gate does not use
(:func:`gte_st.export.quantize.search_int8_down_projections`).

Every variant is built in a temporary folder inside the model directory, loaded back with its runtime, compared with
the torch model on the parity sample (:mod:`gte_st.export.parity`: the **minimum** cosine is judged) and only then
renamed into place; a refused variant writes nothing. The gate of every written variant, its files' digests and the
torch files it was verified against are recorded in ``gte_st_export.json`` beside the artifacts
(:mod:`gte_st.export.manifest`), which ``backend="auto"`` reads (:mod:`gte_st.export.auto`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gte_st.export.builders import BuildContext
from gte_st.export.manifest import model_file_paths, record_variants
from gte_st.export.parity import PARITY_THRESHOLDS, cosines, parity, quality
from gte_st.export.runtime import load_onnx_model, load_openvino_model, transformer_subdir
from gte_st.export.samples import PARITY_SAMPLE, SELECTION_SAMPLE, calibration_sample, read_texts
from gte_st.files import atomic_link, exclusive_lock, remove_leftovers
from gte_st.registry import EXPORT_VARIANTS, export_formats, export_quantize_choices

logger = logging.getLogger(__name__)

# Inside the model folder: the lock file of a running export and the prefix of its work folders (removed by the next
# export when their process was killed).
EXPORT_LOCK = ".gte-st-export.lock"
EXPORT_WORK_PREFIX = ".gte-st-export-"
DOWN_PROJECTIONS = ("float", "search")
# How much of the worst parity text a report quotes: enough to recognise it, short enough for one line.
WORST_TEXT_CHARS = 80


def _variant(name: str) -> dict[str, Any]:
    return EXPORT_VARIANTS.entry(name).metadata


@dataclass
class VariantReport:
    """What one exported variant measured and where it was written.

    ``variant`` is ``<format>-<kind>`` (``onnx-fp32``, ``onnx-O2``, ``onnx-int8-dynamic``, ``onnx-int8-static``,
    ``openvino-fp32``, ``openvino-bf16``, ``openvino-int8-static``, ``openvino-int8-weights``); ``precision`` the
    threshold class it was judged by; ``quality`` maps each task to ``{"torch", "exported", "delta"}``."""

    variant: str
    file_name: str
    written: bool
    min_cosine: float
    mean_cosine: float
    threshold: float
    size_mb: float
    export_s: float
    precision: str = "fp32"
    worst_text: str = ""
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    message: str = ""


@dataclass
class ExportReport:
    model_dir: str
    variants: list[VariantReport]
    parity_texts: int = 0

    @property
    def ok(self) -> bool:
        return all(variant.written for variant in self.variants)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_dir": self.model_dir,
            "ok": self.ok,
            "parity_texts": self.parity_texts,
            "variants": [asdict(v) for v in self.variants],
        }


class ExportParityError(RuntimeError):
    """An exported variant's embeddings differ too much from the torch model's; that variant was not written."""

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class _Step:
    """One artifact to build in the temporary folder: ``name`` (the variant), ``path`` relative to it, its
    ``source`` step, whether it is gated / written (``publish``), the threshold class and, for OpenVINO, the
    inference precision it is checked with (None: OpenVINO's default)."""

    name: str
    path: str
    source: str | None
    publish: bool
    precision: str
    run_precision: str | None = None

    def build(self, source: Path | None, path: Path, context: BuildContext) -> dict[str, Any]:
        """Write ``path`` with the variant's builder (:data:`gte_st.registry.EXPORT_VARIANTS`)."""
        return EXPORT_VARIANTS.get(self.name)(source, path, context)


def _requested(format: str, quantize: str, optimize: bool) -> list[str]:
    """The variants ``(format, quantize, optimize)`` writes, or a ``ValueError`` naming what the format offers."""
    if format not in (formats := export_formats()):
        raise ValueError(f"format must be one of {formats}, got {format!r}")
    if quantize not in (choices := export_quantize_choices()):
        raise ValueError(f"quantize must be one of {choices}, got {quantize!r}")
    of_format = [name for name in EXPORT_VARIANTS if _variant(name)["format"] == format]
    requested = [
        name for name in of_format if _variant(name)["quantize"] is None and not _variant(name).get("optimize")
    ]
    if optimize:
        requested += [name for name in of_format if _variant(name).get("optimize")]
    if quantize != "none":
        asked = [name for name in of_format if _variant(name)["quantize"] == quantize]
        if not asked:
            elsewhere = [name for name in EXPORT_VARIANTS if _variant(name)["quantize"] == quantize]
            offered = ", ".join(sorted({str(_variant(name)["quantize"]) for name in of_format} - {"None"}))
            raise ValueError(
                f"quantize={quantize!r} is an export variant of another format ({', '.join(elsewhere)}), not of "
                f"format={format!r}, which offers quantize: none, {offered}"
            )
        requested = [name for name in requested if name != _variant(asked[0]).get("replaces")] + asked
    return requested


def _plan(format: str, quantize: str, optimize: bool) -> list[_Step]:
    """Every variant to build, each after the one it is built from: the requested ones published, their sources
    built for them (and gated only when requested)."""
    requested = _requested(format, quantize, optimize)
    steps: dict[str, _Step] = {}

    def add(name: str) -> None:
        if name in steps:
            return
        meta = _variant(name)
        source = meta.get("source")
        if optimize and meta.get("optimized_source"):
            source = meta["optimized_source"]
        if source:
            add(source)
        steps[name] = _Step(
            name, meta["file"], source, name in requested, meta["gate"], meta.get("run_precision")
        )  # fmt: skip

    for name in requested:
        add(name)
    return list(steps.values())


def _files(path: Path) -> list[Path]:
    """The files of one artifact (an IR is its .bin and its .xml, the .xml last: it is what loaders look for)."""
    return [path.with_suffix(".bin"), path] if path.suffix == ".xml" else [path]


def _down_projection_search(model_dir: Path, step: _Step, reference, threshold: float):
    """The search of :func:`~gte_st.export.quantize.search_int8_down_projections` for ``step``, scored as the gate
    scores (the variant loaded with its runtime) but on :data:`~gte_st.export.samples.SELECTION_SAMPLE`."""
    from gte_st.export.quantize import search_int8_down_projections

    def score(path: Path) -> float:
        return float(cosines(reference, _load(model_dir, step, path), SELECTION_SAMPLE).min())

    return lambda source, path, batches: search_int8_down_projections(source, path, batches, score, threshold)


def _load(model_dir: Path, step: _Step, path: Path):
    if path.suffix == ".onnx":
        return load_onnx_model(model_dir, str(path.resolve()))
    return load_openvino_model(model_dir, str(path.resolve()), precision=step.run_precision)


def export(
    model_dir: str | Path,
    format: str = "onnx",
    quantize: str = "none",
    *,
    optimize: bool = True,
    calibration: str | Path | Sequence[str] | None = None,
    calibration_size: int = 200,
    sample: Sequence[str] | None = None,
    sts: str | Path | None = None,
    retrieval: str | Path | None = None,
    max_corpus: int | None = None,
    opset: int = 17,
    thresholds: dict[str, float] | None = None,
    down_projections: str = "float",
) -> ExportReport:
    """Export ``model_dir`` to ONNX or OpenVINO IR (optionally quantised), each variant verified before it is written.

    Args:
        model_dir: A saved sentence-transformers model directory (e.g. a GTE model) or a plain HF encoder directory.
        format: ``"onnx"`` or ``"openvino"``.
        quantize: ``"none"``, ``"int8-dynamic"``, ``"int8-static"`` or ``"bf16"`` (OpenVINO only); see the table in
            :mod:`gte_st.export.variants` for the files each writes.
        optimize: ONNX only: also write the fused ``onnx/model_O2.onnx`` (ORT's transformer optimizer) and build the
            dynamic int8 variant from it.
        calibration: Static int8 only: texts to calibrate on -- a list, a text file (one per line) or a jsonl /
            jsonl.gz file (``title`` + ``text``); default: the built-in sample (no download).
        calibration_size: Number of calibration texts used (the first N).
        sample: Texts for the parity check (default: :data:`gte_st.export.samples.PARITY_SAMPLE`).
        sts: Optional STS file (STS-B csv, SICK txt, jsonl) whose score is reported for torch and each variant.
        retrieval: Optional BEIR folder (e.g. SciFact) whose nDCG@10 is reported for torch and each variant.
        max_corpus: Limit the BEIR corpus size for speed (the relevant documents are kept).
        opset: ONNX opset.
        thresholds: Minimum cosine per precision class (``fp32``, ``bf16``, ``int8``) or per variant name (e.g.
            ``{"onnx-int8-dynamic": 0.95}``), over :data:`gte_st.export.parity.PARITY_THRESHOLDS`.
        down_projections: OpenVINO ``int8-static`` only: ``"float"`` keeps every feed-forward down-projection in
            float; ``"search"`` splits the outlier channels of their inputs (exact) and quantises as many as this
            model tolerates in int8, chosen by measurement on :data:`~gte_st.export.samples.SELECTION_SAMPLE`
            against the variant's threshold (:func:`gte_st.export.quantize.search_int8_down_projections`: three
            NNCF runs when all pass, as on MiniLM, else up to two more per layer). Faster on CPUs without AMX;
            the result is gated like any variant.

    Returns:
        An :class:`ExportReport`; variants that failed parity are reported with ``written=False``.

    Raises:
        ExportParityError: When any variant failed parity (after the passing ones were written).

    Example::

        from gte_st.export import export, load_exported

        export("my-gte", format="openvino", quantize="int8-static", calibration="my_texts.txt")
        model = load_exported("my-gte", "openvino/openvino_model_qint8_quantized.xml")
    """
    steps = _plan(format, quantize, optimize)
    if down_projections not in DOWN_PROJECTIONS:
        raise ValueError(f"down_projections must be one of {DOWN_PROJECTIONS}, got {down_projections!r}")
    searchable = [name for name in EXPORT_VARIANTS if _variant(name).get("searchable")]
    if down_projections == "search" and not any(step.name in searchable for step in steps if step.publish):
        raise ValueError(
            f"down_projections='search' applies to the {', '.join(searchable)} variant only "
            f"(got format={format!r}, quantize={quantize!r})"
        )
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    limits = {**PARITY_THRESHOLDS, **(thresholds or {})}
    texts = read_texts(sample) if sample is not None else list(PARITY_SAMPLE)
    calibration_texts: list[str] = []
    if any(_variant(step.name).get("calibrated") for step in steps):
        calibration_texts = (
            calibration_sample(calibration_size) if calibration is None else read_texts(calibration, calibration_size)
        )

    # One export per model folder at a time; under the lock, every export work folder left there is a dead one's.
    with exclusive_lock(model_dir, doing="exported", lock_file=model_dir / EXPORT_LOCK):
        remove_leftovers(model_dir, also=(f"{EXPORT_WORK_PREFIX}*",))
        reports = _export_locked(
            model_dir, steps, texts, calibration_texts, limits, opset, sts, retrieval, max_corpus, down_projections
        )
    result = ExportReport(model_dir=str(model_dir), variants=reports, parity_texts=len(texts))
    if not result.ok:
        raise ExportParityError("\n".join(r.message for r in reports if not r.written), result)
    return result


def _export_locked(
    model_dir: Path,
    steps: list[_Step],
    texts: list[str],
    calibration_texts: list[str],
    limits: dict[str, float],
    opset: int,
    sts: str | Path | None,
    retrieval: str | Path | None,
    max_corpus: int | None,
    down_projections: str,
) -> list[VariantReport]:
    """Build, gate and move into place every variant of ``steps`` (the caller holds the model folder's lock)."""
    from sentence_transformers import SentenceTransformer

    import gte_st
    from gte_st.fingerprint import file_records, model_fingerprint

    target_root = model_dir / transformer_subdir(model_dir)
    model_files = file_records(model_dir, model_file_paths(model_dir))  # what the gates verify against, read first
    reference = SentenceTransformer(str(model_dir), device="cpu")
    reference_quality = quality(reference, sts, retrieval, max_corpus)
    reports: list[VariantReport] = []
    context = BuildContext(reference, calibration_texts, opset)
    with tempfile.TemporaryDirectory(prefix=EXPORT_WORK_PREFIX, dir=model_dir) as tmp:
        tmp_dir = Path(tmp)
        for step in steps:
            start = time.perf_counter()
            context.search = None
            if down_projections == "search" and _variant(step.name).get("searchable"):
                context.search = _down_projection_search(
                    model_dir, step, reference, limits.get(step.name, limits["int8"])
                )
            path = tmp_dir / step.path
            path.parent.mkdir(parents=True, exist_ok=True)
            details = step.build(context.built.get(step.source) if step.source else None, path, context)
            context.built[step.name] = path
            export_s = time.perf_counter() - start
            if not step.publish:
                continue
            threshold = limits.get(step.name, limits[step.precision])
            candidate = _load(model_dir, step, path)
            runtime = getattr(candidate[0].model, "inference_precision", None)
            if runtime is not None:
                details["inference_precision"] = runtime
            values = cosines(reference, candidate, texts)
            min_cos, mean_cos = float(values.min()), float(values.mean())
            report = VariantReport(
                variant=step.name,
                file_name=step.path,
                written=False,
                min_cosine=round(min_cos, 6),
                mean_cosine=round(mean_cos, 6),
                threshold=threshold,
                size_mb=round(sum(f.stat().st_size for f in _files(path)) / 2**20, 2),
                export_s=round(export_s, 2),
                precision=step.precision,
                worst_text=texts[int(values.argmin())][:WORST_TEXT_CHARS],
                details=details,
            )
            if min_cos < threshold:
                report.message = (
                    f"refused: {step.name} embeddings have minimum cosine {min_cos:.5f} (mean {mean_cos:.5f}; worst "
                    f"text {report.worst_text!r}) with the torch model on {len(texts)} sample texts, below the "
                    f"threshold {threshold}; {target_root / step.path} was not written."
                )
                reports.append(report)
                continue
            exported_quality = quality(candidate, sts, retrieval, max_corpus)
            report.quality = {
                task: {"torch": ref, "exported": exported_quality[task], "delta": exported_quality[task] - ref}
                for task, ref in reference_quality.items()
                if task in exported_quality
            }
            report.written = True
            report.message = f"wrote {target_root / step.path}"
            reports.append(report)
        # Only verified variants are moved into place, each file with an atomic rename on the same file system.
        for report in reports:
            if report.written:
                for file in _files(tmp_dir / report.file_name):
                    if file.exists():
                        (target_root / report.file_name).parent.mkdir(parents=True, exist_ok=True)
                        os.replace(file, target_root / Path(report.file_name).parent / file.name)
                if alias := _variant(report.variant).get("alias"):  # a second name, e.g. transformers.js's
                    written = target_root / report.file_name
                    atomic_link(written, written.with_name(alias))
                    report.details["transformers_js_name"] = str(Path(report.file_name).with_name(alias))
        if any(report.written for report in reports):
            record_variants(
                model_dir, reports, torch_fingerprint=model_fingerprint(reference), model_files=model_files,
                parity_texts=len(texts), run_precisions={step.name: step.run_precision for step in steps},
                gte_st_version=gte_st.__version__,
            )  # fmt: skip
    return reports


__all__ = [
    "ExportParityError",
    "ExportReport",
    "VariantReport",
    "export",
    "parity",
]
