"""Outlier channel splitting (OCS) of the feed-forward down-projections' inputs in an OpenVINO IR.

The input of a transformer's feed-forward down-projection, ``g = act(W_up x + b)``, carries a few outlier
channels: on all-MiniLM-L6-v2 layers 0--3 have one or two GELU channels reaching 13.7--24.8 while the others stay
under about 6. One per-tensor int8 activation scale must cover them, and the other channels then get a quarter of
its levels. Splitting each outlier channel :math:`j` into :math:`k_j` copies, each carrying :math:`g_j / k_j`,
leaves the product unchanged:

.. math::

    W_{\\text{down}}\\, g = \\sum_{i \\notin O} W_{:,i}\\, g_i
    + \\sum_{j \\in O} \\sum_{c=1}^{k_j} W_{:,j} \\frac{g_j}{k_j},
    \\qquad k_j = \\left\\lceil \\frac{\\max |g_j|}{r \\cdot q_{0.98}} \\right\\rceil

(:math:`q_{0.98}`: the 98th percentile of the per-channel maxima over the calibration texts, :math:`r` the
``ratio``). The copies are made where they are free: the up-projection's weight rows and bias entries of channel
:math:`j` are repeated (an elementwise activation of repeated rows is repeated), one per-channel constant
``Multiply`` after the activation holds the :math:`1 / k_j` (OpenVINO's CPU plugin fuses it with the activation and
the int8 quantisation that follows: measured, no extra time), and the down-projection's weight column :math:`j` is
repeated. Every weight keeps its values, so the weights' int8 scales are unchanged too -- unlike SmoothQuant, which
moves the outlier into the weights. The rewrite is exact up to float reordering; the reduction dimension grows by
:math:`\\sum_j (k_j - 1)` (at most 6 of 1536 per layer on MiniLM).

Only down-projections whose input is an elementwise activation of ``MatMul(x, W_up) [+ b]`` with constant weights
are split (BERT-style feed-forwards: BERT, MiniLM, the original GTE models); others (e.g. GLU feed-forwards, whose
input is a product of two branches) are left as they are and reported.

Reference: Zhao, Hu, Dotzel, De Sa, Zhang, "Improving Neural Network Quantization without Retraining using Outlier
Channel Splitting", ICML 2019.

Example::

    import openvino as ov

    from gte_st.export.outlier_channels import split_outlier_channels
    from gte_st.export.quantize import down_projections

    names = down_projections(ov.Core().read_model("openvino/openvino_model.xml"))
    report = split_outlier_channels("openvino/openvino_model.xml", "split.xml", calibration_batches, names)
    # {"/inner/encoder/layer.0/output/dense/MatMul": {"channels": [[856, 24.8, 4]], "threshold": 7.0}, ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The unary elementwise activations a split may pass through.
ACTIVATIONS = ("Gelu", "Relu", "Swish", "HSwish", "Mish", "Tanh", "Sigmoid", "Elu")


def constant_of(output: Any) -> Any | None:
    """The Constant node behind ``output`` (through Converts), or None."""
    node = output.get_node()
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node if node.get_type_name() == "Constant" else None


def _feed_forward(down: Any) -> dict[str, Any] | None:
    """The nodes of ``act(MatMul(x, W_up) [+ b])`` feeding the down-projection ``down``, or None if its input has
    another form."""
    act = down.input_value(0).get_node()
    if act.get_type_name() not in ACTIVATIONS or constant_of(down.input_value(1)) is None:
        return None
    pre = act.input_value(0).get_node()
    bias = bias_port = None
    if pre.get_type_name() == "Add":
        consts = [port for port in (0, 1) if constant_of(pre.input_value(port)) is not None]
        if len(consts) != 1:
            return None
        bias_port = consts[0]
        bias, up = constant_of(pre.input_value(bias_port)), pre.input_value(1 - bias_port).get_node()
    else:
        up = pre
    if up.get_type_name() != "MatMul" or constant_of(up.input_value(1)) is None:
        return None
    if up.get_attributes().get("transpose_a") or down.get_attributes().get("transpose_a"):
        return None
    return {"act": act, "add": pre if bias is not None else None, "bias": bias, "bias_port": bias_port, "up": up}


def channel_maxima(model: Any, nodes: Sequence[Any], batches: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Per-channel maximum of ``|output|`` of each node in ``nodes`` (nodes of ``model``, last axis = channels) over
    the non-padding tokens of ``batches``, computed in f32."""
    import openvino as ov

    outputs = [node.output(0) for node in nodes]
    probe = ov.Model(outputs, model.get_parameters(), "channel-maxima")
    compiled = ov.Core().compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    maxima = [np.zeros(output.get_partial_shape()[-1].get_length(), np.float32) for output in outputs]
    for batch in batches:
        results = compiled({p.get_any_name(): batch[p.get_any_name()] for p in probe.inputs})
        keep = batch["attention_mask"].astype(bool) if "attention_mask" in batch else None
        for i, output in enumerate(compiled.outputs):
            value = np.abs(np.asarray(results[output], dtype=np.float32))
            value = (
                value[keep]
                if keep is not None and value.shape[:2] == keep.shape
                else value.reshape(-1, value.shape[-1])
            )
            maxima[i] = np.maximum(maxima[i], value.max(axis=0))
    return maxima


