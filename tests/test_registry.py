"""One registry per extension point (gte_st/registry.py): the CLI's choices and checks come from it, and a new entry
is one registration away from being a choice that runs (tested with throwaway entries, removed afterwards)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gte_st.errors import UsageError
from gte_st.evaluation.result import EvalResult
from gte_st.registry import BACKENDS, EVAL_TASKS, PRECISIONS, Registry


def _choices(parser, dest: str) -> tuple[str, ...]:
    return tuple(next(a for a in parser._actions if a.dest == dest).choices)


def test_cli_choices_come_from_the_registries():
    from gte_st.commands import dedup, eval, index

    assert _choices(eval.build_parser(), "task") == EVAL_TASKS.names()
    assert _choices(eval.build_parser(), "precision") == PRECISIONS.names()
    assert _choices(index.build_parser(), "encode_precision") == PRECISIONS.names()
    for module in (eval, index, dedup):
        assert _choices(module.build_parser(), "backend") == BACKENDS.names()


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
