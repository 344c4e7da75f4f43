"""The bad-input check shared by tests/test_bad_input*.py: a command given bad input exits non-zero with one
``gte-st ...`` line naming the culprit, no traceback, before any model is loaded (unless the case says otherwise),
and leaves every file and folder of the test's world as it was (none changed, removed or added)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gte_st.cli import main


@dataclass
class Case:
    id: str
    argv: Callable[[dict[str, Path]], list[str]]  # built from the files of the `world` fixture
    expected: str  # must appear in the one error line (``{name}`` of a world file is filled in)
    before_model: bool = True  # the case must fail before a SentenceTransformer is constructed


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` (the Hugging Face home aside) with its size and modification time."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
        for p in root.rglob("*")
        if "hf-home" not in p.relative_to(root).parts
    }


def check_bad_input(
    case: Case, world: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Run ``case`` through the CLI in ``world`` (``world["tmp"]`` its folder) and assert the rule above."""
    import sentence_transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(world["tmp"] / "hf-home"))
    if case.before_model:

        def refuse(*args, **kwargs):
            raise AssertionError(f"{case.id}: a model was loaded before the bad input was reported")

        monkeypatch.setattr(sentence_transformers.SentenceTransformer, "__init__", refuse)
    before = snapshot(world["tmp"])
    capsys.readouterr()

    code = main(case.argv(world))

    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("gte-st")]
    assert code != 0, err
    assert "Traceback" not in err, err
    assert len(error_lines) == 1, err
    expected = re.sub(r"\{(\w+)\}", lambda m: str(world.get(m.group(1), m.group(0))), case.expected)
    assert expected in error_lines[0], error_lines[0]
    after = snapshot(world["tmp"])
    changed = [path for path, stat in before.items() if after.get(path) != stat]
    assert not changed, f"{case.id} changed or removed existing files: {changed}"
    added = sorted(set(after) - set(before))
    assert not added, f"{case.id} left new files behind: {added}"
