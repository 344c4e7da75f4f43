"""Every script under scripts/ answers ``--help`` from a clean checkout, cheaply, and carries no machine's paths.

A Python script parses its arguments before it imports torch, sentence-transformers or a runtime (so ``--help`` is
instant and a typo costs nothing); a shell script at least parses (``bash -n``), and one that documents ``--help``
answers it without running anything.
"""

from __future__ import annotations

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
