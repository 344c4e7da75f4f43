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
    (tmp_path / "data" / "wikiqa").mkdir(parents=True)  # beside the output: an output inside --data is refused
    (tmp_path / "data" / "wikiqa" / "WikiQA-train.txt").write_text("\n".join(lines) + "\n", encoding="utf8")
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPTS / "recipes" / "build_general_pairs.py"), "--data", str(tmp_path / "data"),
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


_TOPICS = ["protein folding", "cell division", "gene expression", "immune response", "blood pressure",
           "insulin signalling", "tumour growth", "bone density", "sleep cycles", "gut bacteria", "heart rate",
           "vitamin D"]  # fmt: skip


def _tiny_beir(folder: Path) -> Path:
    """A BEIR folder with 12 documents and 4 train claims, each citing one document."""
    import gzip

    (folder / "qrels").mkdir(parents=True)
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf8") as f:
        for i, topic in enumerate(_TOPICS):
            f.write(
                json.dumps(
                    {"_id": f"d{i}", "title": f"Age and {topic}", "text": f"How {topic} changes with age in adults."}
                )
                + "\n"
            )
    claims = {f"q{i}": f"{_TOPICS[i]} changes with age" for i in range(4)}
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in claims.items()))
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(4))
    )
    return folder


def test_scifact_distillation_builder_writes_the_claims_rows_and_titles_only_when_asked(
    tmp_path: Path, tiny_gte_dir: Path
):
    """The recipe's files from a tiny BEIR folder and model: one claims row per (claim, cited document) with the
    asked number of negatives, none of them the cited document, the STS-B train pairs; ``titles.jsonl`` (which the
    recipe does not use) only with ``--titles``."""
    data = _tiny_beir(tmp_path / "beir")
    stsb = tmp_path / "sts-train.csv"
    stsb.write_text("sentence1,sentence2,score\nA man runs.,A man is running.,4.8\nA cat.,A car.,0.4\n")
    command = [sys.executable, str(SCRIPTS / "recipes" / "build_scifact_distillation.py"), "--data", str(data),
               "--stsb", str(stsb), "--model", str(tiny_gte_dir), "--num-negatives", "2", "--negative-pool", "5",
               "--precision", "fp32"]  # fmt: skip
    for titles, out in ((False, tmp_path / "plain"), (True, tmp_path / "titled")):
        done = subprocess.run(
            [*command, "--out-dir", str(out), *(["--titles"] if titles else [])],
            env=_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        claims = [json.loads(line) for line in (out / "claims.jsonl").read_text(encoding="utf8").splitlines()]
        assert [row["query"] for row in claims] == [f"{topic} changes with age" for topic in _TOPICS[:4]]
        for row, topic in zip(claims, _TOPICS):
            assert row["pos"] == [f"Age and {topic} How {topic} changes with age in adults."]
            assert len(row["neg"]) == 2 and row["pos"][0] not in row["neg"]
        assert [json.loads(line)["score"] for line in (out / "stsb.jsonl").read_text().splitlines()] == [4.8, 0.4]
        assert (out / "titles.jsonl").exists() == titles
    assert len((tmp_path / "titled" / "titles.jsonl").read_text().splitlines()) == 12


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--stsb", "missing.csv", "error: --stsb: "),
        ("--data", "nowhere", "error: --data nowhere: no corpus.jsonl.gz"),
        ("--max-titles", "3", "argument --max-titles: only with --titles"),
        ("--out-dir", "beir", "error: --out-dir beir is the same path as the BEIR folder"),
        ("--out-dir", "beir/qrels", "error: --out-dir beir/qrels lies inside the BEIR folder"),
        ("--out-dir", ".", "error: --out-dir . contains the BEIR folder"),
    ],
)
def test_scifact_distillation_builder_refuses_bad_inputs_before_any_output(tmp_path: Path, option, value, message):
    data = _tiny_beir(tmp_path / "beir")
    out = tmp_path / "out"
    args = {"--data": str(data), "--stsb": str(tmp_path / "sts-train.csv"), option: value}
    (tmp_path / "sts-train.csv").write_text("sentence1,sentence2,score\na,b,1\n")
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "recipes" / "build_scifact_distillation.py"), "--out-dir", str(out),
         *[x for pair in args.items() for x in pair]],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode in (1, 2) and message in done.stderr.strip().splitlines()[-1], done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not out.exists()
    assert sorted(p.name for p in data.rglob("*")) == ["corpus.jsonl.gz", "qrels", "queries.jsonl", "train.tsv"]


