"""Bad data files, as a new user would give them, through every command that reads them (issue 26, items 11, 12,
14, 15, 17, 19): each case exits non-zero with one line naming the file and line (or row, id, column), prints no
traceback and changes nothing that already existed; where the command checks its input before the model, it fails
before any model is loaded. The readers are gte_st.readers, gte_st.corpus and gte_st.evaluation.readers; the cases
go through the CLI as a user would."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from bad_input import Case, check_bad_input
from conftest import stsb_rows

from gte_st.cli import main


def _eval(w: dict[str, Path], task: str, data: str, *extra: str) -> list[str]:
    return ["eval", str(w["model"]), "--task", task, "--data", str(w[data]), *extra]


def _bm25(w: dict[str, Path], data: str) -> list[str]:  # retrieval without a model: only the reading is tested
    return ["eval", str(w["model"]), "--task", "retrieval", "--data", str(w[data]), "--retriever", "bm25"]


def _index(w: dict[str, Path], corpus: str) -> list[str]:
    return ["index", str(w[corpus]), "--model", str(w["model"]), "--out", str(w["tmp"] / "new-index")]


def _train(w: dict[str, Path], data: str) -> list[str]:
    return ["train", "--data", str(w[data]), "--output_dir", str(w["existing_out"]), "--max_steps", "1"]


LATE_BYTE = 300_000  # well past any read chunk: the offset must be the file's, not the chunk's
BAD_LINE = LATE_BYTE // 100 + 1  # the lines before are 100 bytes each
BAD_BYTE = LATE_BYTE + len('{"id":"late","text":"')
BAD_PAIR_BYTE = LATE_BYTE + len('{"anchor":"late","positive":"')

# fmt: off
CASES = [
    # ---- 11: STS gold scores and texts
    Case("eval-sts-nan-score", lambda w: _eval(w, "sts", "sts_nan"), "sts_nan.tsv:2: score: expected a finite number",
         before_model=False),
    Case("eval-sts-json-nan-score", lambda w: _eval(w, "sts", "sts_json_nan"),
         "sts_json_nan.jsonl:2: score: expected a finite number, got nan", before_model=False),
    Case("eval-sts-empty-sentence", lambda w: _eval(w, "sts", "sts_empty"), "sts_empty.jsonl:2: sentence2: empty text",
         before_model=False),
    Case("eval-sts-equal-gold-scores", lambda w: _eval(w, "sts", "sts_constant"),
         "all 3 gold scores are 2.5; a correlation needs scores that differ", before_model=False),
    # ---- 12: one corpus reader, one rule
    Case("eval-beir-duplicate-corpus-id", lambda w: _bm25(w, "beir_dup"), "duplicate id 'd1' in rows 1 and 3"),
    Case("index-beir-duplicate-corpus-id", lambda w: _index(w, "beir_dup"), "duplicate id 'd1' in rows 1 and 3"),
    Case("eval-beir-duplicate-query-id", lambda w: _bm25(w, "beir_dup_query"),
         "queries.jsonl: duplicate query id 'q1' on lines 1 and 2"),
    # ---- 15: index
    Case("index-csv-row-with-an-extra-field", lambda w: _index(w, "extra_csv"),
         "extra.csv:3: 3 fields, but the header (line 1) names 2 columns ['id', 'text']; a field holding a comma "
         "must be quoted"),
    Case("index-csv-quote-never-closed", lambda w: _index(w, "open_quote_csv"),
         "open-quote.csv:3: not valid CSV (unexpected end of data)"),
    Case("index-json-array-of-non-objects", lambda w: _index(w, "array_of_strings"),
         "strings.json:2: expected a JSON object ({...}), got str"),
    Case("index-json-array-not-closed", lambda w: _index(w, "open_array"), "open-array.json:4: not valid JSON (Expecting ',' delimiter, column 1)"),
    # ---- 17: eval rows
    Case("eval-sick-short-row", lambda w: _eval(w, "sts", "sick_short"),
         "SICK_short.txt:3: 2 tab-separated fields, expected at least 4 (the SICK header on line 1 names 5 columns)", before_model=False),
    Case("eval-sts-header-without-a-column", lambda w: _eval(w, "sts", "sts_header"),
         "sts_header.tsv:1: the header names no 'sentence2' column (it needs sentence1, sentence2, score)",
         before_model=False),
    Case("eval-classification-csv-first-row-extra-field", lambda w: _eval(w, "classification", "cls_extra"),
         "cls.csv:2: 3 fields, but the header (line 1) names 2 columns", before_model=False),
    Case("eval-sts-null-sentence", lambda w: _eval(w, "sts", "sts_null"),
         "sts_null.jsonl:1: sentence1: expected a string, got NoneType (None)", before_model=False),
    Case("eval-qrels-score-not-a-number", lambda w: _bm25(w, "beir_high"),
         "test.tsv:3: score: expected a finite number, got 'high'"),
    Case("eval-corpus-row-without-id", lambda w: _bm25(w, "beir_no_id"), "corpus.jsonl: row 2: missing id field '_id'"),
    Case("eval-query-without-text", lambda w: _bm25(w, "beir_query_no_text"),
         "queries.jsonl:1: text: expected a string, got NoneType (None)"),
    Case("eval-pairs-label-not-binary", lambda w: _eval(w, "pair-classification", "pairs_label"),
         "pairs.jsonl:2: label: expected 0 or 1, got 2", before_model=False),
    Case("eval-reranking-positive-not-a-list", lambda w: _eval(w, "reranking", "rerank_bad"),
         "rerank.jsonl:1: positive is not a list of texts", before_model=False),
    # ---- 19: where a bad byte is
    Case("index-late-bad-utf8-byte", lambda w: _index(w, "late_bad_utf8"),
         f"late.jsonl:{BAD_LINE}: not UTF-8 text (byte {BAD_BYTE}: invalid start byte)"),
    Case("index-late-bad-utf8-byte-gzipped", lambda w: _index(w, "late_bad_utf8_gz"),
         f"late.jsonl.gz:{BAD_LINE}: not UTF-8 text (byte {BAD_BYTE} of the decompressed text"),
    Case("train-late-bad-utf8-byte", lambda w: _train(w, "late_bad_pairs"),
         f"late-pairs.jsonl:{BAD_LINE}: not UTF-8 text (byte {BAD_PAIR_BYTE}"),
    Case("train-csv-quote-after-a-closing-quote", lambda w: _train(w, "train_bad_quote"),
         "bad-quote.csv:2: not valid CSV"),
    Case("train-csv-row-with-a-missing-field", lambda w: _train(w, "train_short_row"),
         "short-row.csv:3: 1 fields, but the header (line 1) names 2 columns"),
    Case("search-meta-without-files", lambda w: ["search", str(w["index_no_files"]), "q"],
         "meta.json: lacks files (a JSON dict); rebuild the index"),
]
# fmt: on


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf8")
    return path


def _beir(folder: Path, corpus: str, queries: str, qrels: str) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(corpus, encoding="utf8")
    (folder / "queries.jsonl").write_text(queries, encoding="utf8")
    (folder / "qrels" / "test.tsv").write_text(qrels, encoding="utf8")
    return folder


CORPUS = "".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"document {i} text"}) + "\n" for i in range(4))
QUERIES = '{"_id": "q1", "text": "document 1"}\n{"_id": "q2", "text": "document 2"}\n'
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"


def _late_bad_lines(first: str, second: str) -> bytes:
    """LATE_BYTE // 100 JSON lines of exactly 100 bytes each, then a line whose value is a byte that is not UTF-8."""
    lines = []
    for i in range(LATE_BYTE // 100):
        line = json.dumps({first: f"{i:06d}", second: ""}, separators=(",", ":"))
        lines.append(line.replace('""', '"' + "x" * (99 - len(line)) + '"') + "\n")
    good = "".join(lines).encode()
    assert len(good) == LATE_BYTE
    bad = f'{{"{first}":"late","{second}":"'.encode()
    return good + bad + b'\xff"}\n'


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_gte_dir) -> dict[str, Path]:
    """Every bad file the cases need, built once, next to a model, an index and an existing output."""
    from gte_st.search import build_index

    tmp = tmp_path_factory.mktemp("bad-readers")
    w: dict[str, Path] = {"tmp": tmp, "model": tiny_gte_dir}
    w["existing_out"] = tmp / "existing-out"
    w["existing_out"].mkdir()
    (w["existing_out"] / "keep.txt").write_text("an earlier run's output")
    rows = stsb_rows("train")[:8]
    w["sts_nan"] = tmp / "sts_nan.tsv"
    w["sts_nan"].write_text(f"{rows[0][1]}\t{rows[0][2]}\t3.0\n{rows[1][1]}\t{rows[1][2]}\tnan\n")
    w["sts_json_nan"] = tmp / "sts_json_nan.jsonl"
    w["sts_json_nan"].write_text('{"sentence1": "a b", "sentence2": "c d", "score": 1}\n'
                                 '{"sentence1": "a b", "sentence2": "c d", "score": NaN}\n')  # fmt: skip
    w["sts_empty"] = _jsonl(tmp / "sts_empty.jsonl", [{"sentence1": "a b", "sentence2": "c d", "score": 1},
                                                      {"sentence1": "a b", "sentence2": "  ", "score": 2}])  # fmt: skip
    w["sts_constant"] = _jsonl(tmp / "sts_constant.jsonl", [{"sentence1": a, "sentence2": b, "score": 2.5}
                                                            for _, a, b in rows[:3]])  # fmt: skip
    w["sts_null"] = _jsonl(tmp / "sts_null.jsonl", [{"sentence1": None, "sentence2": "c d", "score": 1}])
    dup = '{"_id": "d1", "text": "one"}\n{"_id": "d2", "text": "two"}\n{"_id": "d1", "text": "again"}\n'
    w["beir_dup"] = _beir(tmp / "beir-dup", dup, QUERIES, QRELS)
    w["beir_dup_query"] = _beir(tmp / "beir-dup-query", CORPUS, '{"_id": "q1", "text": "a"}\n' * 2, QRELS)
    w["beir_high"] = _beir(tmp / "beir-high", CORPUS, QUERIES, QRELS.replace("q2\td2\t1", "q2\td2\thigh"))
    w["beir_no_id"] = _beir(tmp / "beir-no-id", '{"_id": "d1", "text": "one"}\n{"text": "no id"}\n', QUERIES, QRELS)
    w["beir_query_no_text"] = _beir(tmp / "beir-query-no-text", CORPUS, '{"_id": "q1"}\n', QRELS)
    w["extra_csv"] = tmp / "extra.csv"
    w["extra_csv"].write_text("id,text\na,first text\nb,a text, with a comma\n")
    w["open_quote_csv"] = tmp / "open-quote.csv"
    w["open_quote_csv"].write_text('id,text\na,first\nb,"never closed\nc,third\n')
    w["array_of_strings"] = tmp / "strings.json"
    w["array_of_strings"].write_text('[\n  "just a text",\n  "another"\n]\n')
    w["open_array"] = tmp / "open-array.json"
    w["open_array"].write_text('[\n  {"id": "a", "text": "x"},\n  {"id": "b", "text": "y"\n')
    w["sick_short"] = tmp / "SICK_short.txt"
    w["sick_short"].write_text("pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
                               "1\ta b\tc d\t4.5\tNEUTRAL\n2\tonly a sentence\n")  # fmt: skip
    w["sts_header"] = tmp / "sts_header.tsv"
    w["sts_header"].write_text("sentence1\tscore\nA text.\t3.5\n")
    w["cls_extra"] = tmp / "cls.csv"
    w["cls_extra"].write_text("text,label\nfirst text,a,extra\nsecond,b\n")
    w["pairs_label"] = _jsonl(tmp / "pairs.jsonl", [{"sentence1": "a", "sentence2": "b", "label": 1},
                                                    {"sentence1": "a", "sentence2": "b", "label": 2}])  # fmt: skip
    w["rerank_bad"] = _jsonl(tmp / "rerank.jsonl", [{"query": "q", "positive": "not a list", "negative": []}])
    w["late_bad_utf8"] = tmp / "late.jsonl"
    w["late_bad_utf8"].write_bytes(_late_bad_lines("id", "text"))
    w["late_bad_utf8_gz"] = tmp / "late.jsonl.gz"
    w["late_bad_utf8_gz"].write_bytes(gzip.compress(_late_bad_lines("id", "text")))
    w["late_bad_pairs"] = tmp / "late-pairs.jsonl"
    w["late_bad_pairs"].write_bytes(_late_bad_lines("anchor", "positive"))
    w["train_bad_quote"] = tmp / "bad-quote.csv"
    w["train_bad_quote"].write_text('anchor,positive\n"a" b,c\n')
    w["train_short_row"] = tmp / "short-row.csv"
    w["train_short_row"].write_text("anchor,positive\na,b\nonly one\n")
    corpus = _jsonl(tmp / "corpus.jsonl", [{"id": f"d{i}", "text": a} for i, (_, a, _) in enumerate(rows)])
    w["index_no_files"] = tmp / "index-no-files"
    build_index(corpus, str(tiny_gte_dir), w["index_no_files"], show_progress_bar=False)
    meta = json.loads((w["index_no_files"] / "meta.json").read_text())
    del meta["files"]
    (w["index_no_files"] / "meta.json").write_text(json.dumps(meta))
    return w


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_file_is_one_line_error_naming_file_and_line(case: Case, world, monkeypatch, capsys):
    check_bad_input(case, world, monkeypatch, capsys)


