"""int8 quantisation of exported graphs: ONNX Runtime dynamic and static (QDQ), OpenVINO static (NNCF).

* **dynamic** (ONNX): MatMul / Gemm / fused Attention weights int8 per channel, activations quantised at run time
  (no calibration);
* **static** (ONNX, QDQ): weights int8 per channel, activation ranges of every weight MatMul fixed in advance from
  calibration texts (:func:`calibration_batches`); the activation x activation products of attention (QK^T, PV) are
  left in float;
* **static** (OpenVINO): ``nncf.quantize`` with ``ModelType.TRANSFORMER`` (its transformer-aware scheme: int8
  MatMuls, softmax / layer norms kept in float) on the same calibration batches.

All three keep the feed-forward **down-projections** (the MatMuls whose reduction dimension exceeds their output
dimension: BERT's ``output.dense``, GTE's ``down_proj``, ModernBERT's ``Wo``) in float: their input, the GELU / GLU
activations, carries outlier channels that one per-tensor int8 scale cannot represent: quantised, they push short
texts below the parity gate (:func:`down_projections`; figures in docs/benchmarks.md, "Serving on CPU"). The other
two thirds of the linear-layer FLOPs run in int8.
For OpenVINO, :func:`search_int8_down_projections` instead splits those outlier channels first
(:mod:`gte_st.export.outlier_channels`, exact) and then measures how many down-projections a model tolerates in int8
and quantises those too (``export(..., down_projections="search")``): on CPUs without AMX the float
down-projections are a large share of the int8 IR's time (docs/benchmarks.md, "Serving on CPU").

No step downloads anything: the calibration texts are the user's or the built-in sample
(:func:`gte_st.export.samples.calibration_sample`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gte_st.export.onnx import quiet_loggers
from gte_st.export.outlier_channels import constant_of, split_outlier_channels

# ONNX Runtime's quantisation tools log their notices ("consider pre-processing") on the root logger: silenced for
# the duration of a quantisation call only (quiet_loggers puts the level back).
ORT_QUANTIZATION_LOGGERS = ("root",)
# NNCF's own logger, silenced the same way. Not ``nncf.set_log_level``: that sets the level of every handler on the
# logger for good, handlers a user (or pytest's log capture) attached included.
NNCF_LOGGER = "nncf"

logger = logging.getLogger(__name__)


def calibration_batches(model, texts: Sequence[str], input_names: Sequence[str], batch_size: int = 8):
    """Tokenised batches (dicts of int64 arrays named after the graph's inputs) of ``texts`` for calibration,
    truncated to the model's maximum sequence length and padded per batch, as at inference time."""
    tokenizer = model[0].tokenizer
    max_length = model.max_seq_length or tokenizer.model_max_length
    batches = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        batch = {}
        for name in input_names:
            value = encoded.get(name)
            if value is None and name == "token_type_ids":
                value = np.zeros_like(encoded["input_ids"])
            batch[name] = np.asarray(value, dtype=np.int64)
        batches.append(batch)
    return batches


def quantize_onnx_dynamic(source: str | Path, target: str | Path) -> None:
    """Dynamic int8 quantisation (weights per channel, activations at run time) of ``source`` into ``target``.

    On a graph fused by :func:`~gte_st.export.onnx.optimize_onnx_graph`, fused ``Attention`` nodes become
    ``QAttention`` (their QKV projection quantised too)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _, down, _ = _onnx_matmuls(source)
    with quiet_loggers(*ORT_QUANTIZATION_LOGGERS):
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm", "Attention"],
            nodes_to_exclude=down,
            # fused contrib ops (Attention, SkipLayerNormalization) have no ONNX shape inference: their outputs are
            # float
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def _onnx_matmuls(path: str | Path) -> tuple[list[str], list[str], list[str]]:
    """(MatMul nodes with a constant weight, the down-projections among them, MatMul nodes multiplying two
    activations) of the ONNX graph at ``path``."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    weight, down, activation = [], [], []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        if node.input[1] not in shapes:
            activation.append(node.name)
            continue
        weight.append(node.name)
        dims = shapes[node.input[1]]
        if len(dims) == 2 and dims[0] > dims[1]:  # [K, N]: reduces more than it outputs
            down.append(node.name)
    return weight, down, activation


def down_projections(model) -> list[str]:
    """Friendly names of the MatMuls of an OpenVINO model whose constant weight reduces a larger dimension than it
    outputs (the feed-forward down-projections), for ``nncf.IgnoredScope``."""
    names = []
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        weight = constant_of(op.input_value(1))
        if weight is None:
            continue
        shape = list(weight.get_output_shape(0))
        if len(shape) != 2:
            continue
        k, n = (shape[1], shape[0]) if op.get_attributes().get("transpose_b") else (shape[0], shape[1])
        if k > n:
            names.append(op.get_friendly_name())
    return names


def quantize_onnx_static(source: str | Path, target: str | Path, batches: list[dict[str, np.ndarray]]) -> None:
    """Static int8 quantisation (QDQ format) of ``source`` into ``target``: u8 activations with ranges calibrated
    (min/max) on ``batches``, s8 weights per output channel, for the MatMuls with a constant weight except the
    down-projections."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Symbolic shape inference first: without the types of the fused contrib ops' outputs (Attention,
    # SkipLayerNormalization) the quantiser leaves every activation in float and only stores int8 weights.
    prepared = Path(target).with_name(Path(target).stem + ".prepared.onnx")
    try:
        with quiet_loggers(*ORT_QUANTIZATION_LOGGERS):
            quant_pre_process(str(source), str(prepared), skip_optimization=True)
        weight, down, activation = _onnx_matmuls(prepared)
        if not weight:
            raise ValueError(f"{source}: no MatMul with a constant weight to quantise")
        with quiet_loggers(*ORT_QUANTIZATION_LOGGERS):
            _quantize_static(prepared, target, batches, activation + down)
    finally:
        prepared.unlink(missing_ok=True)


def _quantize_static(source: Path, target: str | Path, batches, excluded: list[str]) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self):
            return next(self._batches, None)

    quantize_static(
        str(source),
        str(target),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=excluded,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={
            "ActivationSymmetric": False,
            "WeightSymmetric": True,
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
            "DefaultTensorType": onnx.TensorProto.FLOAT,
            # merge the ranges every 4 batches instead of holding every batch's activations (GBs for MiniLM)
            "CalibMaxIntermediateOutputs": 4,
        },
    )


def quantize_openvino_static(
    source_xml: str | Path,
    target_xml: str | Path,
    batches: list[dict[str, np.ndarray]],
    keep_float: Sequence[str] | None = None,
    smooth_quant_alpha: float | None = None,
) -> None:
    """Static int8 quantisation of an OpenVINO IR with NNCF (``ModelType.TRANSFORMER``, the mixed preset:
    symmetric weights, asymmetric activations) calibrated on ``batches``; writes ``target_xml`` + ``.bin``.

    ``keep_float``: friendly names of the MatMuls left in float (default: every down-projection,
    :func:`down_projections`). ``smooth_quant_alpha``: SmoothQuant's migration strength for the MatMuls (``None``:
    NNCF's default, 0.95; ``-1`` disables it)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    ov_model = ov.Core().read_model(str(source_xml))
    ignored = down_projections(ov_model) if keep_float is None else list(keep_float)
    advanced = None
    if smooth_quant_alpha is not None:
        advanced = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=smooth_quant_alpha)
        )
    with quiet_loggers(NNCF_LOGGER):
        quantized = nncf.quantize(
            ov_model,
            nncf.Dataset(batches),
            model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(batches),
            ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
            advanced_parameters=advanced,
        )
    ov.save_model(quantized, str(target_xml), compress_to_fp16=False)


