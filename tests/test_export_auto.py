"""backend="auto": the export records each variant's gate and the torch files it verified against; auto runs the
recorded fastest verified path, never a stale, ungated or altered artifact (and says why), and every command that
encodes takes ``--backend auto``."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
TEXTS = ["A man is playing a guitar.", "Hi!", "Two dogs run across a snowy field in the early morning light."]


@pytest.fixture(scope="module")
def exported(tiny_gte_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GTE model with its plain ONNX graph and (where openvino is installed) its fp32 IR, built once."""
    from gte_st.export import export

    model_dir = tmp_path_factory.mktemp("auto") / "m"
    shutil.copytree(tiny_gte_dir, model_dir)
    export(model_dir, "onnx", optimize=False)
    if HAS_OPENVINO:
        export(model_dir, "openvino")
    return model_dir


@pytest.fixture
def model_dir(exported: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of the exported model (tests alter it) and an empty calibration cache."""
    monkeypatch.setenv("GTE_ST_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "m"
    shutil.copytree(exported, copy, copy_function=shutil.copy2)  # times kept, as a copy of a model folder may
    return copy


def _variants() -> set[str]:
    return {"onnx-fp32", "openvino-fp32"} if HAS_OPENVINO else {"onnx-fp32"}


def test_export_records_each_gate_and_the_torch_files_it_verified_against(exported):
    from sentence_transformers import SentenceTransformer

    from gte_st.export.manifest import manifest_path, read_manifest, usable_artifacts
    from gte_st.fingerprint import file_digest, model_fingerprint

    manifest = read_manifest(exported)
    assert manifest_path(exported) == exported / "gte_st_export.json"
    assert set(manifest["variants"]) == _variants()
    entry = manifest["variants"]["onnx-fp32"]
    assert entry["file_name"] == "onnx/model.onnx" and entry["passed"] and entry["threshold"] == 0.999
    assert entry["min_cosine"] >= 0.999 and entry["precision"] == "fp32" and entry["parity_texts"] > 10
    assert entry["files"]["onnx/model.onnx"]["sha256"] == file_digest(exported / "onnx" / "model.onnx")
    assert entry["model_files"]["model.safetensors"]["sha256"] == file_digest(exported / "model.safetensors")
    assert not any(name.startswith(("onnx/", "openvino/", "README")) for name in entry["model_files"])
    assert entry["torch_fingerprint"] == model_fingerprint(SentenceTransformer(str(exported), device="cpu"))
    if HAS_OPENVINO:
        ir = manifest["variants"]["openvino-fp32"]
        assert set(ir["files"]) == {"openvino/openvino_model.xml", "openvino/openvino_model.bin"}
        assert ir["run_precision"] == "fp32"
    usable, rejected = usable_artifacts(exported)
    assert {record.variant for record in usable} == _variants() and rejected == {}


def test_auto_runs_the_recorded_fastest_verified_path(model_dir):
    from gte_st.calibration import calibration_dir
    from gte_st.encoding import encode
    from gte_st.export import load_model_dir
    from gte_st.export.auto import choose_backend

    choice = choose_backend(model_dir)  # measured now on this CPU, stored
    assert set(choice.docs_per_s) == {"torch"} | _variants() and "measured now" in choice.reason
    (stored,) = calibration_dir().glob("backend-*.json")
    record = json.loads(stored.read_text())
    assert record["record"]["choice"] == choice.variant
    reference = load_model_dir(model_dir, backend="torch")
    for variant in ["torch", *sorted(_variants())]:
        record["record"]["choice"] = variant  # as if this path had been measured the fastest
        stored.write_text(json.dumps(record))
        again = choose_backend(model_dir)
        assert again.variant == variant and "cached" in again.reason, again.reason
        model = load_model_dir(model_dir, backend="auto")
        assert getattr(model, "backend", "torch") == ("torch" if variant == "torch" else variant.split("-")[0])
        cosine = (encode(model, TEXTS) * encode(reference, TEXTS, precision="fp32")).sum(1)
        assert cosine.min() > 0.99
    assert "is the fastest verified path" in again.describe()


def test_measuring_releases_the_models_it_measured(model_dir):
    """choose_backend's calibration models are gone when it returns: an exported runtime compiled next must not share
    the CPU with their executors (it ran slower while they lived)."""
    import gc
    import weakref

    from gte_st.export import auto

    measured: list[weakref.ref] = []
    load_candidate = auto.load_candidate

    def tracked(*args, **kwargs):
        model = load_candidate(*args, **kwargs)
        measured.append(weakref.ref(model))
        return model

    gc.disable()  # the release must not depend on the collector happening to run
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(auto, "load_candidate", tracked)
            auto.choose_backend(model_dir)
        assert len(measured) == len(_variants())
        assert all(ref() is None for ref in measured)
    finally:
        gc.enable()


def test_a_stale_artifact_is_never_used(model_dir, capsys):
    from safetensors.torch import load_file, save_file

    from gte_st.export.auto import BackendChoice, choose_backend, load_choice

    weights = model_dir / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(n for n in tensors if n.endswith("query.weight"))
    tensors[name] = tensors[name] * 1.5  # a further training step saved into the folder, same size
    save_file(tensors, str(weights), metadata={"format": "pt"})
    choice = choose_backend(model_dir)
    assert choice.backend == "torch" and choice.variant == "torch"
    assert set(choice.rejected) == _variants()
    assert all(reason.startswith("stale: model.safetensors changed") for reason in choice.rejected.values())
    assert "stale: model.safetensors changed since the export verified it" in choice.describe()
    chosen_before = BackendChoice("onnx", "onnx/model.onnx", "onnx-fp32", None, "measured before the change")
    with pytest.raises(RuntimeError, match="no longer verified"):
        load_choice(model_dir, chosen_before)

    from gte_st.cli import main

    (model_dir.parent / "texts.txt").write_text("\n".join(TEXTS * 2) + "\n")
    assert main(["dedup", str(model_dir.parent / "texts.txt"), "--model", str(model_dir), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "backend auto: torch" in err and "stale: model.safetensors changed" in err


def test_an_ungated_or_altered_artifact_is_never_used(model_dir):
    from gte_st.export.auto import choose_backend
    from gte_st.export.manifest import manifest_path

    path = manifest_path(model_dir)
    manifest = json.loads(path.read_text())
    manifest["variants"]["onnx-fp32"]["min_cosine"] = 0.95  # as exported with --threshold fp32=0.9
    manifest["variants"]["onnx-fp32"]["threshold"] = 0.9
    path.write_text(json.dumps(manifest))
    if HAS_OPENVINO:
        with open(model_dir / "openvino" / "openvino_model.bin", "r+b") as f:  # an IR replaced by hand
            f.seek(100)
            f.write(b"\x00\x01\x02\x03")
    choice = choose_backend(model_dir)
    assert choice.backend == "torch"
    assert "below the default fp32 gate 0.999" in choice.rejected["onnx-fp32"]
    if HAS_OPENVINO:
        assert "differ from the ones its gate judged" in choice.rejected["openvino-fp32"]
    path.unlink()  # artifacts without any record: not verified, not candidates
    choice = choose_backend(model_dir)
    assert choice.variant == "torch" and choice.rejected == {} and "no verified, fresh export" in choice.reason
    missing = choose_backend(model_dir.parent / "no-such-model")
    assert missing.backend == "torch" and "not a local model directory" in missing.reason


def test_pick_prefers_the_path_closest_to_the_torch_weights_among_the_near_fastest():
    from gte_st.export.auto import pick
    from gte_st.export.manifest import ArtifactRecord

    records = {
        "openvino-int8-static": ArtifactRecord("openvino-int8-static", "openvino/q.xml", None, 0.993, "int8", "a"),
        "openvino-fp32": ArtifactRecord("openvino-fp32", "openvino/f.xml", "fp32", 1.0, "fp32", "b"),
    }
    assert (
        pick({"torch": 20.0, "openvino-fp32": 40.0, "openvino-int8-static": 70.0}, records) == "openvino-int8-static"
    )
    assert pick({"torch": 20.0, "openvino-fp32": 68.0, "openvino-int8-static": 70.0}, records) == "openvino-fp32"
    assert pick({"torch": 69.0, "openvino-fp32": 68.0, "openvino-int8-static": 70.0}, records) == "torch"


@pytest.mark.parametrize("command", ["index", "search", "dedup", "cluster", "eval"])
def test_every_encoding_command_takes_backend_auto(command, model_dir, tmp_path, capsys):
    from gte_st.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(TEXTS * 3)))
    sts = tmp_path / "sts.jsonl"
    sts.write_text(
        "".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n"
                for a, b, s in [(TEXTS[0], TEXTS[1], 1.0), (TEXTS[1], TEXTS[2], 3.0), (TEXTS[0], TEXTS[2], 4.0)])
    )  # fmt: skip
    index = tmp_path / "index"
    if command == "search":
        assert main(["index", str(corpus), "--model", str(model_dir), "--out", str(index), "--no-progress"]) == 0
        capsys.readouterr()
    argv = {
        "index": ["index", str(corpus), "--model", str(model_dir), "--out", str(index), "--no-progress"],
        "search": ["search", str(index), "a guitar", "-k", "2"],
        "dedup": ["dedup", str(corpus), "--model", str(model_dir), "--no-progress"],
        "cluster": ["cluster", str(corpus), "--k", "2", "--model", str(model_dir), "--no-progress"],
        "eval": ["eval", str(model_dir), "--task", "sts", "--data", str(sts)],
    }[command]
    assert main([*argv, "--backend", "auto"]) == 0
    captured = capsys.readouterr()
    assert "backend auto: " in captured.err, captured.err
    assert "is the fastest verified path" in captured.err  # a measured choice, printed with its reason
    if command != "eval":  # the default of every command but eval (torch fp32, reproducible scores)
        assert main(argv + ["--overwrite"] * (command == "index")) == 0
        assert "backend auto: " in capsys.readouterr().err
