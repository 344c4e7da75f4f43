"""gte_st.training.evaluation: ``--eval_task TASK[:SPLIT]=PATH`` runs any file evaluator of gte_st.registry.EVAL_TASKS
before, during and after training and for ``--wise_ft auto``, with the numbers ``gte-st eval`` reports; bad entries
fail before training with one line naming the option and the entry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from bad_input import Case, check_bad_input
from conftest import stsb_rows
from transformers import TrainerCallback

import gte_st
from gte_st.cli import main as cli_main
from gte_st.commands.train import main as train_main
from gte_st.evaluation.result import EvalResult
from gte_st.registry import EVAL_TASKS, eval_path_tasks
from gte_st.training import RecipeArguments, parse_stages
from gte_st.training.evaluation import RegisteredTaskEvaluator, build_eval_tasks, evaluate, parse_eval_task
from gte_st.training.wise_ft import choose_alpha

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _wikiqa_rows(rows: list[tuple[float, str, str]], queries: int, start: int) -> list[str]:
    """WikiQA layout (question<TAB>candidate<TAB>label): each query's own STS-B partner is its positive, the next
    three rows' partners its negatives."""
    lines = []
    for q in range(queries):
        i = start + 4 * q
        lines.append(f"{rows[i][1]}\t{rows[i][2]}\t1\n")
        lines.extend(f"{rows[i][1]}\t{rows[j][2]}\t0\n" for j in range(i + 1, i + 4))
    return lines


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Training pairs, a WikiQA-layout reranking folder (dev and test files), an MRPC-layout pair-classification
    file and a tiny BEIR folder."""
    tmp = tmp_path_factory.mktemp("eval-task")
    rows = stsb_rows("train")
    f = {"tmp": tmp, "pairs": tmp / "pairs.jsonl"}
    f["pairs"].write_text("".join(json.dumps({"anchor": a, "positive": b}) + "\n" for _, a, b in rows[:48]))
    f["wikiqa_dir"] = tmp / "wikiqa"
    f["wikiqa_dir"].mkdir()
    f["reranking"] = f["wikiqa_dir"] / "wikiqa-dev.tsv"
    f["reranking"].write_text("".join(_wikiqa_rows(rows, 8, 300)))
    (f["wikiqa_dir"] / "wikiqa-test.tsv").write_text("".join(_wikiqa_rows(rows, 8, 400)))
    f["pairs_dev"] = tmp / "mrpc" / "msr_paraphrase_dev.txt"
    f["pairs_dev"].parent.mkdir()
    f["pairs_dev"].write_text(
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        + "".join(f"{int(s >= 3)}\t{i}\t{i + 1000}\t{a}\t{b}\n" for i, (s, a, b) in enumerate(rows[500:540]))
    )
    f["sts"] = tmp / "sts-dev.jsonl"
    f["sts"].write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": sc}) + "\n"
                                for sc, a, b in rows[700:740]))  # fmt: skip
    beir = f["beir"] = tmp / "beir_tiny"
    (beir / "qrels").mkdir(parents=True)
    docs = rows[600:630]
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": b}) + "\n" for i, (_, _, b) in enumerate(docs))
    )
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": a}) + "\n" for i, (_, a, _) in enumerate(docs[:10]))
    )
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(10))
    )
    return f


def _train_args(tiny_bert_dir: Path, files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--base_model", str(tiny_bert_dir), "--data", str(files["pairs"]), "--precision", "fp32", "--seed", "3",
            "--per_device_train_batch_size", "16", "--max_steps", "3", "--save_steps", "100",
            "--learning_rate", "1e-2", "--output_dir", str(out), *extra]  # fmt: skip


class _RecordEvaluations(TrainerCallback):
    """The metrics of every Trainer evaluation, and the best metric the Trainer kept."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []
        self.best_metric: float | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.metrics.append(dict(metrics or {}))

    def on_train_end(self, args, state, control, **kwargs):
        self.best_metric = state.best_metric


