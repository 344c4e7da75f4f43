"""How each export variant's file is built: one function per kind of build, named by the variant's entry in
:data:`gte_st.registry.EXPORT_VARIANTS`.

Every builder has the signature ``build(source, path, context) -> details``: ``source`` is the file of the variant it
is built from (``None`` for the first graph, exported from the torch model), ``path`` the file to write (in the
export's temporary folder), ``context`` what the whole export shares (:class:`BuildContext`); it returns what the
report records about the build (e.g. the fused operators, the calibration size). A builder only writes ``path``;
the gate and the move into place are :func:`gte_st.export.variants.export`'s.

Example (a new variant: one builder here, one entry in the registry)::

    def build_fp16_onnx(source, path, context):
        from onnxconverter_common import float16

        import onnx

        onnx.save(float16.convert_float_to_float16(onnx.load(str(source))), str(path))
        return {}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BuildContext:
    """What every build of one export shares: the torch model (``reference``), the calibration texts of static
    quantisation, the ONNX opset, the files built so far by variant name, and (OpenVINO ``int8-static`` with
    ``down_projections="search"``) the search that replaces plain quantisation."""

    reference: Any
    calibration_texts: list[str]
    opset: int
    built: dict[str, Path] = field(default_factory=dict)
    search: Callable[[Path, Path, list], dict[str, Any]] | None = None

    def graph_inputs(self) -> list[str]:
        """The input names of the exported fp32 ONNX graph (what calibration batches feed)."""
        import onnx

        graph = onnx.load(str(self.built["onnx-fp32"]), load_external_data=False).graph
        return [i.name for i in graph.input]

    def calibration_batches(self) -> list:
        from gte_st.export.quantize import calibration_batches

        return calibration_batches(self.reference, self.calibration_texts, self.graph_inputs())


def build_torch_onnx(source: Path | None, path: Path, context: BuildContext) -> dict[str, Any]:
    """The fp32 ONNX graph, exported from the torch model."""
    from gte_st.export.onnx import export_onnx_graph

    export_onnx_graph(context.reference, path, context.opset)
    return {}


def build_ort_optimized(source: Path, path: Path, context: BuildContext) -> dict[str, Any]:
    """ONNX Runtime's transformer optimizer (fused attention, LayerNorm, GELU) on the fp32 graph."""
    from gte_st.export.onnx import optimize_onnx_graph

    return {"fused_operators": optimize_onnx_graph(source, path, context.reference[0].model.config)}


def build_ort_dynamic(source: Path, path: Path, context: BuildContext) -> dict[str, Any]:
    """ONNX Runtime's dynamic int8 quantisation (int8 weights, activations quantised per batch at run time)."""
    from gte_st.export.quantize import quantize_onnx_dynamic

    quantize_onnx_dynamic(source, path)
    return {}


def build_ort_static(source: Path, path: Path, context: BuildContext) -> dict[str, Any]:
    """ONNX Runtime's static int8 quantisation, calibrated on the export's calibration texts."""
    from gte_st.export.quantize import quantize_onnx_static

    quantize_onnx_static(source, path, context.calibration_batches())
    return {"calibration_texts": len(context.calibration_texts)}


def build_openvino_ir(source: Path, path: Path, context: BuildContext) -> dict[str, Any]:
    """An OpenVINO IR (``.xml`` + ``.bin``) converted from the verified ONNX graph."""
    from gte_st.export.openvino import convert_onnx_to_openvino

    convert_onnx_to_openvino(source, path)
    return {}


def build_nncf_static(source: Path, path: Path, context: BuildContext) -> dict[str, Any]:
    """NNCF's static int8 quantisation of the IR, calibrated on the export's calibration texts; with the
    down-projection search, the search writes the IR instead."""
    from gte_st.export.quantize import quantize_openvino_static

    batches = context.calibration_batches()
    details: dict[str, Any] = {"calibration_texts": len(context.calibration_texts)}
    if context.search is not None:
        details["down_projection_search"] = context.search(source, path, batches)
    else:
        quantize_openvino_static(source, path, batches)
    return details


def build_nncf_weights(source: Path, path: Path, context: BuildContext) -> dict[str, Any]:
    """NNCF's int8 weight compression of the IR (int8 weights, computed in bf16 / f32)."""
    import nncf
    import openvino as ov

    from gte_st.export.onnx import quiet_loggers
    from gte_st.export.quantize import NNCF_LOGGER

    with quiet_loggers(NNCF_LOGGER):
        compressed = nncf.compress_weights(ov.Core().read_model(str(source)), mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(compressed, str(path), compress_to_fp16=False)
    return {}


__all__ = [
    "BuildContext",
    "build_nncf_static",
    "build_nncf_weights",
    "build_openvino_ir",
    "build_ort_dynamic",
    "build_ort_optimized",
    "build_ort_static",
    "build_torch_onnx",
]
