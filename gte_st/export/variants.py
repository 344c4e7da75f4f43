"""Which files an export writes, how each is built, and the gate every one passes before it is moved into place.

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

The names are the ones sentence-transformers uses for its own exports (``model_O2.onnx``,
``openvino_model_qint8_quantized.xml``), so ``model_kwargs={"file_name": ...}`` reads them. The ONNX quantised
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
renamed into place; a refused variant writes nothing.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gte_st.export.parity import PARITY_THRESHOLDS, cosines, parity, quality
from gte_st.export.runtime import load_onnx_model, load_openvino_model, transformer_subdir
from gte_st.export.samples import PARITY_SAMPLE, SELECTION_SAMPLE, calibration_sample, read_texts
from gte_st.files import exclusive_lock, remove_leftovers

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino")
# Inside the model folder: the lock file of a running export and the prefix of its work folders (removed by the next
# export when their process was killed).
EXPORT_LOCK = ".gte-st-export.lock"
EXPORT_WORK_PREFIX = ".gte-st-export-"
QUANTIZE = ("none", "int8-dynamic", "int8-static", "bf16")
DOWN_PROJECTIONS = ("float", "search")
# How much of the worst parity text a report quotes: enough to recognise it, short enough for one line.
WORST_TEXT_CHARS = 80
ONNX_FILE_NAMES = {
    "fp32": "model.onnx",
    "O2": "model_O2.onnx",
    "int8-dynamic": "model_qint8.onnx",
    "int8-static": "model_qint8_static.onnx",
}
OPENVINO_FILE_NAMES = {
    "fp32": "openvino_model.xml",
    "int8-static": "openvino_model_qint8_quantized.xml",
    "int8-dynamic": "openvino_model_qint8_weights.xml",
}


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
    """One artifact to build in the temporary folder: ``name`` (the variant), ``path`` relative to it, the ``build``
    kind and its ``source`` step, whether it is gated / written (``publish``), the threshold class and, for
    OpenVINO, the inference precision it is checked with (None: OpenVINO's default)."""

    name: str
    path: str
    build: str
    source: str | None
    publish: bool
    precision: str
    run_precision: str | None = None


def _plan(format: str, quantize: str, optimize: bool) -> list[_Step]:
    onnx_fp32 = _Step("onnx-fp32", f"onnx/{ONNX_FILE_NAMES['fp32']}", "torch.onnx", None, format == "onnx", "fp32")
    o2 = _Step("onnx-O2", f"onnx/{ONNX_FILE_NAMES['O2']}", "optimize", "onnx-fp32", format == "onnx", "fp32")
    if format == "onnx":
        if quantize == "bf16":
            raise ValueError(
                "quantize='bf16' is an OpenVINO variant (OpenVINO runs an IR in bf16 on AMX / AVX512-BF16 CPUs); "
                "ONNX Runtime's CPU provider has no bf16 MatMul / attention kernels, so a bf16 ONNX graph would run "
                "slower than fp32. Use --format openvino --quantize bf16, or torch's bf16 path "
                "(gte_st.encoding.encode(precision='bf16'))."
            )
        steps = [onnx_fp32]
        needs_o2 = optimize or quantize == "int8-static"
        if needs_o2:
            steps.append(o2 if optimize else _Step(**{**asdict(o2), "publish": False}))
        base = "onnx-O2" if needs_o2 else "onnx-fp32"
        if quantize == "int8-dynamic":
            steps.append(
                _Step(
                    "onnx-int8-dynamic", f"onnx/{ONNX_FILE_NAMES['int8-dynamic']}", "ort-dynamic", base, True, "int8"
                )
            )
        elif quantize == "int8-static":
            steps.append(
                _Step(
                    "onnx-int8-static", f"onnx/{ONNX_FILE_NAMES['int8-static']}", "ort-static", "onnx-O2", True, "int8"
                )
            )
        return steps
    ir = f"openvino/{OPENVINO_FILE_NAMES['fp32']}"
    steps = [_Step(**{**asdict(onnx_fp32), "publish": False})]
    if quantize == "bf16":
        return steps + [_Step("openvino-bf16", ir, "convert", "onnx-fp32", True, "bf16", "bf16")]
    steps.append(_Step("openvino-fp32", ir, "convert", "onnx-fp32", True, "fp32", "fp32"))
    if quantize == "int8-static":
        steps.append(
            _Step("openvino-int8-static", f"openvino/{OPENVINO_FILE_NAMES['int8-static']}", "nncf-static",
                  "openvino-fp32", True, "int8")
        )  # fmt: skip
    elif quantize == "int8-dynamic":
        steps.append(
            _Step("openvino-int8-weights", f"openvino/{OPENVINO_FILE_NAMES['int8-dynamic']}", "nncf-weights",
                  "openvino-fp32", True, "int8")
        )  # fmt: skip
    return steps


def _files(path: Path) -> list[Path]:
    """The files of one artifact (an IR is its .bin and its .xml, the .xml last: it is what loaders look for)."""
    return [path.with_suffix(".bin"), path] if path.suffix == ".xml" else [path]


def _build(
    step: _Step,
    tmp: Path,
    built: dict[str, Path],
    reference,
    calibration_texts: list[str],
    opset: int,
    search: Callable[[Path, Path, list], dict[str, Any]] | None = None,
):
    from gte_st.export.onnx import export_onnx_graph, optimize_onnx_graph

    path = tmp / step.path
    path.parent.mkdir(parents=True, exist_ok=True)
    source = built.get(step.source) if step.source else None
    details: dict[str, Any] = {}
    if step.build == "torch.onnx":
        export_onnx_graph(reference, path, opset)
    elif step.build == "optimize":
        details["fused_operators"] = optimize_onnx_graph(source, path, reference[0].model.config)
    elif step.build == "ort-dynamic":
        from gte_st.export.quantize import quantize_onnx_dynamic

        quantize_onnx_dynamic(source, path)
    elif step.build in ("ort-static", "nncf-static"):
        from gte_st.export.quantize import calibration_batches, quantize_onnx_static, quantize_openvino_static

        input_names = _graph_inputs(built["onnx-fp32"])
        batches = calibration_batches(reference, calibration_texts, input_names)
        details["calibration_texts"] = len(calibration_texts)
        if step.build == "ort-static":
            quantize_onnx_static(source, path, batches)
        elif search is not None:
            details["down_projection_search"] = search(source, path, batches)
        else:
            quantize_openvino_static(source, path, batches)
    elif step.build == "convert":
        from gte_st.export.openvino import convert_onnx_to_openvino

        convert_onnx_to_openvino(source, path)
    elif step.build == "nncf-weights":
        import nncf
        import openvino as ov

        nncf.set_log_level(logging.ERROR)
        compressed = nncf.compress_weights(ov.Core().read_model(str(source)), mode=nncf.CompressWeightsMode.INT8_ASYM)
        ov.save_model(compressed, str(path), compress_to_fp16=False)
    else:  # pragma: no cover - the plan only holds the kinds above
        raise AssertionError(step.build)
    built[step.name] = path
    return path, details


def _down_projection_search(model_dir: Path, step: _Step, reference, threshold: float):
    """The search of :func:`~gte_st.export.quantize.search_int8_down_projections` for ``step``, scored as the gate
    scores (the variant loaded with its runtime) but on :data:`~gte_st.export.samples.SELECTION_SAMPLE`."""
    from gte_st.export.quantize import search_int8_down_projections

    def score(path: Path) -> float:
        return float(cosines(reference, _load(model_dir, step, path), SELECTION_SAMPLE).min())

    return lambda source, path, batches: search_int8_down_projections(source, path, batches, score, threshold)


def _graph_inputs(onnx_path: Path) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(onnx_path), load_external_data=False).graph.input]


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
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    if down_projections not in DOWN_PROJECTIONS:
        raise ValueError(f"down_projections must be one of {DOWN_PROJECTIONS}, got {down_projections!r}")
    if down_projections == "search" and (format, quantize) != ("openvino", "int8-static"):
        raise ValueError(
            "down_projections='search' applies to format='openvino', quantize='int8-static' only "
            f"(got format={format!r}, quantize={quantize!r})"
        )
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    steps = _plan(format, quantize, optimize)
    limits = {**PARITY_THRESHOLDS, **(thresholds or {})}
    texts = read_texts(sample) if sample is not None else list(PARITY_SAMPLE)
    calibration_texts: list[str] = []
    if quantize == "int8-static":
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

    target_root = model_dir / transformer_subdir(model_dir)
    reference = SentenceTransformer(str(model_dir), device="cpu")
    reference_quality = quality(reference, sts, retrieval, max_corpus)
    reports: list[VariantReport] = []
    built: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix=EXPORT_WORK_PREFIX, dir=model_dir) as tmp:
        tmp_dir = Path(tmp)
        for step in steps:
            start = time.perf_counter()
            search = None
            if down_projections == "search" and step.build == "nncf-static":
                search = _down_projection_search(model_dir, step, reference, limits.get(step.name, limits["int8"]))
            path, details = _build(step, tmp_dir, built, reference, calibration_texts, opset, search)
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
    return reports


__all__ = [
    "ExportParityError",
    "ExportReport",
    "FORMATS",
    "ONNX_FILE_NAMES",
    "OPENVINO_FILE_NAMES",
    "QUANTIZE",
    "VariantReport",
    "export",
    "parity",
]
