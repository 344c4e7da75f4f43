"""One registry per extension point (gte_st/registry.py): the CLI's choices and checks come from it, and a new entry
is one registration away from being a choice that runs (tested with throwaway entries, removed afterwards)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gte_st.errors import UsageError
from gte_st.evaluation.result import EvalResult
from gte_st.registry import BACKENDS, EVAL_TASKS, EXPORT_VARIANTS, PRECISIONS, Registry


def _choices(parser, dest: str) -> tuple[str, ...]:
    return tuple(next(a for a in parser._actions if a.dest == dest).choices)


def test_cli_choices_come_from_the_registries():
    from gte_st.commands import dedup, eval, index

    assert _choices(eval.build_parser(), "task") == EVAL_TASKS.names()
    assert _choices(eval.build_parser(), "precision") == PRECISIONS.names()
    assert _choices(index.build_parser(), "encode_precision") == PRECISIONS.names()
    for module in (eval, index, dedup):
        assert _choices(module.build_parser(), "backend") == BACKENDS.names()
    from gte_st.commands import export

    assert _choices(export.build_parser(), "format") == ("onnx", "openvino")
    assert _choices(export.build_parser(), "quantize") == ("none", "int8-dynamic", "int8-static", "bf16")


def test_a_lookup_of_an_unknown_name_is_a_usage_error_naming_the_choices():
    with pytest.raises(UsageError, match=r"--task 'nope' is not a known evaluation task; choose one of sts, "):
        EVAL_TASKS.get("nope")
    registry = Registry("thing")
    registry.register("json", "json:dumps", help="text")
    assert registry.get("json") is json.dumps and registry.names() == ("json",)


def _word_count_task(model, path, *, dataset=None, split=None, max_samples=None, **common) -> EvalResult:
    """A throwaway evaluation task: the mean number of words per line of the file."""
    lines = Path(path).read_text().splitlines()[:max_samples]
    score = sum(len(line.split()) for line in lines) / len(lines)
    return EvalResult("WordCount", dataset or Path(path).stem, split or "all", {"words": score}, "words")


def test_a_registered_eval_task_is_a_cli_choice_that_runs(tiny_gte_dir, tmp_path, capsys):
    from gte_st.cli import main

    data = tmp_path / "lines.txt"
    data.write_text("one two three\nfour five\n")
    EVAL_TASKS.register(
        "word-count", _word_count_task, help="mean words per line", data="a text file",
        options={"split": "split", "max_samples": "max_samples"},
    )  # fmt: skip
    try:
        assert main(["eval", str(tiny_gte_dir), "--task", "word-count", "--data", str(data),
                     "--output", str(tmp_path / "r.json")]) == 0  # fmt: skip
    finally:
        EVAL_TASKS._entries.pop("word-count")
    result = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert result["task_type"] == "WordCount" and result["metrics"] == {"words": 2.5}
    assert "word-count" not in EVAL_TASKS.names()


def test_every_registered_eval_task_resolves_to_a_callable_taking_its_options():
    import inspect

    for name in EVAL_TASKS:
        entry = EVAL_TASKS.entry(name)
        function = entry.load()
        parameters = inspect.signature(function).parameters
        assert callable(function)
        if name != "mteb":
            missing = set(entry.metadata["options"]) - set(parameters)
            assert not missing, f"{name}: the evaluator lacks {missing}"
    for name in BACKENDS:
        assert callable(BACKENDS.get(name))


def _plan_rows(format: str, quantize: str, optimize: bool) -> list[tuple]:
    from gte_st.export.variants import _plan

    return [(s.name, s.path, s.source, s.publish, s.precision) for s in _plan(format, quantize, optimize)]


def test_the_export_plan_comes_from_the_variant_entries():
    """What each (format, quantize, optimize) builds, from what, and what it writes: the plan the hand-written one
    made before the registry (sources first; sources built only for others are not gated or written)."""
    fp32, o2 = ("onnx-fp32", "onnx/model.onnx", None), ("onnx-O2", "onnx/model_O2.onnx", "onnx-fp32")
    assert _plan_rows("onnx", "none", True) == [(*fp32, True, "fp32"), (*o2, True, "fp32")]
    assert _plan_rows("onnx", "none", False) == [(*fp32, True, "fp32")]
    assert _plan_rows("onnx", "int8-dynamic", True)[-1] == (
        "onnx-int8-dynamic", "onnx/model_qint8.onnx", "onnx-O2", True, "int8"
    )  # fmt: skip
    assert _plan_rows("onnx", "int8-dynamic", False) == [
        (*fp32, True, "fp32"), ("onnx-int8-dynamic", "onnx/model_qint8.onnx", "onnx-fp32", True, "int8")
    ]  # fmt: skip
    assert _plan_rows("onnx", "int8-static", False) == [
        (*fp32, True, "fp32"), (*o2, False, "fp32"),
        ("onnx-int8-static", "onnx/model_qint8_static.onnx", "onnx-O2", True, "int8"),
    ]  # fmt: skip
    ir = "openvino/openvino_model.xml"
    assert _plan_rows("openvino", "none", True) == [
        (*fp32, False, "fp32"),
        ("openvino-fp32", ir, "onnx-fp32", True, "fp32"),
    ]
    assert _plan_rows("openvino", "bf16", True) == [
        (*fp32, False, "fp32"),
        ("openvino-bf16", ir, "onnx-fp32", True, "bf16"),
    ]
    assert [row[0] for row in _plan_rows("openvino", "int8-static", True)] == [
        "onnx-fp32", "openvino-fp32", "openvino-int8-static"
    ]  # fmt: skip
    assert _plan_rows("openvino", "int8-dynamic", True)[-1][:3] == (
        "openvino-int8-weights", "openvino/openvino_model_qint8_weights.xml", "openvino-fp32"
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"quantize='bf16' is an export variant of another format"):
        _plan_rows("onnx", "bf16", True)


def _build_copy(source, path, context):
    """A throwaway export variant: the fp32 graph copied under another name (passes the fp32 gate)."""
    import shutil

    shutil.copyfile(source, path)
    return {"copied_from": source.name}


def test_a_registered_export_variant_is_a_cli_choice_that_is_built_gated_and_loaded(tiny_gte_dir, tmp_path, capsys):
    """One entry (and a builder) makes a variant: gte-st export offers it, builds it from its source, gates it,
    moves it into place, records it in the manifest, and load_exported reads it."""
    import shutil

    import numpy as np

    from gte_st.cli import main
    from gte_st.export import load_exported

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_gte_dir, model_dir)
    EXPORT_VARIANTS.register(
        "onnx-copy", _build_copy, help="a copy of the fp32 graph", format="onnx", quantize="copy",
        file="onnx/model_copy.onnx", source="onnx-fp32", gate="fp32",
    )  # fmt: skip
    try:
        from gte_st.commands import export

        assert "copy" in _choices(export.build_parser(), "quantize")
        report = tmp_path / "report.json"
        assert main(["export", str(model_dir), "--quantize", "copy", "--no-optimize", "--report", str(report)]) == 0
    finally:
        EXPORT_VARIANTS._entries.pop("onnx-copy")
    variants = {v["variant"]: v for v in json.loads(report.read_text())["variants"]}
    assert set(variants) == {"onnx-fp32", "onnx-copy"} and variants["onnx-copy"]["written"]
    assert variants["onnx-copy"]["details"]["copied_from"] == "model.onnx"
    assert variants["onnx-copy"]["min_cosine"] >= variants["onnx-copy"]["threshold"]
    manifest = json.loads((model_dir / "gte_st_export.json").read_text())
    assert "onnx-copy" in json.dumps(manifest)
    texts = ["a short text", "another one, a little longer than the first"]
    copy = load_exported(model_dir, "onnx/model_copy.onnx").encode(texts)
    assert np.allclose(copy, load_exported(model_dir, "onnx/model.onnx").encode(texts), atol=1e-6)
