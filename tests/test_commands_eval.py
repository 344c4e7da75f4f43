"""`gte-st eval`: argument handling, JSON output and table, errors, and the mteb runner's offline behaviour."""

from __future__ import annotations

import importlib.util
import json

import pytest

from gte_st.cli import main as gte_st_main
from gte_st.commands.eval import format_table
from gte_st.evaluation import EvalResult


def main(argv: list[str]) -> int:
    """`gte-st eval ARGV` through the dispatcher (errors become exit codes and one-line messages)."""
    return gte_st_main(["eval", *argv])


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_bert_dir, tmp_path_factory):
    import gte_st

    path = tmp_path_factory.mktemp("tiny-gte")
    gte_st.build_model(str(tiny_bert_dir), max_seq_length=64).save(str(path))
    return path


def test_eval_writes_json_and_prints_a_table(tiny_model_dir, shared_data, tmp_path, capsys):
    output = tmp_path / "out" / "results.json"
    argv = ["eval", str(tiny_model_dir), "--task", "sts", "--data", str(shared_data / "stsb" / "sts-test.csv"),
            str(shared_data / "sick" / "SICK_trial.txt"), "--max-samples", "40", "--output", str(output)]  # fmt: skip
    assert gte_st_main(argv) == 0  # through the top-level dispatcher
    payload = json.loads(output.read_text())
    assert payload["model"] == str(tiny_model_dir)
    results = [EvalResult.from_dict(r) for r in payload["results"]]
    assert [(r.dataset, r.split, r.details["pairs"]) for r in results] == [("stsb", "test", 40), ("sick", "dev", 40)]
    table = capsys.readouterr().out
    assert "spearman" in table and "stsb" in table and "sick" in table and str(output) in table


def test_eval_compile_gives_the_eager_scores(tiny_model_dir, shared_data, tmp_path):
    data = str(shared_data / "stsb" / "sts-test.csv")
    results = {}
    for flags in ([], ["--compile"]):
        output = tmp_path / f"sts{len(flags)}.json"
        assert main([str(tiny_model_dir), "--task", "sts", "--data", data, "--max-samples", "60", *flags,
                     "--output", str(output)]) == 0  # fmt: skip
        results[bool(flags)] = json.loads(output.read_text())["results"][0]
    assert [results[c]["details"]["encode_compile"] for c in (False, True)] == [False, True]
    assert results[True]["metrics"]["spearman"] == pytest.approx(results[False]["metrics"]["spearman"], abs=1e-4)
    assert results[True]["metrics"]["pearson"] == pytest.approx(results[False]["metrics"]["pearson"], abs=1e-4)