#: SmoothQuant strengths the down-projection search tries with every down-projection in int8 (NNCF's default
#: first). On all-MiniLM-L6-v2 (outliers split, under the AVX-512 VNNI limit) the selection sample's minimum cosine
#: was 0.970 / 0.991 / 0.989.
SMOOTH_QUANT_ALPHAS = (0.95, 0.8, 0.5)


def search_int8_down_projections(
    source_xml: str | Path,
    target_xml: str | Path,
    batches: list[dict[str, np.ndarray]],
    score: Callable[[Path], float],
    threshold: float,
    alphas: Sequence[float] = SMOOTH_QUANT_ALPHAS,
) -> dict[str, Any]:
    """Static int8 (:func:`quantize_openvino_static`) with as many down-projections in int8 as ``score`` allows.

    1. The outlier channels of the down-projections' inputs are split first
       (:func:`gte_st.export.outlier_channels.split_outlier_channels`: exact, and it narrows the int8 activation
       ranges); every trial below quantises the split IR.
    2. Every down-projection in int8, once per SmoothQuant strength in ``alphas``; the best-scoring trial is
       written if it scores at least ``threshold``.
    3. Otherwise greedily, at the best strength: each down-projection is quantised alone (the others in float) and
       scored; those scoring at least ``threshold`` are added one at a time, best first, each addition re-quantised
       and scored, until one falls below ``threshold``; the last set that passed is written (with none passing,
       every down-projection stays in float: the default variant, of the split IR).

    That is ``len(alphas)`` NNCF runs, plus at most ``2 L`` for ``L`` layers. ``score(xml)`` should be the minimum
    cosine with the torch model over texts *other* than the export gate's
    (:data:`gte_st.export.samples.SELECTION_SAMPLE`), so the gate still judges the result on texts the search did
    not see.

    Returns:
        ``{"int8_down_projections": [...], "smooth_quant_alpha": a, "scores": {label: min cosine}, "nncf_runs": n,
        "outlier_channels": split report}``; labels are ``"all@a"``, a name (alone) or ``"+name"`` (added).
    """
    import openvino as ov

    target_xml = Path(target_xml)
    trial_dir = target_xml.parent / ".down-projection-search"
    trial_dir.mkdir(parents=True, exist_ok=True)
    scores: dict[str, float] = {}
    runs = 0

    def trial(int8: list[str], label: str, alpha: float) -> Path:
        nonlocal runs
        path = trial_dir / f"trial{runs}.xml"
        keep = [d for d in downs if d not in int8]
        quantize_openvino_static(split, path, batches, keep_float=keep, smooth_quant_alpha=alpha)
        runs += 1
        scores[label] = round(float(score(path)), 6)
        logger.info(f"int8 down-projections {int8} (SmoothQuant {alpha}): minimum cosine {scores[label]}")
        return path

    try:
        split = trial_dir / "split.xml"
        downs = down_projections(ov.Core().read_model(str(source_xml)))  # the split keeps their names
        outliers = split_outlier_channels(source_xml, split, batches, downs)
        every = {alpha: trial(downs, f"all@{alpha}", alpha) for alpha in alphas}
        alpha = max(alphas, key=lambda a: scores[f"all@{a}"])
        chosen: list[str] = []
        best: Path | None = None
        if scores[f"all@{alpha}"] >= threshold:
            chosen, best = list(downs), every[alpha]
        else:
            single = {name: trial([name], name, alpha) for name in downs}
            candidates = sorted((name for name in downs if scores[name] >= threshold), key=lambda n: -scores[n])
            for name in candidates:
                label = "+" + name if chosen else name  # the first candidate was already scored alone
                path = trial([*chosen, name], label, alpha) if chosen else single[name]
                if scores[label] < threshold:
                    break
                chosen, best = [*chosen, name], path
        if best is None:
            quantize_openvino_static(split, target_xml, batches)
            runs += 1
        else:
            for suffix in (".xml", ".bin"):
                best.with_suffix(suffix).replace(target_xml.with_suffix(suffix))
    finally:
        for file in trial_dir.iterdir():
            file.unlink()
        trial_dir.rmdir()
    return {
        "int8_down_projections": chosen,
        "smooth_quant_alpha": alpha if chosen else None,
        "scores": scores,
        "nncf_runs": runs,
        "outlier_channels": outliers,
    }
