"""Every script under scripts/ answers ``--help`` from a clean checkout, cheaply, and carries no machine's paths.

A Python script parses its arguments before it imports torch, sentence-transformers or a runtime (so ``--help`` is
instant and a typo costs nothing); a shell script at least parses (``bash -n``), and one that documents ``--help``
answers it without running anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

SCRIPTS = REPO_ROOT / "scripts"
PYTHON_SCRIPTS = sorted(path for path in SCRIPTS.rglob("*.py") if not path.name.startswith("_"))
SHELL_SCRIPTS = sorted(SCRIPTS.rglob("*.sh"))
# Modules a script must not import before it has parsed its arguments.
HEAVY_MODULES = {"torch", "sentence_transformers", "transformers", "datasets", "openvino", "nncf", "onnxruntime"}
# Absolute paths of one machine (a user's home, this project's work folders): never a default, never an example.
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:root|home|work|tmp)(?:/|\b)")


def _name(path: Path) -> str:
    return str(path.relative_to(SCRIPTS))


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }


def test_scripts_are_found():
    assert len(PYTHON_SCRIPTS) >= 10 and SHELL_SCRIPTS, (PYTHON_SCRIPTS, SHELL_SCRIPTS)


@pytest.mark.parametrize("script", PYTHON_SCRIPTS, ids=_name)
def test_python_script_answers_help_before_heavy_imports(script: Path, tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), "--help"],
        cwd=tmp_path,  # not the repository root: defaults must not depend on the working directory
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:500]
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert not imported & HEAVY_MODULES, (
        f"{_name(script)} imports {sorted(imported & HEAVY_MODULES)} before parsing its arguments: "
        "import them in main() after parse_args()"
    )


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=_name)
def test_shell_script_parses(script: Path):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "script", [path for path in SHELL_SCRIPTS if "--help)" in path.read_text(encoding="utf8")], ids=_name
)
def test_shell_script_help_runs_nothing(script: Path, tmp_path: Path):
    copy = tmp_path / script.name  # a copy outside the checkout: --help must not reach any command after it
    shutil.copy(script, copy)
    done = subprocess.run(["bash", str(copy), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and not done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [script.name]


def test_no_machine_specific_paths_in_scripts():
    found = [
        f"{_name(path)}:{number}: {line.strip()}"
        for path in sorted(SCRIPTS.rglob("*"))
        if path.is_file()
        for number, line in enumerate(path.read_text(encoding="utf8").splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert not found, "machine-specific paths (use paths relative to the checkout or options):\n" + "\n".join(found)


def test_general_pairs_wikiqa_lists_hold_every_candidate_of_the_train_questions(tmp_path: Path):
    """build_general_pairs.py's wikiqa-lists source: every candidate of each non-dev question lands in a row of
    LIST_SIZE columns that gte-st loads as a source; the dev questions are in no source."""
    from gte_st.data import load_training_data

    questions = {f"question {q}?": [f"sentence {q}.{c}" for c in range(n)] for q, n in enumerate((1, 3, 4, 9, 6, 2))}
    lines = [
        f"{q}\t{c}\t{int(i == len(candidates) // 2)}"
        for q, candidates in questions.items()
        for i, c in enumerate(candidates)
    ]  # each answered
    (tmp_path / "wikiqa").mkdir()
    (tmp_path / "wikiqa" / "WikiQA-train.txt").write_text("\n".join(lines) + "\n", encoding="utf8")
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPTS / "recipes" / "build_general_pairs.py"), "--data", str(tmp_path),
               "--out-dir", str(out), "--sources", "wikiqa,wikiqa-lists", "--wikiqa-dev-fraction", "0.4"]  # fmt: skip
    subprocess.run(command, check=True, env=_env(), capture_output=True)

    dev = {line.split("\t")[0] for line in (out / "wikiqa-dev.txt").read_text(encoding="utf8").splitlines() if line}
    data = load_training_data([f"lists={out / 'wikiqa-lists.jsonl'}"])["lists"]
    assert data.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    rows: dict[str, set[str]] = {}
    for row in data:
        rows.setdefault(row["anchor"], set()).update(row[c] for c in data.column_names[1:])
    assert dev and rows and not dev & set(rows)
    assert set(rows) | dev == set(questions)
    for question, texts in rows.items():
        assert texts == set(questions[question])  # every candidate, and only its own
    answered = {json.loads(line)["anchor"] for line in (out / "wikiqa.jsonl").read_text(encoding="utf8").splitlines()}
    assert not answered & dev


def test_scifact_distillation_builder_refuses_an_unknown_precision_before_any_work(tmp_path: Path):
    """``--precision`` takes the names of gte_st's precision registry, checked when the arguments are parsed: one
    line naming the option, and no output folder."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "recipes" / "build_scifact_distillation.py"), "--out-dir", str(out),
         "--precision", "fp16"],
        env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "argument --precision: invalid choice: 'fp16'" in done.stderr
    assert not out.exists()