def test_a_reranking_task_is_reported_before_during_and_after_training(tiny_bert_dir, files, tmp_path):
    """`--eval_task reranking=FILE`: its EvalResult is in the summary before and after training (the after one is
    `gte-st eval`'s evaluator on the saved model), the Trainer logs it as `eval_{name}_{metric}` during training
    and `--load_best_model_at_end` selects on its main metric; the saved model card names it once."""
    out = tmp_path / "out"
    recorder = _RecordEvaluations()
    argv = _train_args(
        tiny_bert_dir, files, out, "--eval_task", f"reranking={files['reranking']}", "--eval_strategy", "steps",
        "--eval_steps", "1", "--save_steps", "1", "--load_best_model_at_end", "true",
        "--metric_for_best_model", "wikiqa-dev_map",
    )  # fmt: skip
    assert train_main(argv, callbacks=[recorder]) == 0
    summary = json.loads((out / "training_summary.json").read_text())
    (before,) = summary["eval"]["before"]
    (after,) = summary["eval"]["after"]
    for result in (before, after):
        assert (result["task_type"], result["dataset"], result["split"], result["main_score"]) == (
            "Reranking", "wikiqa-dev", "dev", "map",
        )  # fmt: skip
        assert set(result["metrics"]) == {"map", "mrr_at_10", "ndcg_at_10"}
        # fp32 unless asked: the figures `gte-st eval` reports by default, on every CPU
        assert result["details"]["encode_precision"] == "fp32" and result["details"]["queries"] == 8
    saved = EVAL_TASKS.get("reranking")(gte_st.load(str(out)), files["reranking"], dataset="wikiqa-dev")
    assert after["metrics"] == pytest.approx(saved.metrics, abs=1e-6)

    # the saved model card lists the task once, under its name (not the registered evaluator's inner evaluators)
    readme = (out / "README.md").read_text()
    assert "wikiqa-dev" in readme and "RerankEvaluator" not in readme

    logged = [m for m in recorder.metrics if "eval_wikiqa-dev_map" in m]
    assert len(logged) == 3, recorder.metrics
    assert all({"eval_wikiqa-dev_mrr_at_10", "eval_wikiqa-dev_ndcg_at_10"} <= set(m) for m in logged)
    assert recorder.best_metric == max(m["eval_wikiqa-dev_map"] for m in logged)


def test_eval_precision_sets_every_tasks_encode_precision(files):
    """`--eval_precision` reaches every kind of task (--eval_sts, --eval_beir, --eval_task); fp32 unless asked."""

    def precisions(**options) -> list[str]:
        recipe = RecipeArguments(eval_sts=[str(files["sts"])], eval_beir=[str(files["beir"])],
                                 eval_task=[f"reranking={files['reranking']}"], **options)  # fmt: skip
        return [
            t.evaluator.options["precision"] if isinstance(t.evaluator, RegisteredTaskEvaluator)
            else t.evaluator.precision_mode
            for t in build_eval_tasks(recipe)
        ]  # fmt: skip

    assert precisions() == ["fp32"] * 3
    assert precisions(eval_precision="bf16") == ["bf16"] * 3


def test_wise_ft_auto_chooses_on_eval_task_tasks_alone(tiny_bert_dir, files, tmp_path):
    """`--wise_ft auto` with only `--eval_task` tasks (pair classification and reranking): every weight of the grid
    is scored on both, the rule's choice is saved, and the final evaluation is that trial's."""
    out = tmp_path / "auto"
    argv = _train_args(
        tiny_bert_dir, files, out, "--wise_ft", "auto", "--wise_ft_grid", "0.5", "1.0",
        "--eval_task", f"pair-classification={files['pairs_dev']}", f"reranking:dev={files['wikiqa_dir']}",
    )  # fmt: skip
    assert train_main(argv) == 0
    summary = json.loads((out / "training_summary.json").read_text())
    wise = summary["wise_ft"]
    keys = {"msr_paraphrase_dev/dev", "wikiqa/dev"}
    assert wise["mode"] == "auto" and set(wise["base"]) == keys
    trials = {float(a): scores for a, scores in wise["trials"].items()}
    assert set(trials) == {0.5, 1.0} and all(set(scores) == keys for scores in trials.values())
    assert (wise["alpha"], wise["within_tolerance"]) == choose_alpha(wise["base"], trials, wise["tolerance"])
    after = {f"{r['dataset']}/{r['split']}": r for r in summary["eval"]["after"]}
    assert after["msr_paraphrase_dev/dev"]["task_type"] == "PairClassification"
    for key in keys:
        assert after[key]["metrics"][after[key]["main_score"]] == pytest.approx(trials[wise["alpha"]][key], abs=1e-6)