def split_outlier_channels(
    source_xml: str | Path,
    target_xml: str | Path,
    batches: Sequence[dict[str, np.ndarray]],
    names: Sequence[str],
    ratio: float = 1.5,
) -> dict[str, Any]:
    """Split the outlier input channels of the down-projections ``names`` of ``source_xml`` that have the
    splittable form (see the module docstring) and write the rewritten IR to ``target_xml`` (+ ``.bin``).

    Args:
        source_xml: A float OpenVINO IR.
        target_xml: Where the rewritten IR is written.
        batches: Calibration batches (as :func:`gte_st.export.quantize.calibration_batches` makes them).
        names: Friendly names of the down-projection MatMuls (:func:`gte_st.export.quantize.down_projections`).
        ratio: ``r``: a channel is split when its maximum exceeds ``r`` times the 98th percentile of the layer's
            channel maxima, into as many copies as bring each under that threshold.

    Returns:
        ``{down-projection name: {"threshold": t, "channels": [[channel, max, copies], ...]}}`` for the
        down-projections examined, and ``"not split"``: ``{name: reason}`` for those of another form.
    """
    import openvino as ov
    from openvino import opset13 as ops

    if ratio <= 0:
        raise ValueError(f"ratio must be > 0, got {ratio}")
    model = ov.Core().read_model(str(source_xml))
    by_name = {op.get_friendly_name(): op for op in model.get_ops()}
    report: dict[str, Any] = {"not split": {}}
    found = {}
    for name in names:
        nodes = _feed_forward(by_name[name])
        if nodes is None:
            report["not split"][name] = f"input is {by_name[name].input_value(0).get_node().get_type_name()}"
        else:
            found[name] = nodes
    maxima = channel_maxima(model, [nodes["act"] for nodes in found.values()], batches) if found else []
    for (name, nodes), peak in zip(found.items(), maxima, strict=True):
        threshold = ratio * float(np.quantile(peak, 0.98))
        copies = np.maximum(1, np.ceil(peak / max(threshold, 1e-12))).astype(np.int64)
        report[name] = {
            "threshold": round(threshold, 4),
            "channels": [[int(j), round(float(peak[j]), 3), int(copies[j])] for j in np.flatnonzero(copies > 1)],
        }
        if (copies == 1).all():
            continue
        repeat = np.concatenate([np.arange(len(copies)), np.repeat(np.arange(len(copies)), copies - 1)])
        scale = (1.0 / copies[repeat]).astype(np.float32)
        up, down = nodes["up"], by_name[name]
        w_up = constant_of(up.input_value(1)).get_data().astype(np.float32)
        rows = 0 if up.get_attributes().get("transpose_b") else 1  # the axis of the up-projection's outputs
        up.input(1).replace_source_output(ops.constant(np.take(w_up, repeat, axis=rows)).output(0))
        if nodes["bias"] is not None:
            bias = nodes["bias"].get_data().astype(np.float32)
            nodes["add"].input(nodes["bias_port"]).replace_source_output(
                ops.constant(np.take(bias, repeat, axis=-1)).output(0)
            )
        for node in (up, nodes["add"], nodes["act"]):  # the widened shapes, before the Multiply is made
            if node is not None:
                node.validate_and_infer_types()
        multiply = ops.multiply(nodes["act"].output(0), ops.constant(scale))
        multiply.set_friendly_name(f"{name}/outlier_channel_split_scale")
        down.input(0).replace_source_output(multiply.output(0))
        w_down = constant_of(down.input_value(1)).get_data().astype(np.float32)
        columns = 1 if down.get_attributes().get("transpose_b") else 0  # the axis of the down-projection's inputs
        down.input(1).replace_source_output(ops.constant(np.take(w_down, repeat, axis=columns)).output(0))
    model.validate_nodes_and_infer_types()
    ov.save_model(model, str(target_xml), compress_to_fp16=False)
    return report