def test_eval_retrieval_with_bm25_needs_no_model(shared_data, tmp_path):
    pytest.importorskip("bm25s")
    output = tmp_path / "bm25.json"
    argv = ["no-such-model-needed", "--task", "retrieval", "--retriever", "bm25", "--data",
            str(shared_data / "beir_scifact"), "--max-queries", "20", "--max-corpus", "200", "--output", str(output)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(output.read_text())["results"][0]
    assert result["task_type"] == "Retrieval" and result["details"]["queries"] == 20


def test_eval_bm25_rerank_prints_both_stages(tiny_model_dir, shared_data, tmp_path, capsys):
    pytest.importorskip("bm25s")
    output = tmp_path / "two-stage.json"
    argv = [str(tiny_model_dir), "--task", "retrieval", "--bm25-rerank", "20", "--data", str(shared_data / "beir_scifact"),
            "--max-queries", "20", "--max-corpus", "200", "--output", str(output)]  # fmt: skip
    assert main(argv) == 0
    details = json.loads(output.read_text())["results"][0]["details"]
    assert details["bm25_rerank"] == 20 and set(details["first_stage"]) >= {"ndcg_at_10", "recall_at_20"}
    printed = capsys.readouterr().out
    assert "first stage (bm25, top 20): ndcg_at_10" in printed and "recall_at_20" in printed


def test_argument_errors(shared_data, tiny_model_dir, tmp_path, capsys):
    assert main([str(tiny_model_dir), "--task", "sts"]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert main([str(tiny_model_dir), "--task", "sts", "--data", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv does not exist" in capsys.readouterr().err
    assert main([str(tiny_model_dir), "--task", "sts", "--data", str(shared_data / "stsb"), "--bm25-rerank", "5"]) == 2
    assert "--bm25-rerank K needs --task retrieval" in capsys.readouterr().err
    assert main([str(tiny_model_dir), "--task", "retrieval", "--data", str(shared_data / "beir_scifact"),
                 "--bm25-weight", "0.3"]) == 2  # fmt: skip
    assert "bm25_weight needs --bm25-rerank K" in capsys.readouterr().err
    assert main([str(tiny_model_dir), "--task", "summarization", "--data", "x"]) == 2

    assert main([str(tmp_path / "no-model"), "--task", "sts", "--data", str(shared_data / "stsb")]) == 1
    assert "model directory" in capsys.readouterr().err

    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n")
    assert main([str(tiny_model_dir), "--task", "sts", "--data", str(bad)]) == 1
    assert "bad.tsv:1: unrecognised STS row" in capsys.readouterr().err


def test_format_table_aligns_columns():
    results = [
        EvalResult("STS", "stsb", "test", {"spearman": 0.8203, "pearson": 0.8274}, "spearman"),
        EvalResult("Retrieval", "beir_scifact", "test", {"ndcg_at_10": 0.6451, "map": 0.6}, "ndcg_at_10"),
    ]
    lines = format_table(results).splitlines()
    assert lines[0].split() == ["task", "dataset", "split", "main", "metrics", "(%)"]
    assert "spearman 82.03" in lines[2] and "pearson 82.74" in lines[2]
    assert "ndcg_at_10 64.51" in lines[3] and "map 60.00" in lines[3]
    assert lines[2].index("stsb") == lines[3].index("beir_scifact")


@pytest.mark.skipif(importlib.util.find_spec("mteb") is not None, reason="mteb is installed")
def test_mteb_without_the_package_gives_the_pip_hint(capsys):
    assert main(["some/model", "--task", "mteb", "--mteb-tasks", "STSBenchmark"]) == 2
    assert "pip install 'gte-st[mteb]'" in capsys.readouterr().err
    from gte_st.evaluation import mteb_runner

    with pytest.raises(ImportError, match=r"gte-st\[mteb\]"):
        mteb_runner.get_tasks(["SciFact"])


@pytest.mark.skipif(importlib.util.find_spec("mteb") is None, reason="mteb is not installed")
def test_mteb_task_selection_offline(capsys):
    assert main(["some/model", "--task", "mteb"]) == 2  # nothing selected
    assert "select mteb tasks" in capsys.readouterr().err
    assert main(["some/model", "--task", "mteb", "--list-tasks", "--mteb-tasks", "STSBenchmark"]) == 0
    assert "STSBenchmark" in capsys.readouterr().out


def _small_scifact(shared_data, folder, queries: int = 12, others: int = 150):
    """The first ``queries`` SciFact test queries, their relevant documents and ``others`` more, as a BEIR folder."""
    import gzip

    source = shared_data / "beir_scifact"
    qrels_lines = (source / "qrels" / "test.tsv").read_text().splitlines()
    kept_queries: list[str] = []
    for line in qrels_lines[1:]:
        qid = line.split("\t")[0]
        if qid not in kept_queries:
            kept_queries.append(qid)
    kept_queries = kept_queries[:queries]
    qrels = [qrels_lines[0]] + [line for line in qrels_lines[1:] if line.split("\t")[0] in kept_queries]
    relevant = {line.split("\t")[1] for line in qrels[1:]}
    (folder / "qrels").mkdir(parents=True)
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    with gzip.open(source / "corpus.jsonl.gz", "rt") as f:
        docs = [json.loads(line) for line in f]
    kept_docs = [d for d in docs if d["_id"] in relevant] + [d for d in docs if d["_id"] not in relevant][:others]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in kept_docs))
    queries_rows = [json.loads(line) for line in (source / "queries.jsonl").read_text().splitlines()]
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps(q) + "\n" for q in queries_rows if q["_id"] in kept_queries)
    )
    return folder


