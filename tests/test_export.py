"""Export: ONNX (fp32, fused O2, int8 dynamic / static) and OpenVINO IR (fp32, bf16, int8 static): layouts the
consumers read, the minimum-cosine gate, atomic refusal, loaders, native GTE / ModernBERT bases, the CLI."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

SENTENCES = ["A man is playing a guitar.", "Hi!", "Two dogs run across a snowy field in the early morning light."]
# Tiny random models: a small calibration set keeps static quantisation fast; the gate is still the real one.
FAST = {"calibration_size": 16}


def _copy(source: Path, tmp_path: Path) -> Path:
    model_dir = tmp_path / "m"
    shutil.copytree(source, model_dir)
    return model_dir


def _reference(model_dir: Path, texts: list[str] = SENTENCES) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu").encode(texts, normalize_embeddings=True)


def _numpy_mean_pool(model_dir: Path, onnx_file: Path, texts: list[str]) -> np.ndarray:
    """What FastEmbed / Infinity do: tokenizer from the root, ONNX Runtime, pooling from 1_Pooling/config.json."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    assert pooling.get("pooling_mode") == "mean" or pooling.get("pooling_mode_mean_tokens") is True
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
    feed = {node.name: encoded[node.name].astype(np.int64) for node in session.get_inputs()}
    (hidden,) = session.run(["last_hidden_state"], feed)
    mask = encoded["attention_mask"][..., None].astype(np.float32)
    emb = (hidden * mask).sum(1) / mask.sum(1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def onnx_exported(tiny_gte_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny GTE model exported once to ONNX with the fused graph and the dynamic int8 variant."""
    from gte_st.export import export

    model_dir = _copy(tiny_gte_dir, tmp_path_factory.mktemp("onnx"))
    return model_dir, export(model_dir, "onnx", "int8-dynamic")


def test_onnx_export_writes_verified_variants_in_the_optimum_layout(onnx_exported):
    import onnxruntime as ort

    from gte_st.export import PARITY_THRESHOLDS, load_exported, load_onnx_model

    model_dir, report = onnx_exported
    assert report.ok and [v.variant for v in report.variants] == ["onnx-fp32", "onnx-O2", "onnx-int8-dynamic"]
    assert sorted(p.name for p in (model_dir / "onnx").iterdir()) == [
        "model.onnx",
        "model_O2.onnx",
        "model_qint8.onnx",
        "model_quantized.onnx",
    ]
    # transformers.js's name for its q8 variant is a second name of the same file, not a second copy
    onnx_dir = model_dir / "onnx"
    assert (onnx_dir / "model_quantized.onnx").samefile(onnx_dir / "model_qint8.onnx")
    assert report.variants[2].details["transformers_js_name"] == "onnx/model_quantized.onnx"
    assert not list(model_dir.glob(".gte-st-export-*")), "temporary export folder left behind"
    for variant in report.variants:
        assert variant.min_cosine >= PARITY_THRESHOLDS[variant.precision] and variant.threshold > 0.9
        assert variant.min_cosine <= variant.mean_cosine
    assert report.variants[1].details["fused_operators"]["Attention"] == 2  # one fused attention per layer

    session = ort.InferenceSession(str(model_dir / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state"]
    assert session.get_inputs()[0].shape == ["batch_size", "sequence_length"]

    reference = _reference(model_dir)
    direct = _numpy_mean_pool(model_dir, model_dir / "onnx" / "model_O2.onnx", SENTENCES)
    assert (direct * reference).sum(1).min() > 0.9999
    assert (load_onnx_model(model_dir).encode(SENTENCES) * reference).sum(1).min() > 0.9999
    int8 = load_exported(model_dir, "onnx/model_qint8.onnx")
    assert int8.backend == "onnx" and int8.encode(SENTENCES).shape == reference.shape


def test_refused_variant_writes_nothing(tiny_gte_dir, tmp_path):
    from gte_st.export import ExportParityError, export

    model_dir = _copy(tiny_gte_dir, tmp_path)
    with pytest.raises(ExportParityError, match="refused: onnx-fp32 .* minimum cosine .* below the threshold 1.5"):
        export(model_dir, "onnx", optimize=False, thresholds={"fp32": 1.5})
    assert not (model_dir / "onnx").exists()
    assert not list(model_dir.glob(".gte-st-export-*"))


def test_static_int8_onnx_calibrates_on_a_user_file(tiny_gte_dir, tmp_path):
    import onnx

    from gte_st.export import export, load_exported

    model_dir = _copy(tiny_gte_dir, tmp_path)
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n".join(SENTENCES * 3) + "\n\n")
    root, gte_logger = logging.getLogger(), logging.getLogger("gte_st")
    levels = (root.level, gte_logger.level)
    report = export(model_dir, "onnx", "int8-static", optimize=False, calibration=calibration)
    # ONNX Runtime's quantiser notices are silenced for the call only: the process keeps its own warnings
    assert (root.level, gte_logger.level) == levels and root.getEffectiveLevel() < logging.ERROR
    assert [v.variant for v in report.variants] == ["onnx-fp32", "onnx-int8-static"]
    assert report.variants[1].details["calibration_texts"] == 9  # the empty lines are skipped
    # the fused graph it is built from is an intermediate here (optimize=False): not written
    assert sorted(p.name for p in (model_dir / "onnx").iterdir()) == ["model.onnx", "model_qint8_static.onnx"]
    graph = onnx.load(str(model_dir / "onnx" / "model_qint8_static.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}  # QDQ format
    cosines = load_exported(model_dir, "onnx/model_qint8_static.onnx").encode(SENTENCES) * _reference(model_dir)
    assert cosines.sum(1).min() >= report.variants[1].threshold


def test_openvino_ir_in_the_layout_sentence_transformers_reads(tiny_gte_dir, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from gte_st.export import OpenVINOEncoder, export, load_openvino_model

    model_dir = _copy(tiny_gte_dir, tmp_path)
    nncf_logger, handler = logging.getLogger("nncf"), logging.StreamHandler()
    nncf_logger.addHandler(handler)  # a handler of the user's on NNCF's (non-propagating) logger
    level = nncf_logger.level
    try:
        report = export(model_dir, "openvino", "int8-static", **FAST)
    finally:
        nncf_logger.removeHandler(handler)
    # NNCF is silenced for the call only: its logger's level and the user's handler are as they were
    assert nncf_logger.level == level and handler.level == logging.NOTSET
    assert [v.variant for v in report.variants] == ["openvino-fp32", "openvino-int8-static"]
    assert sorted(p.name for p in (model_dir / "openvino").iterdir()) == [
        "openvino_model.bin",
        "openvino_model.xml",
        "openvino_model_qint8_quantized.bin",
        "openvino_model_qint8_quantized.xml",
    ]
    assert not (model_dir / "onnx").exists()  # the ONNX graph it was converted from is an intermediate
    assert report.variants[0].details["inference_precision"] == "f32"  # the fp32 gate ran in f32

    import openvino as ov

    ir = ov.Core().read_model(str(model_dir / "openvino" / "openvino_model.xml"))
    assert [port.get_any_name() for port in ir.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert ir.outputs[0].get_any_name() == "last_hidden_state"
    assert ir.inputs[0].get_partial_shape().is_dynamic
    quantized = ov.Core().read_model(str(model_dir / "openvino" / "openvino_model_qint8_quantized.xml"))
    assert "FakeQuantize" in {op.get_type_name() for op in quantized.get_ops()}

    model = load_openvino_model(model_dir, precision="fp32")
    assert isinstance(model[0].model, OpenVINOEncoder) and model.backend == "openvino"
    reference = _reference(model_dir)
    np.testing.assert_allclose(model.encode(SENTENCES), reference, atol=1e-5)
    # THROUGHPUT: several streams, each batch split into row slices run at once; the same embeddings.
    streams = load_openvino_model(
        model_dir, precision="fp32", ov_config={"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2}
    )
    assert len(streams[0].model.requests) >= 2
    np.testing.assert_allclose(streams.encode(SENTENCES, batch_size=3), reference, atol=1e-5)


def test_openvino_encoder_runs_slices_and_compiles_recurring_shapes_static(tiny_gte_dir, tmp_path):
    pytest.importorskip("openvino")
    from gte_st.export import OpenVINOEncoder, export, load_openvino_model

    model_dir = _copy(tiny_gte_dir, tmp_path)
    export(model_dir, "openvino", "none")
    texts = [f"sentence {i} about a dog running across a field" for i in range(10)]
    reference = _reference(model_dir, texts)
    whole = load_openvino_model(model_dir, precision="fp32", encoder_options={"slice_rows": None, "static_shapes": 0})
    model = load_openvino_model(
        model_dir, precision="fp32", encoder_options={"slice_rows": 4, "static_shapes": 1, "static_after": 2}
    )
    encoder = model[0].model
    length = model.preprocess(texts)["input_ids"].shape[1]
    length = -(-length // 16) * 16  # the sequence axis is padded to a multiple of 16 tokens
    # One batch of 10 rows: slices of 4, 4 and 2 rows. The second (4, length) slice is the shape's second run, so it
    # is compiled static; the partial (2, length) slice never is (nor counted): a compile would be its latency.
    first = model.encode(texts, batch_size=10, normalize_embeddings=True)
    assert list(encoder.static) == [(4, length)]
    second = model.encode(texts, batch_size=10, normalize_embeddings=True)
    assert list(encoder.static) == [(4, length)] and (2, length) not in encoder.shape_counts
    for _ in range(3):
        model.encode(texts[:1], normalize_embeddings=True)  # a recurring single query: no compile either
    assert list(encoder.static) == [(4, length)]
    for embeddings in (first, second, whole.encode(texts, batch_size=10, normalize_embeddings=True)):
        np.testing.assert_allclose(embeddings, reference, atol=1e-5)
    xml = model_dir / "openvino" / "openvino_model.xml"
    for bad in ({"slice_rows": 0}, {"static_shapes": -1}, {"static_after": 0}, {"pad_to_multiple": 0}):
        with pytest.raises(ValueError, match="slice_rows|static_|pad_to_multiple"):
            OpenVINOEncoder(xml, encoder.config, **bad)


def test_openvino_encoder_runs_batches_on_the_bulk_streams(tiny_gte_dir, tmp_path):
    """With ``bulk_hint="THROUGHPUT"`` a call of several slices runs on a second compilation under that hint (one
    slice per stream at a time; its recurring full slices get the static compile), while a call of one slice -- a
    query -- stays on the latency compilation that uses every core. The embeddings are the same either way."""
    pytest.importorskip("openvino")
    from gte_st.export import OpenVINOEncoder, export, load_openvino_model

    model_dir = _copy(tiny_gte_dir, tmp_path)
    export(model_dir, "openvino", "none")
    texts = [f"sentence {i} about a cat sleeping on a warm windowsill" for i in range(6)]
    reference = _reference(model_dir, texts)
    model = load_openvino_model(
        model_dir, precision="fp32", encoder_options={"slice_rows": 2, "static_after": 2, "bulk_hint": "THROUGHPUT"}
    )
    encoder = model[0].model
    np.testing.assert_allclose(model.encode(texts[:1], normalize_embeddings=True), reference[:1], atol=1e-5)
    assert encoder.bulk_requests is None and not encoder.static  # a query compiles nothing more
    for _ in range(2):
        np.testing.assert_allclose(model.encode(texts, batch_size=6, normalize_embeddings=True), reference, atol=1e-5)
    assert encoder.bulk_requests is not None and len(encoder.static) == 1
    (static,) = encoder.static.values()
    for requests in (static, encoder.bulk_requests):
        assert str(requests[0].get_compiled_model().get_property("PERFORMANCE_HINT")).endswith("THROUGHPUT")
    assert str(encoder.requests[0].get_compiled_model().get_property("PERFORMANCE_HINT")).endswith("LATENCY")
    np.testing.assert_allclose(model.encode(texts[:1], normalize_embeddings=True), reference[:1], atol=1e-5)
    with pytest.raises(ValueError, match="bulk_hint"):
        OpenVINOEncoder(model_dir / "openvino" / "openvino_model.xml", encoder.config, bulk_hint="FAST")


def test_openvino_encoder_pads_lengths_to_buckets_without_changing_embeddings(tiny_gte_dir, tmp_path):
    """Queries of different token lengths share a handful of padded shapes (the dynamic-shape compilation builds
    kernels per new shape on its first run): padded or not, the embeddings are the same."""
    pytest.importorskip("openvino")
    from gte_st.export import export, load_openvino_model

    model_dir = _copy(tiny_gte_dir, tmp_path)
    export(model_dir, "openvino", "none")
    queries = [" ".join(["word"] * n) for n in range(1, 40, 3)]
    exact = load_openvino_model(model_dir, precision="fp32", encoder_options={"pad_to_multiple": None})
    padded = load_openvino_model(model_dir, precision="fp32")
    shapes = []
    request = padded[0].model.requests[0]
    for query in queries:
        np.testing.assert_allclose(
            padded.encode([query], normalize_embeddings=True), exact.encode([query], normalize_embeddings=True),
            atol=1e-5,
        )  # fmt: skip
        shapes.append(tuple(request.get_tensor("input_ids").shape))
    assert {shape[1] for shape in shapes} == {16, 32, 48} and len(set(shapes)) < len(queries) / 3


def test_openvino_encoder_serves_concurrent_threads(tiny_gte_dir, tmp_path):
    """Several threads encoding through one OpenVINO model at once (a threaded server) get the embeddings each
    would get alone: the shared infer requests and shape counts are used one forward at a time."""
    pytest.importorskip("openvino")
    from concurrent.futures import ThreadPoolExecutor

    from gte_st.export import export, load_openvino_model

    model_dir = _copy(tiny_gte_dir, tmp_path)
    export(model_dir, "openvino", "none")
    model = load_openvino_model(model_dir, precision="fp32", encoder_options={"slice_rows": 2, "static_after": 3})
    jobs = [[f"thread {t} text {i} " + "word " * (3 * t + i) for i in range(6)] for t in range(6)]
    alone = [_reference(model_dir, texts) for texts in jobs]
    for _ in range(3):
        with ThreadPoolExecutor(max_workers=6) as pool:
            got = list(pool.map(lambda texts: model.encode(texts, batch_size=6, normalize_embeddings=True), jobs))
        for embeddings, expected in zip(got, alone, strict=True):
            np.testing.assert_allclose(embeddings, expected, atol=1e-5)
    assert len(model[0].model.static) == 1


def _int8_down_projections(xml: Path, source: Path) -> list[str]:
    """The down-projections (named from the float IR ``source``) whose activation input in the IR ``xml`` is
    int8-quantised, i.e. comes from a FakeQuantize."""
    import openvino as ov

    from gte_st.export.quantize import down_projections

    downs = set(down_projections(ov.Core().read_model(str(source))))
    return sorted(
        op.get_friendly_name()
        for op in ov.Core().read_model(str(xml)).get_ops()
        if op.get_friendly_name() in downs and op.input_value(0).get_node().get_type_name() == "FakeQuantize"
    )


@pytest.mark.parametrize(
    ("threshold", "expected", "trials"),
    [(0.975, 2, [2, 2, 2]), (0.985, 1, [2, 2, 2, 1, 1, 2]), (0.995, 0, [2, 2, 2, 1, 1])],
)
def test_down_projection_search_adds_int8_layers_while_the_score_allows(
    threshold, expected, trials, tiny_gte_dir, tmp_path
):
    """The search on a real IR and real NNCF runs, with a score that costs 0.01 per int8 down-projection: first
    both in int8 at each SmoothQuant strength (0.98: enough at 0.975); then greedily -- each alone passes 0.985 but
    two together do not (one is kept); at 0.995 none passes and every one stays float."""
    pytest.importorskip("nncf")
    from sentence_transformers import SentenceTransformer

    from gte_st.export import export
    from gte_st.export.quantize import SMOOTH_QUANT_ALPHAS, calibration_batches, search_int8_down_projections
    from gte_st.export.samples import calibration_sample

    model_dir = _copy(tiny_gte_dir, tmp_path)
    export(model_dir, "openvino", "none")
    source = model_dir / "openvino" / "openvino_model.xml"
    inputs = ["input_ids", "attention_mask", "token_type_ids"]
    batches = calibration_batches(SentenceTransformer(str(model_dir), device="cpu"), calibration_sample(16), inputs)
    scored: list[list[str]] = []

    def score(xml: Path) -> float:
        scored.append(_int8_down_projections(xml, source))
        return 1.0 - 0.01 * len(scored[-1])

    target = tmp_path / "q.xml"
    result = search_int8_down_projections(source, target, batches, score, threshold)
    assert [len(s) for s in scored] == trials
    assert len(result["int8_down_projections"]) == expected
    assert _int8_down_projections(target, source) == sorted(result["int8_down_projections"])
    assert [k for k in result["scores"] if k.startswith("all@")] == [f"all@{a}" for a in SMOOTH_QUANT_ALPHAS]
    assert result["smooth_quant_alpha"] == (SMOOTH_QUANT_ALPHAS[0] if expected else None)
    assert result["nncf_runs"] == (3 if expected == 2 else 6)  # + two singles + one pair, or + the all-float default
    assert set(result["outlier_channels"]) >= {"not split"}
    assert not (tmp_path / ".down-projection-search").exists()  # the trials are cleaned up


def test_split_outlier_channels_is_exact_and_bounds_the_down_projection_inputs(tiny_gte_dir, tmp_path):
    """Outlier channel splitting on a real IR: every split channel's copies stay under the layer's threshold, the
    down-projections' reduction dimension grows by the copies, and the IR computes what it did."""
    pytest.importorskip("openvino")
    import openvino as ov
    from sentence_transformers import SentenceTransformer

    from gte_st.export import export
    from gte_st.export.outlier_channels import channel_maxima, split_outlier_channels
    from gte_st.export.quantize import calibration_batches, down_projections
    from gte_st.export.samples import calibration_sample

    model_dir = _copy(tiny_gte_dir, tmp_path)
    export(model_dir, "openvino", "none")
    source, target = model_dir / "openvino" / "openvino_model.xml", tmp_path / "split.xml"
    inputs = ["input_ids", "attention_mask", "token_type_ids"]
    batches = calibration_batches(SentenceTransformer(str(model_dir), device="cpu"), calibration_sample(16), inputs)
    core = ov.Core()
    downs = down_projections(core.read_model(str(source)))
    with pytest.raises(ValueError, match="ratio"):
        split_outlier_channels(source, target, batches, downs, ratio=0)
    report = split_outlier_channels(source, target, batches, downs, ratio=0.5)  # low: many split on a tiny model
    before, after = core.read_model(str(source)), core.read_model(str(target))
    assert report["not split"] == {} and set(report) == {"not split", *downs}
    by_name = {op.get_friendly_name(): op for op in after.get_ops()}
    for name in downs:
        entry, down = report[name], by_name[name]
        assert entry["channels"] and all(copies >= 2 for _, _, copies in entry["channels"])
        width = down.input_value(0).get_partial_shape()[-1].get_length()
        assert width == _width(before, name) + sum(copies - 1 for _, _, copies in entry["channels"])
        (peak,) = channel_maxima(after, [down.input_value(0).get_node()], batches)
        assert peak.max() <= entry["threshold"] * (1 + 1e-4)  # every copy under the threshold
    old = core.compile_model(before, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    new = core.compile_model(after, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for batch in batches[:2]:
        np.testing.assert_allclose(new(batch)[0], old(batch)[0], atol=1e-4)


def _width(model, name: str) -> int:
    op = next(op for op in model.get_ops() if op.get_friendly_name() == name)
    return op.input_value(0).get_partial_shape()[-1].get_length()


def test_export_down_projection_search_is_gated_and_reported(tiny_gte_dir, tmp_path):
    pytest.importorskip("nncf")
    from gte_st.export import export

    model_dir = _copy(tiny_gte_dir, tmp_path)
    with pytest.raises(ValueError, match="down_projections='search' applies to the openvino-int8-static variant only"):
        export(model_dir, "onnx", "int8-static", down_projections="search")
    assert not (model_dir / "onnx").exists()  # refused before any work
    # a threshold of 0 lets every down-projection into int8; the gate (also 0) still runs and reports
    report = export(model_dir, "openvino", "int8-static", down_projections="search", thresholds={"int8": 0.0}, **FAST)
    variant = report.variants[-1]
    search = variant.details["down_projection_search"]
    assert variant.written and len(search["int8_down_projections"]) == 2
    ir = model_dir / "openvino"
    assert _int8_down_projections(ir / "openvino_model_qint8_quantized.xml", ir / "openvino_model.xml") == sorted(
        search["int8_down_projections"]
    )
    assert variant.min_cosine > 0.5  # a real, measured parity figure


def test_openvino_bf16_is_gated_as_bf16_execution(tiny_gte_dir, tmp_path):
    pytest.importorskip("openvino")
    from gte_st.export import PARITY_THRESHOLDS, export
    from gte_st.hardware import cpu_supports_bf16

    model_dir = _copy(tiny_gte_dir, tmp_path)
    (variant,) = export(model_dir, "openvino", "bf16").variants
    assert (
        variant.variant == "openvino-bf16" and variant.written and variant.file_name == "openvino/openvino_model.xml"
    )
    # OpenVINO executes bf16 where the CPU has it natively (AMX / AVX512-BF16) and f32 elsewhere (an AVX2-only CPU);
    # the report states what ran, not what was asked for
    native = "bf16" if cpu_supports_bf16() else "f32"
    assert variant.threshold == PARITY_THRESHOLDS["bf16"] and variant.details["inference_precision"] == native
    pytest.importorskip("nncf")
    (weights,) = export(model_dir, "openvino", "int8-dynamic", optimize=False).variants[1:]
    assert weights.variant == "openvino-int8-weights" and weights.written
    import openvino as ov

    ir = ov.Core().read_model(str(model_dir / weights.file_name))
    constants = [op for op in ir.get_ops() if op.get_type_name() == "Constant"]
    # INT8_ASYM: unsigned int8 weights with zero points
    assert "u8" in {op.get_output_element_type(0).get_type_name() for op in constants}
    with pytest.raises(
        ValueError,
        match=r"quantize='bf16' is an export variant of another format \(openvino-bf16\), not of format='onnx'",
    ):
        export(model_dir, "onnx", "bf16")
    with pytest.raises(ValueError, match="format must be"):
        export(model_dir, "tensorrt")


@pytest.mark.parametrize("base", ["tiny_gte_native_dir", "tiny_modernbert_dir"])
def test_native_gte_and_modernbert_export_with_parity(base, request, tmp_path):
    """RoPE (native GteModel) and ModernBERT's local/global attention survive ONNX export, fusion, int8 and the
    OpenVINO conversion; the fp32 graphs reproduce torch (min cosine >= 0.999 on the parity sample)."""
    ov = pytest.importorskip("openvino")
    import gte_st
    from gte_st.export import PARITY_SAMPLE, export, load_exported

    model_dir = tmp_path / "m"
    gte_st.build_model(str(request.getfixturevalue(base))).save(str(model_dir))
    onnx_report = export(model_dir, "onnx", "int8-dynamic")
    ov_report = export(model_dir, "openvino")
    assert onnx_report.ok and ov_report.ok
    for variant in onnx_report.variants + ov_report.variants:
        assert variant.min_cosine >= variant.threshold, variant
    reference = _reference(model_dir, PARITY_SAMPLE)
    for file_name in ("onnx/model_O2.onnx", "openvino/openvino_model.xml"):
        kwargs = {"precision": "fp32"} if file_name.endswith(".xml") else {}
        cosines = (load_exported(model_dir, file_name, **kwargs).encode(PARITY_SAMPLE) * reference).sum(1)
        assert cosines.min() >= 0.999, (file_name, cosines.min())
    # GLU feed-forwards: the down-projection's input is a product of two branches, which the split leaves alone
    from sentence_transformers import SentenceTransformer

    from gte_st.export.outlier_channels import split_outlier_channels
    from gte_st.export.quantize import calibration_batches, down_projections

    ir = model_dir / "openvino" / "openvino_model.xml"
    inputs = [port.get_any_name() for port in ov.Core().read_model(str(ir)).inputs]
    batches = calibration_batches(SentenceTransformer(str(model_dir), device="cpu"), PARITY_SAMPLE[:8], inputs)
    downs = down_projections(ov.Core().read_model(str(ir)))
    report = split_outlier_channels(ir, tmp_path / "split.xml", batches, downs)
    assert downs and report == {"not split": {name: "input is Multiply" for name in downs}}


def test_parity_sample_has_short_long_and_non_english_texts(tiny_model):
    from gte_st.export import PARITY_SAMPLE, calibration_sample, read_texts

    tokenizer = tiny_model.tokenizer
    lengths = [len(tokenizer(t)["input_ids"]) for t in PARITY_SAMPLE]
    assert min(lengths) <= 3 and max(lengths) > 512
    assert sum(any(ord(c) > 0x2FF for c in t) for t in PARITY_SAMPLE) >= 4
    calibration = calibration_sample(150)
    assert len(calibration) == len(set(calibration)) == 150
    assert read_texts(calibration, limit=5) == calibration[:5]


def test_read_texts_from_txt_and_beir_jsonl_gz(tmp_path):
    import gzip

    from gte_st.export import read_texts

    (tmp_path / "t.txt").write_text("one\n\ntwo\n")
    assert read_texts(tmp_path / "t.txt") == ["one", "two"]
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"_id": "1", "title": "T", "text": "body"}) + "\n")
    assert read_texts(tmp_path / "c.jsonl.gz") == ["T body"]
    with pytest.raises(ValueError, match="empty corpus"):
        (tmp_path / "empty.txt").write_text("\n")
        read_texts(tmp_path / "empty.txt")
    # the one corpus reader's rules: a bad row is named with its file and line, an unknown format refused
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl.*2"):
        read_texts(tmp_path / "bad.jsonl")
    (tmp_path / "texts.lst").write_text("one\n")
    with pytest.raises(ValueError, match="unsupported corpus format"):
        read_texts(tmp_path / "texts.lst")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_texts(tmp_path / "missing.txt")


def test_export_cli_errors_and_report(tiny_gte_dir, tmp_path, capsys):
    from gte_st.cli import main

    assert main(["export", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tiny_gte_dir), "--quantize", "int8"]) == 2  # the unreleased alias is gone
    assert "invalid choice: 'int8'" in capsys.readouterr().err
    assert main(["export", str(tiny_gte_dir), "--quantize", "bf16"]) == 1
    assert "export variant of another format (openvino-bf16)" in capsys.readouterr().err

    model_dir = _copy(tiny_gte_dir, tmp_path)
    report_file = tmp_path / "report.json"
    code = main(
        ["export", str(model_dir), "--quantize", "int8-dynamic", "--no-optimize", "--report", str(report_file)]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert [v["variant"] for v in json.loads(report_file.read_text())["variants"]] == [
        "onnx-fp32",
        "onnx-int8-dynamic",
    ]
    assert 'model_kwargs={"file_name": "onnx/model_qint8.onnx"}' in out.out  # how to load what was written
    # a refused variant: the table is printed, the exit code is 1, the file is not written
    code = main(["export", str(model_dir), "--no-optimize", "--threshold", "fp32=1.5", "--report", str(report_file)])
    out = capsys.readouterr()
    assert code == 1 and "REFUSED" in out.out and "below the threshold 1.5" in out.err
    assert json.loads(report_file.read_text())["ok"] is False


@pytest.mark.slow
def test_minilm_gate_judges_the_minimum_and_reports_quality_deltas(minilm_dir, shared_data, tmp_path):
    """all-MiniLM-L6-v2: fp32 and fused fp32 reproduce torch on every sample text; the dynamic int8 variant's
    *minimum* cosine (a one-word text) is what decides, whatever its mean; static int8 is reported with STS deltas."""
    from gte_st.export import ExportParityError, export

    model_dir = _copy(minilm_dir, tmp_path)
    rows = [line.split("\t") for line in (shared_data / "stsb" / "sts-dev.csv").read_text().splitlines()[:40]]
    sts = tmp_path / "sts.jsonl"
    sts.write_text(
        "".join(json.dumps({"sentence1": r[5], "sentence2": r[6], "score": float(r[4])}) + "\n" for r in rows)
    )
    try:
        report = export(model_dir, "onnx", "int8-dynamic", sts=sts)
    except ExportParityError as exc:
        report = exc.report
    fp32, o2, int8 = report.variants
    assert fp32.written and o2.written and min(fp32.min_cosine, o2.min_cosine) >= 0.999
    (task, scores), *_ = fp32.quality.items()
    assert task.startswith("sts:") and abs(scores["delta"]) < 0.005
    assert int8.written == (int8.min_cosine >= 0.98)  # the minimum decides ...
    assert (model_dir / "onnx" / "model_qint8.onnx").is_file() == int8.written
    assert int8.mean_cosine > int8.min_cosine  # ... not the mean


@pytest.fixture(scope="module")
def consumers_python() -> str:
    """The interpreter of the consumers' environment (scripts/setup_consumers_env.sh); skips the test without it."""
    python = os.environ.get("GTE_ST_CONSUMERS_PYTHON")
    if not python:
        pytest.skip("no consumers' environment: run scripts/setup_consumers_env.sh and set GTE_ST_CONSUMERS_PYTHON")
    return python


def _run_consumer(python: str, consumer: str, model_dir: Path, file_name: str, out_prefix: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    script = Path(__file__).with_name("consumers_check.py")
    done = subprocess.run(
        [python, str(script), consumer, str(model_dir), file_name, str(out_prefix), *SENTENCES],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def exported_dir(consumers_python: str, tiny_gte_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GTE model with every artifact the consumers load: ONNX fp32 / O2 / int8 and the OpenVINO IRs."""
    from gte_st.export import export

    model_dir = _copy(tiny_gte_dir, tmp_path_factory.mktemp("exported"))
    export(model_dir, "onnx", "int8-dynamic")
    if _has("openvino") and _has("nncf"):
        export(model_dir, "openvino", "int8-static", **FAST)
    return model_dir


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# model_qint8.onnx is built from the fused model_O2.onnx: loading it covers the contrib ops (QAttention, SkipLayerNorm)
@pytest.mark.parametrize("file_name", ["onnx/model.onnx", "onnx/model_qint8.onnx"])
def test_sentence_transformers_onnx_backend_loads_the_export(file_name, consumers_python, exported_dir, tmp_path):
    """The export loads with ``SentenceTransformer(dir, backend="onnx")``, through the real optimum-based loader.

    optimum-onnx pins transformers<4.58, so this runs in the consumers' environment that ``scripts/test.sh`` builds
    (sentence-transformers 5.7, whose backend loader is the same file as 6.2's). The same interpreter also loads the
    torch model, which checks that a directory saved with sentence-transformers 6 + gte-st reads in the older
    release.
    """
    out = _run_consumer(consumers_python, "st-onnx", exported_dir, file_name, tmp_path / "emb_")
    assert "['Transformer', 'Pooling', 'Normalize'] ORTModelForFeatureExtraction" in out
    reference = _reference(exported_dir)
    np.testing.assert_allclose(np.load(tmp_path / "emb_torch.npy"), reference, atol=1e-5)
    onnx_embeddings = np.load(tmp_path / "emb_onnx.npy")
    # the ONNX pipeline applies the saved 1_Pooling (mean) and 2_Normalize modules too
    np.testing.assert_allclose(np.linalg.norm(onnx_embeddings, axis=1), 1.0, atol=1e-4)
    cosines = (onnx_embeddings * reference).sum(1)
    assert cosines.min() > (0.98 if "qint8" in file_name else 0.9999), cosines


@pytest.mark.parametrize("file_name", ["openvino/openvino_model.xml", "openvino/openvino_model_qint8_quantized.xml"])
def test_sentence_transformers_openvino_backend_loads_the_ir(file_name, consumers_python, exported_dir, tmp_path):
    """``SentenceTransformer(dir, backend="openvino")`` (optimum-intel's OVModelForFeatureExtraction, in the
    consumers' environment) reads the IR written by the ``openvino`` package alone."""
    if not (exported_dir / file_name).is_file():
        pytest.skip("openvino / nncf not installed in the main environment")
    out = _run_consumer(consumers_python, "st-openvino", exported_dir, file_name, tmp_path / "emb_")
    assert "['Transformer', 'Pooling', 'Normalize'] OVModelForFeatureExtraction" in out
    embeddings = np.load(tmp_path / "emb_openvino.npy")
    cosines = (embeddings * _reference(exported_dir)).sum(1)
    assert cosines.min() > (0.98 if "qint8" in file_name else 0.99), cosines  # OpenVINO's default: bf16 on AMX


def test_fastembed_loads_the_export(consumers_python, exported_dir, tmp_path):
    """FastEmbed (which pins huggingface-hub<2, hence the consumers' environment) embeds with the exported file,
    the tokenizer at the root and the pooling read from ``1_Pooling/config.json``, as the torch model does."""
    out = _run_consumer(consumers_python, "fastembed", exported_dir, "onnx/model.onnx", tmp_path / "emb_")
    assert out.startswith("fastembed")
    embeddings = np.load(tmp_path / "emb_fastembed.npy")
    reference = _reference(exported_dir)
    assert embeddings.shape == reference.shape
    assert (embeddings * reference).sum(1).min() > 0.9999
