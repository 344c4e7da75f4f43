"""gte_st.readers, the one reader per format family: line numbers, absolute byte offsets, quoting, text kept as text,
and a property-based pass feeding random bytes, encodings and CSV / JSON / JSONL shapes to every reader built on it
(corpus, each evaluation reader, the training-data loader): every outcome is a parsed result or a one-line gte-st
error that names the file, never another exception."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gte_st.corpus import read_corpus
from gte_st.data import load_source, load_training_data
from gte_st.errors import GteStError
from gte_st.evaluation.readers import read_beir, read_labelled_texts, read_pairs, read_reranking, read_sts
from gte_st.files import atomic_write_json
from gte_st.readers import FileFormatError, csv_rows, json_records, read_records, tab_rows, text_lines

# ------------------------------------------------------------------------------------------------- the rules


def test_lines_end_at_lf_crlf_and_cr_and_count_blank_lines(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\ntwo\rthree\n\nfive")
    assert list(text_lines(path)) == [(1, "one"), (2, "two"), (3, "three"), (4, ""), (5, "five")]
    assert list(tab_rows(path)) == [(1, ["one"]), (2, ["two"]), (3, ["three"]), (5, ["five"])]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_a_bad_byte_is_reported_at_its_absolute_offset_and_line(tmp_path, suffix):
    good = "".join(json.dumps({"id": str(i), "text": "é" * 40}) + "\n" for i in range(5000)).encode()
    data = good + b'{"id": "x", "text": "caf\xe9"}\n'
    path = tmp_path / f"corpus{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    with pytest.raises(FileFormatError, match=rf"corpus{suffix}:5001: not UTF-8 text \(byte {len(good) + 24}\b"):
        list(json_records(path))
    assert data[len(good) + 24 : len(good) + 25] == b"\xe9"


def test_csv_quoting_multi_line_records_and_their_lines(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text('id,text\n\na,"two\nlines, one record"\nb,"say ""hi"""\n', encoding="utf8")
    assert list(csv_rows(path)) == [(1, ["id", "text"]), (3, ["a", "two\nlines, one record"]), (5, ["b", 'say "hi"'])]
    assert list(read_records(path)) == [(3, {"id": "a", "text": "two\nlines, one record"}),
                                        (5, {"id": "b", "text": 'say "hi"'})]  # fmt: skip


def test_a_field_longer_than_the_csv_module_limit_is_read_whole(tmp_path):
    text = "x" * (csv.field_size_limit() // 1000 + 200_000)
    path = tmp_path / "long.csv"
    path.write_text(f'id,text\na,"{text}"\n')
    assert list(read_records(path)) == [(2, {"id": "a", "text": text})]


def test_tsv_has_no_quoting_and_csv_tsv_values_stay_text(tmp_path):
    path = tmp_path / "plain.tsv"
    path.write_text('anchor\tpositive\n"quoted" 1990\tNA\n')
    assert list(read_records(path)) == [(2, {"anchor": '"quoted" 1990', "positive": "NA"})]


@pytest.mark.parametrize(
    ("content", "records"),
    [
        ('[\n  {"a": 1},\n\n  {"a": 2}\n]\n', [(2, {"a": 1}), (4, {"a": 2})]),
        ("[]", []),
        ('{\n  "a": 1\n}\n', [(1, {"a": 1})]),
        ('{"a": 1}\n{"a": 2}\n', [(1, {"a": 1}), (2, {"a": 2})]),
    ],
)
def test_a_json_file_holds_json_lines_an_array_or_one_object(tmp_path, content, records):
    path = tmp_path / "data.json"
    path.write_text(content)
    assert list(read_records(path)) == records


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.jsonl", '{"a": 1}\n[1, 2]\n', r"a\.jsonl:2: expected a JSON object \(\{\.\.\.\}\), got list"),
        ("a.jsonl", '{"a": 1}\n{"a": \n', r"a\.jsonl:2: not valid JSON"),
        ("a.json", '[{"a": 1}, {"a": 2} {"a": 3}]', r"a\.json:1: expected ',' or '\]'"),
        ("a.json", '[{"a": 1}]\n[]', r"a\.json:2: more data after the JSON array"),
        ("a.jsonl", '{"a": "\\udc00"}\n', r"a\.jsonl:1: a \\u escape encodes a lone surrogate"),
        ("a.jsonl", '{"a": ' + "9" * 5000 + "}\n", r"a\.jsonl:1: not readable JSON"),
        ("a.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", r"a\.jsonl:1: not readable JSON"),
        ("a.csv", "a,b\n1,2,3\n", r"a\.csv:2: 3 fields, but the header \(line 1\) names 2 columns"),
        ("a.csv", "a,a\n1,2\n", r"a\.csv:1: the header names column 'a' twice"),
        ("a.csv", 'a,b\n"1"2,3\n', r"a\.csv:2: not valid CSV"),
        ("a.tsv", "a\tb\n1\n", r"a\.tsv:2: 1 fields, but the header \(line 1\) names 2 columns"),
        ("a.xml", "<a/>", r"a\.xml: unsupported file type"),
    ],
)
def test_format_errors_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf8")
    with pytest.raises(FileFormatError, match=message):
        list(read_records(path))


