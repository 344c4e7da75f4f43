"""Export a sentence-transformers / GTE model to ONNX or OpenVINO IR (fp32, fused, int8 dynamic / static, bf16),
each variant verified against the torch model before it is written, and load the artifacts back.

* :mod:`~gte_st.export.onnx` -- torch -> ONNX feature-extraction graph; ONNX Runtime's transformer optimizer;
* :mod:`~gte_st.export.openvino` -- ONNX -> OpenVINO IR (``openvino/openvino_model.xml`` + ``.bin``);
* :mod:`~gte_st.export.quantize` -- ONNX Runtime dynamic / static (QDQ) int8, NNCF static int8;
* :mod:`~gte_st.export.samples` -- the built-in parity and calibration texts (offline);
* :mod:`~gte_st.export.parity` -- the gate: minimum cosine per precision class;
* :mod:`~gte_st.export.variants` -- which files an export writes, atomically, and :func:`export`;
* :mod:`~gte_st.export.runtime` -- ONNX Runtime / OpenVINO encoders inside a SentenceTransformer, loaders.

Python API::

    from gte_st.export import export, load_exported

    report = export("my-gte", format="onnx", quantize="int8-static", sts="stsb/sts-test.csv")
    model = load_exported("my-gte", "onnx/model_qint8_static.onnx")   # a SentenceTransformer on ONNX Runtime
    export("my-gte", format="openvino")                                 # openvino/openvino_model.xml + .bin
    model = load_exported("my-gte", backend="openvino")

The command line is ``gte-st export`` (:mod:`gte_st.commands.export`).
"""

from __future__ import annotations

from gte_st.export.onnx import ONNX_INPUT_NAMES
from gte_st.export.parity import PARITY_THRESHOLDS, parity
from gte_st.export.runtime import (
    OnnxRuntimeEncoder,
    OpenVINOEncoder,
    backend_of,
    default_file,
    load_exported,
    load_model_dir,
    load_onnx_model,
    load_openvino_model,
)
from gte_st.export.samples import PARITY_SAMPLE, calibration_sample, read_texts
from gte_st.export.variants import (
    ExportParityError,
    ExportReport,
    VariantReport,
    export,
)

__all__ = [
    "default_file",
    "ONNX_INPUT_NAMES",
    "PARITY_SAMPLE",
    "PARITY_THRESHOLDS",
    "ExportParityError",
    "ExportReport",
    "OnnxRuntimeEncoder",
    "OpenVINOEncoder",
    "VariantReport",
    "backend_of",
    "calibration_sample",
    "export",
    "load_exported",
    "load_model_dir",
    "load_onnx_model",
    "load_openvino_model",
    "parity",
    "read_texts",
]
