"""ONNX -> OpenVINO IR, with the ``openvino`` package itself (no optimum-intel, which pins transformers<5.6).

The IR goes where sentence-transformers' ``backend="openvino"`` (optimum-intel's ``OVModelForFeatureExtraction``)
looks for it: ``<transformer folder>/openvino/openvino_model.xml`` + ``openvino_model.bin``, with the same input and
output names as the ONNX graph (``input_ids``, ``attention_mask`` [, ``token_type_ids``] -> ``last_hidden_state``)
and dynamic batch / sequence dimensions. Weights are stored in fp32 (``compress_to_fp16=False``): the precision the
CPU computes in is chosen when the IR is compiled (``INFERENCE_PRECISION_HINT``; OpenVINO's default is bf16 on AMX /
AVX512-BF16 CPUs and f32 elsewhere).
"""

from __future__ import annotations

from pathlib import Path


def convert_onnx_to_openvino(onnx_path: str | Path, xml_path: str | Path) -> None:
    """Convert the ONNX feature-extraction graph ``onnx_path`` into the IR ``xml_path`` (+ ``.bin``)."""
    import openvino as ov

    ov_model = ov.convert_model(str(onnx_path))
    ov.save_model(ov_model, str(xml_path), compress_to_fp16=False)


def default_inference_precision(device: str = "CPU") -> str:
    """OpenVINO's default ``INFERENCE_PRECISION_HINT`` on this machine (``"bf16"`` or ``"f32"``)."""
    import openvino as ov

    value = ov.Core().get_property(device, "INFERENCE_PRECISION_HINT")
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)