def test_unreadable_gzip_and_missing_files(tmp_path):
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(FileFormatError, match=r"bad\.jsonl\.gz: cannot be read"):
        list(read_records(tmp_path / "bad.jsonl.gz"))
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n' * 1000)[:-30])
    with pytest.raises(FileFormatError, match=r"cut\.jsonl\.gz: cannot be read"):
        list(read_records(tmp_path / "cut.jsonl.gz"))
    with pytest.raises(FileNotFoundError, match=r"gone\.jsonl does not exist"):
        list(read_records(tmp_path / "gone.jsonl"))


def test_json_results_are_standard_json(tmp_path):
    with pytest.raises(ValueError, match=r"out\.json: not written: .*NaN or infinity"):
        atomic_write_json(tmp_path / "out.json", {"spearman": float("nan")})
    assert not list(tmp_path.iterdir())
    atomic_write_json(tmp_path / "out.json", {"spearman": 0.5})
    assert json.loads((tmp_path / "out.json").read_text()) == {"spearman": 0.5}


# ------------------------------------------------------------------------------- the property-based pass

# The columns each reader looks for, and what a good value of each is; rows mostly follow one of these, with a
# value of any JSON type (or a missing key) now and then.
SCHEMAS = [
    {"sentence1": "text", "sentence2": "text", "score": "number", "split": "split"},
    {"sentence1": "text", "sentence2": "text", "label": "binary"},
    {"anchor": "text", "positive": "text", "negative": "text"},
    {"query": "text", "pos": "texts", "neg": "texts", "pos_scores": "numbers", "neg_scores": "numbers"},
    {"_id": "id", "title": "text", "text": "text"},
    {"query": "text", "positive": "texts", "negative": "texts"},
    {"text": "text", "label": "text", "split": "split"},
]
KEYS = sorted({key for schema in SCHEMAS for key in schema})
SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".txt", ".jsonl.gz"]
SUFFIX_OF = {"jsonl": ".jsonl", "json-array": ".json", "csv": ".csv", "naive-csv": ".csv", "tsv": ".tsv"}
USER_ERRORS = (GteStError, ValueError, OSError)
# GTE_ST_PROPERTY_SCALE=20 runs 20x the examples (a deeper search than the suite's few seconds).
SCALE = int(os.environ.get("GTE_ST_PROPERTY_SCALE", "1"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=8,
)
words = st.text(alphabet=string.ascii_letters + " \u00e9\u4e2d", min_size=1, max_size=10)
GOOD = {
    "text": words,
    "number": st.integers(0, 5) | st.floats(0, 5),
    "binary": st.sampled_from([0, 1]),
    "texts": st.lists(words, max_size=3),
    "numbers": st.lists(st.floats(0, 1), max_size=3),
    "id": st.integers(0, 9) | st.integers(0, 9).map(str),
    "split": st.sampled_from(["train", "test", "dev", "other"]),
}
cell = st.text(
    alphabet=string.ascii_letters + string.digits + ' ,"\t\n\r.-\u00e9\u4e2d', max_size=10
) | st.sampled_from(['"open', 'a"b"', '"q"x', '""', "1990", "NA", "nan", "1e999", "", " ", "\ufeff"])


@st.composite
def record(draw, schema: dict[str, str]) -> object:
    """A row of ``schema``: one in 20 is not an object; a key is missing one time in 10, of any JSON type three in 10."""
    if draw(st.integers(0, 19)) == 0:
        return draw(json_values)
    row = {}
    for key, kind in schema.items():
        roll = draw(st.integers(0, 9))
        if roll:
            row[key] = draw(json_values) if roll <= 3 else draw(GOOD[kind])
    return row


KINDS = ["bytes", "text", "jsonl", "json-array", "csv", "tsv", "naive-csv"]


@st.composite
def named_file(draw, schema: dict[str, str] | None = None, kinds: list[str] = KINDS) -> tuple[str, bytes]:
    """A file suffix and content: mostly the suffix the content is written for, sometimes any other."""
    kind = draw(st.sampled_from(kinds))
    content = draw(file_bytes(kind, schema))
    suffix = SUFFIX_OF.get(kind, ".txt")
    if draw(st.integers(0, 3)) == 0:
        suffix = draw(st.sampled_from(SUFFIXES))
    return suffix, content


@st.composite
def file_bytes(draw, kind: str | None = None, schema: dict[str, str] | None = None) -> bytes:
    """Random bytes, text in several encodings, JSON lines / arrays, CSV / TSV tables (well or badly quoted)."""
    kind = kind or draw(st.sampled_from(KINDS))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252", "gb18030"]))
        return draw(st.text(max_size=80)).encode(encoding, errors="replace")
    schema = schema or draw(st.sampled_from(SCHEMAS))
    if kind in ("jsonl", "json-array"):
        rows = draw(st.lists(record(schema), max_size=6))
        if kind == "json-array":
            return json.dumps(rows, indent=draw(st.sampled_from([None, 2]))).encode()
        newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
        return "".join(json.dumps(row) + newline for row in rows).encode()
    header = draw(st.lists(st.sampled_from(list(schema)), min_size=1, max_size=len(schema), unique=True))
    if draw(st.integers(0, 5)) == 0:
        header.append(draw(st.sampled_from(KEYS)))  # perhaps twice
    rows = draw(st.lists(st.lists(cell, min_size=len(header) - 1, max_size=len(header) + 1), max_size=6))
    if kind == "csv":
        buffer = io.StringIO()
        csv.writer(buffer).writerows([header, *rows])
        return buffer.getvalue().encode()
    separator = "\t" if kind == "tsv" else ","
    return "".join(separator.join(row) + "\n" for row in [header, *rows]).encode()


def _check(call, path: Path) -> None:
    """``call()`` returns, or raises a user error (one line in the CLI) whose message names ``path``."""
    try:
        call()
    except USER_ERRORS as exc:
        assert path.name in str(exc) or path.parent.name in str(exc), f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("property")


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


@settings(max_examples=100 * SCALE, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(file=named_file())
def test_every_reader_parses_or_names_the_file(scratch, file):
    suffix, data = file
    path = _write(scratch, f"data{suffix}", data)
    _check(lambda: list(read_records(path)), path)
    _check(lambda: read_corpus(path), path)
    _check(lambda: read_sts(path), path)
    _check(lambda: read_pairs(path), path)
    _check(lambda: read_labelled_texts(path), path)
    _check(lambda: read_reranking(path), path)
    _check(lambda: load_training_data([str(path)]), path)
    _check(lambda: load_training_data([str(path)], scored=True), path)
    _check(lambda: load_source(str(path)), path)


# Each reader on files of its own layout, where a bad value reaches the code that reads that column.
OWN_LAYOUT = {
    "sts": (read_sts, SCHEMAS[0]),
    "pairs": (read_pairs, SCHEMAS[1]),
    "training-pairs": (lambda path: load_training_data([str(path)]), SCHEMAS[2]),
    "training-scored-pairs": (lambda path: load_training_data([str(path)], scored=True), SCHEMAS[0]),
    "training-flagembedding": (lambda path: load_training_data([str(path)]), SCHEMAS[3]),
    "corpus": (read_corpus, SCHEMAS[4]),
    "reranking": (read_reranking, SCHEMAS[5]),
    "labelled-texts": (read_labelled_texts, SCHEMAS[6]),
}


@pytest.mark.parametrize("reader", OWN_LAYOUT)
def test_each_reader_on_its_own_layout_parses_or_names_the_file(scratch, reader):
    read, schema = OWN_LAYOUT[reader]

    @settings(max_examples=80 * SCALE, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(file=named_file(schema, kinds=["jsonl", "json-array", "csv", "tsv", "naive-csv"]))
    def run(file):
        suffix, data = file
        path = _write(scratch, f"{reader}{suffix}", data)
        _check(lambda: read(path), path)

    run()


beir_kinds = st.sampled_from(["jsonl", "jsonl", "jsonl", "bytes", "text", "tsv"])
qrels_cell = (
    st.integers(0, 9).map(str) | st.sampled_from(["1", "0", "-1", "2.5", "high", "nan", "", "query-id"]) | cell
)


@settings(max_examples=60 * SCALE, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    corpus=beir_kinds.flatmap(lambda kind: file_bytes(kind, {"_id": "id", "title": "text", "text": "text"})),
    queries=beir_kinds.flatmap(lambda kind: file_bytes(kind, {"_id": "id", "text": "text"})),
    qrels=st.lists(st.lists(qrels_cell, min_size=2, max_size=4), max_size=6).map(
        lambda rows: "".join("\t".join(row) + "\n" for row in rows).encode()
    ),
    gz=st.booleans(),
)
def test_the_beir_reader_parses_or_names_the_file(scratch, corpus, queries, qrels, gz):
    folder = scratch / "beir"
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("corpus.jsonl*"):
        stale.unlink()
    _write(folder, "corpus.jsonl.gz" if gz else "corpus.jsonl", corpus)
    _write(folder, "queries.jsonl", queries)
    _write(folder / "qrels", "test.tsv", qrels)
    try:
        read_beir(folder, "test")
    except USER_ERRORS as exc:
        names = ("corpus.jsonl", "queries.jsonl", "test.tsv", "beir")
        assert any(name in str(exc) for name in names), f"{type(exc).__name__}: {exc}"