@pytest.mark.parametrize("builder", ["build_general_pairs.py", "build_chinese_pairs.py"])
def test_pair_builders_refuse_an_output_folder_that_is_or_holds_their_input(
    builder: str, tmp_path: Path, shared_data: Path
):
    """The output folder is the builder's own: ``--out-dir`` naming the data folder itself (build_general_pairs) or
    an input file (build_chinese_pairs reads STS-B train among its sources) is refused in one line before anything
    is written."""
    data = tmp_path / "data"
    data.mkdir()
    command = {
        "build_general_pairs.py": ["--data", str(data), "--out-dir", str(data)],
        "build_chinese_pairs.py": ["--out-dir", str(shared_data / "stsb" / "sts-train.csv")],
    }[builder]
    before = (shared_data / "stsb" / "sts-train.csv").stat().st_mtime_ns
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "recipes" / builder), *command],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "--out-dir" in done.stderr.splitlines()[-1] and "is the same path as the" in done.stderr.splitlines()[-1]
    assert not any(data.iterdir()) and (shared_data / "stsb" / "sts-train.csv").stat().st_mtime_ns == before


def test_default_pairs_builder_refuses_an_output_folder_among_its_sources(tmp_path: Path):
    """build_default_pairs.py mines installed sources: an ``--out-dir`` inside one of them is refused in one line
    before any mining, and nothing is written there."""
    import tqdm

    out = Path(tqdm.__file__).parent / "gte-st-pairs"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "build_default_pairs.py"), "--out-dir", str(out)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "lies inside the tqdm sources" in done.stderr.splitlines()[-1] and not out.exists()


def test_train_quality_docstring_dev_queries_are_the_held_out_pairs_not_reported(tmp_path: Path, monkeypatch):
    """bench_train_quality.py's docstring measures: ``test`` holds exactly the queries the default job reports
    (default_datasets' seeded sample), ``dev`` every other held-out pair, over the same held-out corpus; so a setting
    chosen on dev data never sees the reported queries."""
    import importlib.util

    import gte_st.default_data as default_data
    from gte_st.evaluation.readers import read_beir

    held_out = [default_data.DocPair(f"summary {i}", f"body {i}", f"pkg/m{i}.py") for i in range(300)]
    monkeypatch.setattr(default_data, "default_pairs", lambda: {"train": [], "test": held_out})
    spec = importlib.util.spec_from_file_location("bench_train_quality", SCRIPTS / "bench_train_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    folder = bench.docstrings_beir(tmp_path)
    reported = default_data.default_datasets(max_train=0, max_test=default_data.HELD_OUT_QUERIES)[1]["test"]
    test, dev = read_beir(folder, split="test"), read_beir(folder, split="dev")
    assert test.queries == reported["queries"] and len(test.queries) == default_data.HELD_OUT_QUERIES
    assert not set(dev.queries) & set(test.queries) and len(dev.queries) == 300 - default_data.HELD_OUT_QUERIES
    assert {**dev.queries, **test.queries} == {f"q{i}": f"summary {i}" for i in range(300)}
    assert test.corpus == dev.corpus and len(test.corpus) == 300
    assert all(dev.qrels[q] == {f"d{q[1:]}"} for q in dev.queries)  # each summary's own body


def test_train_quality_models_of_reads_saved_models_only(tmp_path: Path):
    """``--models-of BUDGET`` names the folder of saved models an ``--eval-only`` run scores; without
    ``--eval-only`` it would be ignored by a training run, so it is refused before any work."""
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_train_quality.py"), "--arms", "sf-recipe", "--split", "dev",
         "--models-of", "scifact-hybrid", "--out-dir", str(tmp_path / "out"), "--results", str(tmp_path / "r.json")],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "--models-of reads saved models: it needs --eval-only" in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.json").exists()