def test_qrels_naming_missing_documents_are_counted_in_a_warning(world, tmp_path, capsys, caplog):
    folder = _beir(tmp_path / "beir", CORPUS, QUERIES, QRELS + "q1\tgone-1\t1\nq2\tgone-2\t2\nq2\td3\t0\n")
    out = tmp_path / "out.json"
    code = main(["eval", str(world["model"]), "--task", "retrieval", "--data", str(folder), "--retriever", "bm25",
                 "--output", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "judgements" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "test.tsv: 2 of 4 relevance judgements name 2 documents that are not in" in warnings[0]
    assert "corpus.jsonl (e.g. ['gone-1', 'gone-2'])" in warnings[0]
    json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))


def test_csv_text_that_looks_numeric_or_missing_stays_text(tmp_path):
    """Item 14: ``1990``, ``NA``, ``null``, ``007`` and ``1e3`` are texts in a CSV / TSV text column: training data,
    corpora and evaluation files keep them as written."""
    from gte_st.corpus import read_corpus
    from gte_st.data import load_training_data
    from gte_st.evaluation.readers import read_labelled_texts, read_pairs

    texts = ["1990", "NA", "null", "007", "1e3", "N/A", "nan", "True"]
    (tmp_path / "pairs.csv").write_text("anchor,positive\n" + "".join(f"{t},{t} again\n" for t in texts))
    (tmp_path / "pairs.tsv").write_text("anchor\tpositive\n" + "".join(f"{t}\t{t}\n" for t in texts))
    for name in ("pairs.csv", "pairs.tsv"):
        data = load_training_data([str(tmp_path / name)])["pairs"]
        assert data["anchor"] == texts, name
    (tmp_path / "corpus.csv").write_text("id,text\n" + "".join(f"{t},{t}\n" for t in texts))
    assert read_corpus(tmp_path / "corpus.csv") == (texts, texts)
    (tmp_path / "labels.csv").write_text("text,label\n" + "".join(f"{t},{t}\n" for t in texts))
    assert read_labelled_texts(tmp_path / "labels.csv").texts == texts
    (tmp_path / "test.csv").write_text("sentence1,sentence2,label\n" + "".join(f"{t},NA,1\n" for t in texts))
    assert read_pairs(tmp_path / "test.csv").sentences1 == texts