def test_the_eval_task_result_is_gte_st_evals(files, tiny_gte_dir, tmp_path):
    """The EvalTask of an entry runs the function EVAL_TASKS registers (the one `gte-st eval --task` runs) and
    reports exactly what `gte-st eval` reports on the same model and data at the same precision -- with a split
    (`TASK:SPLIT=FOLDER`) and with `--eval_max_corpus` as retrieval's `--max-corpus`."""
    entries = {
        "reranking": (f"reranking={files['reranking']}", files["reranking"], []),
        "pair-classification": (f"pair-classification={files['pairs_dev']}", files["pairs_dev"], []),
        "reranking-test": (f"reranking:test={files['wikiqa_dir']}", files["wikiqa_dir"], ["--split", "test"]),
        "retrieval": (f"retrieval={files['beir']}", files["beir"], ["--max-corpus", "15"]),
    }
    recipe = RecipeArguments(eval_task=[entry for entry, _, _ in entries.values()], eval_max_corpus=15)
    tasks = build_eval_tasks(recipe)
    assert [t.evaluator.name for t in tasks] == ["wikiqa-dev", "msr_paraphrase_dev", "wikiqa", "beir_tiny"]
    model = gte_st.load(str(tiny_gte_dir))
    results = evaluate(tasks, model)
    for task, result, (key, (_, path, extra)) in zip(tasks, results, entries.items()):
        registered = key.removesuffix("-test")
        assert isinstance(task.evaluator, RegisteredTaskEvaluator)
        assert task.evaluator.evaluate_fn is EVAL_TASKS.get(registered)
        output = tmp_path / f"{key}.json"
        assert cli_main(["eval", str(tiny_gte_dir), "--task", registered, "--data", str(path),
                         "--dataset", task.dataset, "--output", str(output), *extra]) == 0  # fmt: skip
        (expected,) = json.loads(output.read_text())["results"]
        expected["details"].pop("runtime_s", None)
        result.details.pop("runtime_s", None)
        assert result.to_dict() == expected, key
    assert results[2].split == "test" and results[3].details["corpus"] == 15

    # Trainer-time call: the same metrics, prefixed with the evaluator's name; the primary metric is the main score
    scores = tasks[0].evaluator(model)
    assert scores == {f"wikiqa-dev_{k}": pytest.approx(v, abs=1e-9) for k, v in results[0].metrics.items()}
    assert tasks[0].evaluator.primary_metric == "wikiqa-dev_map"


def _word_count(model, path, *, dataset=None, split=None, **common) -> EvalResult:
    lines = Path(path).read_text().splitlines()
    return EvalResult("WordCount", dataset or "lines", split or "all", {"words": len(lines[0].split()) / 10}, "words")


def test_a_newly_registered_task_is_an_eval_task_choice(tmp_path):
    """One registry: a task registered in EVAL_TASKS is an `--eval_task` choice with no other change; mteb (no file
    evaluator) is not; a recipe file's single string is one entry."""
    data = tmp_path / "lines.txt"
    data.write_text("one two three\n")
    EVAL_TASKS.register("word-count", _word_count, help="words", data="a text file", options={"split": "split"})
    try:
        assert "word-count" in eval_path_tasks() and "mteb" not in eval_path_tasks()
        (task,) = build_eval_tasks(RecipeArguments(eval_task=[f"word-count:train={data}"]))
        assert task.run(None).to_dict()["metrics"] == {"words": pytest.approx(0.3)}
        assert task.run(None).split == "train" and task.run(None).dataset == "lines"
    finally:
        EVAL_TASKS._entries.pop("word-count")
    spec = parse_eval_task(f"pair-classification:dev={data}")
    assert (spec.task, spec.split, spec.path) == ("pair-classification", "dev", str(data))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"eval_task": f"reranking={data}", "data": str(data),
                                      "output_dir": str(tmp_path / "out")}))  # fmt: skip
    (stage,) = parse_stages(["--config", str(recipe)])
    assert stage.recipe.eval_task == [f"reranking={data}"]


def test_help_and_docs_document_eval_task(capsys):
    assert cli_main(["train", "--help"]) == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines (at hyphens too)
    assert "--eval_task" in text and "TASK=PATH" in text and ",".join(eval_path_tasks()) in text
    docs = (Path(__file__).resolve().parent.parent / "docs" / "training.md").read_text()
    assert (
        "| `--eval_task TASK=PATH ...`" in docs
        and "--wise_ft auto` tries `--wise_ft_grid` on the `--eval_sts` / `--eval_beir` / `--eval_task`"
        in " ".join(docs.split())
    )