@pytest.mark.skipif(importlib.util.find_spec("mteb") is None, reason="mteb is not installed")
def test_mteb_on_local_data_scores_as_gte_st_eval(tiny_model_dir, shared_data, tmp_path, capsys):
    """``--mteb-data`` runs mteb's own STSBenchmark and SciFact evaluators on the local files without the Hub, and
    mteb's scores equal ``gte-st eval``'s on the same data; the results are filed under the model's folder name and
    its fingerprint."""
    from sentence_transformers import SentenceTransformer

    from gte_st.fingerprint import model_fingerprint

    scifact = _small_scifact(shared_data, tmp_path / "scifact")
    stsb = shared_data / "stsb" / "sts-test.csv"
    out = tmp_path / "mteb"
    argv = [str(tiny_model_dir), "--task", "mteb", "--mteb-tasks", "STSBenchmark", "SciFact",
            "--mteb-data", str(stsb), str(scifact), "--max-samples", "120", "--output-folder", str(out)]  # fmt: skip
    assert main(argv) == 0
    revision = model_fingerprint(SentenceTransformer(str(tiny_model_dir), device="cpu"))
    filed = out / "results" / f"local__{tiny_model_dir.name}" / revision
    assert str(filed) in capsys.readouterr().out
    mteb_scores = {
        task: json.loads((filed / f"{task}.json").read_text())["scores"]["test"][0]["main_score"]
        for task in ("STSBenchmark", "SciFact")
    }
    ours = {}
    for task, eval_task, data in (("STSBenchmark", "sts", stsb), ("SciFact", "retrieval", scifact)):
        output = tmp_path / f"{task}.json"
        argv = [str(tiny_model_dir), "--task", eval_task, "--data", str(data), "--max-samples", "120",
                "--output", str(output)]  # fmt: skip
        assert main(argv) == 0
        result = json.loads(output.read_text())["results"][0]
        ours[task] = result["metrics"][result["main_score"]]
    assert mteb_scores == pytest.approx(ours, abs=1e-4), (mteb_scores, ours)
    assert ours["SciFact"] > 0.05  # the tiny model finds something: the equality is not two zeros


@pytest.mark.skipif(importlib.util.find_spec("mteb") is None, reason="mteb is not installed")
def test_mteb_data_must_match_the_tasks(tiny_model_dir, shared_data, capsys):
    stsb = str(shared_data / "stsb" / "sts-test.csv")
    assert (
        main([str(tiny_model_dir), "--task", "mteb", "--mteb-tasks", "STSBenchmark", "SciFact", "--mteb-data", stsb])
        == 2
    )
    assert "one path per task" in capsys.readouterr().err
    assert main([str(tiny_model_dir), "--task", "mteb", "--mteb-tasks", "STSBenchmark", "--split", "dev",
                 "--mteb-data", stsb]) == 2  # fmt: skip
    assert "not 'dev'" in capsys.readouterr().err
    assert main([str(tiny_model_dir), "--task", "mteb", "--mteb-tasks", "SprintDuplicateQuestions",
                 "--mteb-data", stsb]) == 2  # fmt: skip
    assert "local data can be given for" in capsys.readouterr().err


def _bad_data(task: str, folder):
    """A data file of TASK's format that is wrong, and the start of the one-line error naming it."""
    folder.mkdir(parents=True, exist_ok=True)
    if task == "sts":
        (folder / "bad.tsv").write_text("a\tb\n")
        return folder / "bad.tsv", "bad.tsv:1: unrecognised STS row"
    if task == "pair-classification":
        (folder / "bad.jsonl").write_text(json.dumps({"sentence1": "a", "sentence2": "b", "label": 7}) + "\n")
        return folder / "bad.jsonl", "bad.jsonl:1"
    if task == "classification":
        (folder / "bad.csv").write_text("text,label\none,a\ntwo,b\n")
        return folder / "bad.csv", "every label needs at least 2 texts"
    if task == "clustering":
        (folder / "bad.csv").write_text("text,label\none,a\ntwo,a\n")
        return folder / "bad.csv", "need at least 2 clusters"
    if task == "reranking":
        (folder / "bad.jsonl").write_text(json.dumps({"query": "q", "positive": ["p"], "negative": []}) + "\n")
        return folder / "bad.jsonl", "no query with at least one positive and one negative"
    (folder / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "a document"}) + "\n")
    return folder, "no qrels/test.tsv"


@pytest.mark.parametrize(
    "task", ["sts", "pair-classification", "classification", "clustering", "reranking", "retrieval"]
)
def test_bad_data_fails_before_the_model_is_loaded(task, tmp_path, capsys):
    """Every file task reads and checks its data before it loads the model: with a model path that does not exist,
    the error is the data's (had the model been loaded first, it would be the model's)."""
    path, message = _bad_data(task, tmp_path / task)
    assert main([str(tmp_path / "no-model"), "--task", task, "--data", str(path)]) == 1
    err = capsys.readouterr().err
    assert message in err and "model directory" not in err
    assert len(err.strip().splitlines()) == 1