def test_csv_scores_are_parsed_where_a_number_is_expected(tmp_path):
    from gte_st.data import load_training_data

    (tmp_path / "sts.csv").write_text("sentence1,sentence2,score\na b,c d,4.5\ne f,g h,1\n")
    data = load_training_data([str(tmp_path / "sts.csv")], scored=True)["sts"]
    assert data["label"] == [4.5, 1.0]


def test_index_reads_a_json_array_and_a_csv_field_over_the_csv_module_limit(tmp_path, tiny_gte_dir, capsys):
    """Item 15: a ``.json`` array of objects is a corpus; a CSV field longer than the csv module's 128 KiB default
    is read whole (and indexed: the tokenizer sees a capped prefix)."""
    from gte_st.search import Index

    long_text = " ".join(["word"] * 60_000)  # 300 KB
    (tmp_path / "long.csv").write_text(f'id,text\nlong,"{long_text}"\nshort,a short text\n')
    (tmp_path / "array.json").write_text(json.dumps([{"id": "a", "text": "first"}, {"id": "b", "text": "second"}],
                                                    indent=2))  # fmt: skip
    for name in ("long.csv", "array.json"):
        out = tmp_path / f"index-{name}"
        assert main(["index", str(tmp_path / name), "--model", str(tiny_gte_dir), "--out", str(out),
                     "--no-progress"]) == 0, capsys.readouterr().err  # fmt: skip
    assert Index.load(tmp_path / "index-long.csv").texts == [long_text, "a short text"]
    assert Index.load(tmp_path / "index-array.json").ids == ["a", "b"]