# ------------------------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def world(files, tmp_path_factory) -> dict[str, Path]:
    """The files of the bad cases (their folder is checked to be left as it was: nothing written)."""
    tmp = tmp_path_factory.mktemp("eval-task-bad")
    w = {"tmp": tmp, "pairs": tmp / "pairs.jsonl", "out": tmp / "never-written"}
    shutil.copy(files["pairs"], w["pairs"])
    shutil.copytree(files["wikiqa_dir"], tmp / "wikiqa")
    w["reranking"], w["wikiqa_dir"] = tmp / "wikiqa" / "wikiqa-dev.tsv", tmp / "wikiqa"
    w["short_row"] = tmp / "short-row.tsv"
    w["short_row"].write_text("what is a cat?\ta small animal\t1\nwhat is a dog?\ta larger animal\n")
    w["no_negatives"] = tmp / "positives-only.tsv"
    w["no_negatives"].write_text("what is a cat?\ta small animal\t1\nwhat is a dog?\ta larger animal\t1\n")
    w["one_label"] = tmp / "one-label.jsonl"
    w["one_label"].write_text("".join(json.dumps({"sentence1": "a b", "sentence2": "b a", "label": 1}) + "\n"
                                      for _ in range(4)))  # fmt: skip
    w["recipe"] = tmp / "recipe.yaml"
    w["recipe"].write_text(yaml.safe_dump({"data": str(w["pairs"]), "output_dir": str(w["out"]),
                                           "eval_task": f"reranking={tmp / 'gone.tsv'}"}))  # fmt: skip
    w["precision_recipe"] = tmp / "precision-recipe.yaml"
    w["precision_recipe"].write_text(yaml.safe_dump({"data": str(w["pairs"]), "output_dir": str(w["out"]),
                                                     "eval_precision": "fp8"}))  # fmt: skip
    return w


def _train(w: dict[str, Path], *extra: str) -> list[str]:
    return ["train", "--data", str(w["pairs"]), "--output_dir", str(w["out"]), "--max_steps", "1", *extra]


# fmt: off
BAD = [
    Case("unknown-task", lambda w: _train(w, "--eval_task", f"rerank={w['reranking']}"),
         "stage train: --eval_task 'rerank={reranking}': 'rerank' is not an evaluation task; choose one of "
         + ", ".join(eval_path_tasks())),
    Case("mteb", lambda w: _train(w, "--eval_task", f"mteb={w['reranking']}"),
         "--eval_task 'mteb={reranking}': 'mteb' is not an evaluation task training can run on a PATH"),
    Case("no-equals-sign", lambda w: _train(w, "--eval_task", str(w["reranking"])),
         "--eval_task '{reranking}': expected TASK=PATH or TASK:SPLIT=PATH"),
    Case("missing-path", lambda w: _train(w, "--eval_task", f"reranking={w['tmp'] / 'nope.tsv'}"),
         "--eval_task 'reranking={tmp}/nope.tsv': {tmp}/nope.tsv does not exist"),
    Case("missing-path-in-a-recipe", lambda w: ["train", "--config", str(w["recipe"])],
         "--eval_task 'reranking={tmp}/gone.tsv': {tmp}/gone.tsv does not exist"),
    Case("row-the-reader-rejects", lambda w: _train(w, "--eval_task", f"reranking={w['short_row']}"),
         "--eval_task 'reranking={short_row}': {short_row}:2: expected question<TAB>candidate<TAB>label(0/1)"),
    Case("data-the-evaluator-rejects", lambda w: _train(w, "--eval_task", f"reranking={w['no_negatives']}"),
         "--eval_task 'reranking={no_negatives}': {no_negatives}: no query with at least one positive and one "
         "negative"),
    Case("one-label-pairs", lambda w: _train(w, "--eval_task", f"pair-classification={w['one_label']}"),
         "--eval_task 'pair-classification={one_label}': {one_label}: pair classification needs both labels"),
    Case("split-the-folder-lacks", lambda w: _train(w, "--eval_task", f"reranking:train={w['wikiqa_dir']}"),
         "--eval_task 'reranking:train={wikiqa_dir}': no file for split 'train' in folder {wikiqa_dir}"),
    Case("empty-split", lambda w: _train(w, "--eval_task", f"reranking:={w['reranking']}"),
         "--eval_task 'reranking:={reranking}': the split after ':' is empty"),
    Case("wise-ft-auto-without-tasks", lambda w: _train(w, "--wise_ft", "auto"),
         "give dev data with --eval_sts / --eval_beir / --eval_task"),
    Case("unknown-eval-precision", lambda w: _train(w, "--eval_precision", "fp8"),
         "invalid choice: 'fp8' (choose from 'auto', 'fp32', 'bf16', 'bf16-autocast')"),
    Case("unknown-eval-precision-in-a-recipe", lambda w: ["train", "--config", str(w["precision_recipe"])],
         "--eval_precision must be one of ['auto', 'fp32', 'bf16', 'bf16-autocast'], got 'fp8'"),
]
# fmt: on


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_a_bad_entry_fails_before_training_naming_the_option(case: Case, world, monkeypatch, capsys):
    """One line naming --eval_task and the entry, no traceback, before any model is built (so before the first
    training step), and nothing written: the output folder does not exist afterwards."""
    check_bad_input(case, world, monkeypatch, capsys)
    assert not world["out"].exists()
