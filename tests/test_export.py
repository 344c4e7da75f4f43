"""ONNX export: the optimum-style layout, parity with torch, atomic refusal, int8, ONNX Runtime used directly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

SENTENCES = ["A man is playing a guitar.", "Hi!", "Two dogs run across a snowy field in the early morning light."]


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


def test_export_writes_verified_onnx_loadable_by_onnxruntime_and_sentence_transformers(tiny_gte_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from gte_st.export import export_onnx, load_onnx_model

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_gte_dir, model_dir)
    report = export_onnx(model_dir, thresholds={"int8": 0.0}, quantize="int8")
    assert report.ok and [v.variant for v in report.variants] == ["fp32", "int8"]
    assert (model_dir / "onnx" / "model.onnx").is_file() and (model_dir / "onnx" / "model_qint8.onnx").is_file()
    assert not list(model_dir.glob(".gte-st-export-*")), "temporary export folder left behind"
    assert report.variants[0].mean_cosine >= 0.999

    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state"]
    assert session.get_inputs()[0].shape == ["batch_size", "sequence_length"]

    reference = SentenceTransformer(str(model_dir), device="cpu").encode(SENTENCES, normalize_embeddings=True)
    direct = _numpy_mean_pool(model_dir, model_dir / "onnx" / "model.onnx", SENTENCES)
    assert (direct * reference).sum(1).min() > 0.9999
    via_st = load_onnx_model(model_dir).encode(SENTENCES, normalize_embeddings=True)
    assert (via_st * reference).sum(1).min() > 0.9999
    int8 = load_onnx_model(model_dir, "onnx/model_qint8.onnx").encode(SENTENCES, normalize_embeddings=True)
    assert int8.shape == reference.shape


def test_export_refuses_a_variant_that_fails_parity_and_writes_nothing(tiny_gte_dir, tmp_path, capsys):
    from gte_st.export import ExportParityError, export_onnx

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_gte_dir, model_dir)
    with pytest.raises(ExportParityError, match="refused: fp32 .* below the threshold 1.5"):
        export_onnx(model_dir, thresholds={"fp32": 1.5})
    assert not (model_dir / "onnx").exists()
    assert not list(model_dir.glob(".gte-st-export-*"))


def test_export_cli_errors(tmp_path, capsys):
    from gte_st.cli import main

    assert main(["export", str(tmp_path / "missing"), "--onnx"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path)])  # neither --onnx nor anything else to do


def test_minilm_fp32_and_int8_parity_with_quality_deltas(minilm_dir, shared_data, tmp_path, capsys):
    """The real model: fp32 cosine >= 0.999 and int8 >= 0.99 on a handful of sentences, STS deltas reported."""
    from gte_st.cli import main

    model_dir = tmp_path / "minilm"
    shutil.copytree(minilm_dir, model_dir)
    rows = [line.split("\t") for line in (shared_data / "stsb" / "sts-dev.csv").read_text().splitlines()[:40]]
    sts = tmp_path / "sts.jsonl"
    sts.write_text(
        "".join(json.dumps({"sentence1": r[5], "sentence2": r[6], "score": float(r[4])}) + "\n" for r in rows)
    )
    report_file = tmp_path / "report.json"
    code = main(
        ["export", str(model_dir), "--onnx", "--quantize", "int8", "--sts", str(sts), "--report", str(report_file)]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(report_file.read_text())
    fp32, int8 = report["variants"]
    assert fp32["written"] and fp32["mean_cosine"] >= 0.999 and fp32["min_cosine"] >= 0.999
    assert int8["written"] and int8["mean_cosine"] >= 0.99
    (task, scores), *_ = fp32["quality"].items()
    assert task.startswith("sts:") and abs(scores["delta"]) < 0.005
    assert abs(next(iter(int8["quality"].values()))["delta"]) < 0.05
    assert "delta" in out.out
    assert 'model_kwargs={"file_name": "onnx/model_qint8.onnx"}' in out.out  # how to load what was written


def _consumers_python() -> str:
    """The interpreter of the consumers' environment (scripts/setup_consumers_env.sh); skips the test without it."""
    python = os.environ.get("GTE_ST_CONSUMERS_PYTHON")
    if not python:
        pytest.skip("no consumers' environment: run scripts/setup_consumers_env.sh and set GTE_ST_CONSUMERS_PYTHON")
    return python


def _run_consumer(consumer: str, model_dir: Path, file_name: str, out_prefix: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    script = Path(__file__).with_name("consumers_check.py")
    done = subprocess.run(
        [_consumers_python(), str(script), consumer, str(model_dir), file_name, str(out_prefix), *SENTENCES],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def exported_dir(tiny_gte_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gte_st.export import export_onnx

    model_dir = tmp_path_factory.mktemp("exported") / "m"
    shutil.copytree(tiny_gte_dir, model_dir)
    export_onnx(model_dir, quantize="int8", thresholds={"int8": 0.0})
    return model_dir


def _reference(model_dir: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu").encode(SENTENCES)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_sentence_transformers_onnx_backend_loads_the_export(variant, exported_dir, tmp_path):
    """The export loads with ``SentenceTransformer(dir, backend="onnx")``, through the real optimum-based loader.

    optimum-onnx pins transformers<4.58, so this runs in the consumers' environment that ``scripts/test.sh`` builds
    (sentence-transformers 5.7, whose backend loader is the same file as 6.2's). The same interpreter also loads the
    torch model, which checks that a directory saved with sentence-transformers 6 + gte-st reads in the older
    release.
    """
    from gte_st.export import ONNX_FILE_NAMES

    out = _run_consumer("st-onnx", exported_dir, f"onnx/{ONNX_FILE_NAMES[variant]}", tmp_path / "emb_")
    assert "['Transformer', 'Pooling', 'Normalize'] ORTModelForFeatureExtraction" in out
    reference = _reference(exported_dir)
    np.testing.assert_allclose(np.load(tmp_path / "emb_torch.npy"), reference, atol=1e-5)
    onnx_embeddings = np.load(tmp_path / "emb_onnx.npy")
    # the ONNX pipeline applies the saved 1_Pooling (mean) and 2_Normalize modules too
    np.testing.assert_allclose(np.linalg.norm(onnx_embeddings, axis=1), 1.0, atol=1e-4)
    cosines = (onnx_embeddings * reference).sum(1)
    assert cosines.min() > (0.9999 if variant == "fp32" else 0.9), cosines


def test_fastembed_loads_the_export(exported_dir, tmp_path):
    """FastEmbed (which pins huggingface-hub<2, hence the consumers' environment) embeds with the exported file,
    the tokenizer at the root and the pooling read from ``1_Pooling/config.json``, as the torch model does."""
    out = _run_consumer("fastembed", exported_dir, "onnx/model.onnx", tmp_path / "emb_")
    assert out.startswith("fastembed")
    embeddings = np.load(tmp_path / "emb_fastembed.npy")
    reference = _reference(exported_dir)
    assert embeddings.shape == reference.shape
    assert (embeddings * reference).sum(1).min() > 0.9999
