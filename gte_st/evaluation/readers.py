"""Readers for the evaluation data layouts people already have on disk.

Every reader takes a file (or a folder plus a split) and returns plain Python lists; the layout is detected from the
file name, extension and first line. Files are read by the rules of :mod:`gte_st.readers` (UTF-8, CSV quoting, text
read as text) and a BEIR corpus by :func:`gte_st.corpus.read_corpus`, the readers the other commands use. An
unreadable row raises a ``ValueError`` naming the file and line: a missing or short row, a text that is not a
non-empty string (training refuses those too), a score that is not a finite number, a label that is not 0/1.

* pairs with a gold score (STS): STS-B ``sts-<split>.csv`` (tab-separated, no header: genre, file, year, id, score,
  sentence1, sentence2[, ...]), the sentence-transformers ``stsbenchmark.tsv.gz`` (header with ``split``), SICK
  (``pair_ID  sentence_A  sentence_B  relatedness_score ...``, or the full SICK.txt with ``SemEval_set``), jsonl with
  ``sentence1``/``sentence2``/``score``, and plain ``s1<TAB>s2<TAB>score`` files;
* labelled pairs (pair classification): MRPC (``Quality  #1 ID  #2 ID  #1 String  #2 String``), csv/tsv with a
  ``sentence1,sentence2,label`` header, jsonl with those keys, plain ``s1<TAB>s2<TAB>label`` (LCQMC);
* labelled texts (classification, clustering): csv/tsv with a header naming a text column (``text``, ``sentence``,
  ``subject``, ``title``) and a label column (``label``, ``category``) and optionally ``split``; jsonl with those keys;
* reranking: WikiQA (``question<TAB>candidate<TAB>label``) or jsonl ``{"query", "positive": [...], "negative": [...]}``;
* retrieval: a BEIR folder (``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gte_st.corpus import read_corpus
from gte_st.readers import as_number, as_text, file_format, json_records, read_records, tab_rows, table_records, where

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sentence", "subject", "title", "content")
LABEL_COLUMNS = ("label", "category", "labels", "class")
SPLIT_ALIASES = {"dev": ("dev", "valid", "validation", "trial"), "test": ("test",), "train": ("train",)}


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _split_matches(value: object, split: str) -> bool:
    return str(value).strip().lower() in SPLIT_ALIASES.get(split, (split,))


def _inferred_split(name: str) -> str | None:
    return next((k for k, v in SPLIT_ALIASES.items() if any(a in name for a in v)), None)


def _resolve_file(path: Path, split: str | None, patterns: tuple[str, ...]) -> Path:
    """A folder + split -> the one file in it for that split (e.g. ``sts-test.csv``, ``SICK_test_annotated.txt``)."""
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        return path
    split = split or "test"
    for alias in SPLIT_ALIASES.get(split, (split,)):
        for pattern in patterns:
            hits = sorted(path.glob(pattern.format(split=alias)))
            if hits:
                return hits[0]
    raise FileNotFoundError(f"no file for split {split!r} in folder {path} (looked for {', '.join(patterns)})")


def _text(value: Any, file: Path, number: int, name: str) -> str:
    return as_text(value, f"{where(file, number)}: {name}")


def _float(value: Any, file: Path, number: int, name: str = "score") -> float:
    return as_number(value, f"{where(file, number)}: {name}")


def _binary_label(value: Any, file: Path, number: int) -> int:
    """``value`` as a 0/1 label (an integer, a whole float or a string ``0``/``1``)."""
    if isinstance(value, str):
        value = value.strip()
    if value in (0, 1, "0", "1") and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"{where(file, number)}: label: expected 0 or 1, got {value!r:.40}")


def _header_has(header: list[str], names: tuple[str, ...], file: Path, number: int) -> None:
    if missing := [name for name in names if name not in header]:
        raise ValueError(f"{file}:{number}: the header names no {missing[0]!r} column (it needs {', '.join(names)})")


def _fields(fields: list[str], indices: tuple[int, ...], file: Path, number: int, layout: str) -> list[str]:
    """Fields ``indices`` of a tab-separated row, or an error naming the line and the layout that was expected."""
    if max(indices) >= len(fields):
        raise ValueError(
            f"{file}:{number}: {len(fields)} tab-separated fields, expected at least {max(indices) + 1} ({layout})"
        )
    return [fields[i] for i in indices]


def _records(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """:func:`gte_st.readers.read_records`, with a ``.txt`` file read as TSV (a header row, no quoting)."""
    if file.name.lower().removesuffix(".gz").endswith(".txt"):
        return table_records(file, "\t")
    return read_records(file)


@dataclass
class ScoredPairs:
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    split: str


def read_sts(path: str | Path, split: str | None = None) -> ScoredPairs:
    """Read sentence pairs with gold similarity scores (see the module docstring for the layouts)."""
    file = _resolve_file(
        Path(path), split, ("sts-{split}.csv", "SICK_{split}*.txt", "*{split}*.jsonl", "*{split}*.tsv", "*{split}*")
    )
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    name = file.name.lower()

    def add(a: Any, b: Any, score: Any, number: int) -> None:
        s1.append(_text(a, file, number, "sentence1"))
        s2.append(_text(b, file, number, "sentence2"))
        scores.append(_float(score, file, number))

    if file_format(file) == "json":
        for number, row in json_records(file):
            if split and "split" in row and not _split_matches(row["split"], split):
                continue
            score = row.get("score", row.get("label"))
            missing = [key for key in ("sentence1", "sentence2") if key not in row] + ["score"] * (score is None)
            if missing:
                raise ValueError(f"{file}:{number}: missing key {missing[0]!r} (need sentence1, sentence2, score)")
            add(row["sentence1"], row["sentence2"], score, number)
        return ScoredPairs(s1, s2, scores, split or "test")

    rows = tab_rows(file)
    first_number, first = next(rows, (0, []))
    lowered = [field.strip().lower() for field in first]
    if "sentence_a" in lowered and "relatedness_score" in lowered:  # SICK
        _header_has(lowered, ("sentence_a", "sentence_b", "relatedness_score"), file, first_number)
        ia, ib, isc = lowered.index("sentence_a"), lowered.index("sentence_b"), lowered.index("relatedness_score")
        iset = lowered.index("semeval_set") if "semeval_set" in lowered else None
        layout = f"the SICK header on line {first_number} names {len(first)} columns"
        for number, fields in rows:
            a, b, score, *rest = _fields(
                fields, (ia, ib, isc) + (() if iset is None else (iset,)), file, number, layout
            )
            if rest and split and not _split_matches(rest[0], split):
                continue
            add(a, b, score, number)
        return ScoredPairs(s1, s2, scores, split or _inferred_split(name) or "test")
    if "sentence1" in lowered and "score" in lowered:  # header layout, e.g. stsbenchmark.tsv.gz
        _header_has(lowered, ("sentence1", "sentence2", "score"), file, first_number)
        ia, ib, isc = lowered.index("sentence1"), lowered.index("sentence2"), lowered.index("score")
        isplit = lowered.index("split") if "split" in lowered else None
        wanted = split or ("test" if isplit is not None else None)
        layout = f"the header on line {first_number} names {len(first)} columns"
        for number, fields in rows:
            a, b, score, *rest = _fields(
                fields, (ia, ib, isc) + (() if isplit is None else (isplit,)), file, number, layout
            )
            if rest and wanted and not _split_matches(rest[0], wanted):
                continue
            add(a, b, score, number)
        return ScoredPairs(s1, s2, scores, wanted or "test")

    for number, fields in [(first_number, first), *rows] if first else []:
        if len(fields) >= 7 and _is_float(fields[4]):  # STS-B original release
            score, a, b = fields[4], fields[5], fields[6]
        elif len(fields) == 3 and _is_float(fields[2]):  # s1 \t s2 \t score
            a, b, score = fields
        else:
            raise ValueError(
                f"{file}:{number}: unrecognised STS row with {len(fields)} tab-separated fields; expected the STS-B "
                "layout (score in column 5, sentences in 6-7), SICK, s1<TAB>s2<TAB>score, or jsonl"
            )
        add(a, b, score, number)
    return ScoredPairs(s1, s2, scores, split or _inferred_split(name) or "test")


@dataclass
class LabelledPairs:
    sentences1: list[str]
    sentences2: list[str]
    labels: list[int]
    split: str


def read_pairs(path: str | Path, split: str | None = None) -> LabelledPairs:
    """Read sentence pairs with binary labels (MRPC, LCQMC/BQ-style csv/tsv, jsonl)."""
    file = _resolve_file(Path(path), split, ("*{split}*.txt", "*{split}*.tsv", "*{split}*.csv", "*{split}*.jsonl"))
    s1: list[str] = []
    s2: list[str] = []
    labels: list[int] = []
    inferred = _inferred_split(file.name.lower())

    def add(a: Any, b: Any, label: Any, number: int) -> None:
        s1.append(_text(a, file, number, "sentence1"))
        s2.append(_text(b, file, number, "sentence2"))
        labels.append(_binary_label(label, file, number))

    if file_format(file) in ("json", "csv"):
        for number, row in read_records(file):
            if missing := [key for key in ("sentence1", "sentence2", "label") if key not in row]:
                raise ValueError(f"{file}:{number}: missing {missing[0]!r} (need sentence1, sentence2, label)")
            add(row["sentence1"], row["sentence2"], row["label"], number)
        return LabelledPairs(s1, s2, labels, split or inferred or "test")
    rows = list(tab_rows(file))
    lowered = [field.strip().lower() for field in rows[0][1]] if rows else []
    if lowered and lowered[0] == "quality":  # MRPC
        for number, fields in rows[1:]:
            if len(fields) < 5:
                raise ValueError(f"{file}:{number}: expected 5 tab-separated MRPC fields, got {len(fields)}")
            add(fields[3], fields[4], fields[0], number)
    else:
        for number, fields in rows:
            if len(fields) >= 3 and fields[-1].strip() in ("0", "1"):  # [id \t] s1 \t s2 \t label
                add(fields[-3], fields[-2], fields[-1], number)
            elif number == rows[0][0]:
                continue  # a header line
            else:
                raise ValueError(f"{file}:{number}: expected s1<TAB>s2<TAB>label(0/1), got {len(fields)} fields")
    return LabelledPairs(s1, s2, labels, split or inferred or "test")


@dataclass
class LabelledTexts:
    texts: list[str]
    labels: list[str]
    splits: list[str] | None


def read_labelled_texts(path: str | Path, split: str | None = None) -> LabelledTexts:
    """Read texts with class labels (csv/tsv/txt with a header, or jsonl). With a ``split`` column and a ``split``
    argument, only that split's rows are kept; without a split argument every row is returned with its split."""
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{file} does not exist")
    records = list(_records(file))
    if not records:
        raise ValueError(f"{file}: no rows")
    keys = {key.strip().lower(): key for key in records[0][1]}
    text_key = next((keys[c] for c in TEXT_COLUMNS if c in keys), None)
    label_key = next((keys[c] for c in LABEL_COLUMNS if c in keys), None)
    if text_key is None or label_key is None:
        raise ValueError(
            f"{where(file, records[0][0])}: need a text column (one of {TEXT_COLUMNS}) and a label column "
            f"(one of {LABEL_COLUMNS}); found {list(records[0][1])}"
        )
    split_key = keys.get("split")
    texts, labels, splits = [], [], []
    for number, row in records:
        if split_key and split and not _split_matches(row.get(split_key), split):
            continue
        label = row.get(label_key)
        if label is None or isinstance(label, (list, dict)) or not str(label).strip():
            raise ValueError(f"{where(file, number)}: {label_key} is {label!r:.40}, expected a label")
        texts.append(_text(row.get(text_key), file, number, text_key))
        labels.append(str(label))
        if split_key:
            splits.append(str(row.get(split_key)).strip().lower())
    if not texts:
        raise ValueError(f"{file}: no rows for split {split!r}")
    return LabelledTexts(texts, labels, splits if split_key else None)


def read_reranking(path: str | Path, split: str | None = None) -> list[dict[str, str | list[str]]]:
    """Read reranking samples ``{"query", "positive": [...], "negative": [...]}`` from WikiQA-style
    ``question<TAB>candidate<TAB>label`` files (grouped by question, in order of appearance) or jsonl."""
    file = _resolve_file(Path(path), split, ("*-{split}.txt", "*{split}*.tsv", "*{split}*.jsonl"))
    if file_format(file) == "json":
        samples = []
        for number, row in json_records(file):
            if not {"query", "positive", "negative"} <= set(row):
                raise ValueError(f"{file}:{number}: need keys query, positive, negative")
            lists = {}
            for key in ("positive", "negative"):
                if not isinstance(row[key], list):
                    raise ValueError(f"{file}:{number}: {key} is not a list of texts")
                lists[key] = [_text(text, file, number, f"{key}[{i}]") for i, text in enumerate(row[key])]
            samples.append({"query": _text(row["query"], file, number, "query"), **lists})
        return samples
    grouped: dict[str, dict[str, list[str]]] = {}
    for number, fields in tab_rows(file):
        if len(fields) < 3 or fields[-1].strip() not in ("0", "1"):
            raise ValueError(f"{file}:{number}: expected question<TAB>candidate<TAB>label(0/1)")
        query = _text(fields[0], file, number, "question")
        entry = grouped.setdefault(query, {"positive": [], "negative": []})
        entry["positive" if fields[-1].strip() == "1" else "negative"].append(
            _text(fields[1], file, number, "candidate")
        )
    return [{"query": query, **entry} for query, entry in grouped.items()]


@dataclass
class BEIRData:
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, set[str]]
    split: str


def read_beir(folder: str | Path, split: str = "test") -> BEIRData:
    """Read a BEIR folder. The corpus is read by :func:`gte_st.corpus.read_corpus` (ids ``_id``, duplicates refused,
    documents ``title + " " + text`` as BEIR and MTEB embed them); queries need an ``_id`` and a non-empty ``text``
    and are unique too. Only qrels with a score > 0 count as relevant and only queries that have one are kept;
    relevant documents missing from the corpus are kept (as BEIR's evaluation keeps them: they lower recall) and
    reported in a warning with their count."""
    folder = Path(folder)
    corpus_file = next((folder / n for n in ("corpus.jsonl", "corpus.jsonl.gz") if (folder / n).exists()), None)
    qrels_file = folder / "qrels" / f"{split}.tsv"
    if corpus_file is None:
        raise FileNotFoundError(f"{folder}: no corpus.jsonl or corpus.jsonl.gz (expected a BEIR folder)")
    if not qrels_file.exists():
        raise FileNotFoundError(
            f"{folder}: no qrels/{split}.tsv (available: {sorted(p.stem for p in (folder / 'qrels').glob('*.tsv'))})"
        )
    queries_file = next((folder / n for n in ("queries.jsonl", "queries.jsonl.gz") if (folder / n).exists()), None)
    if queries_file is None:
        raise FileNotFoundError(f"{folder}: no queries.jsonl")

    qrels: dict[str, set[str]] = {}
    for number, fields in tab_rows(qrels_file):
        if number == 1 and not _is_float(fields[-1]):
            continue  # header: query-id corpus-id score
        if len(fields) < 3:
            raise ValueError(f"{qrels_file}:{number}: expected query-id<TAB>corpus-id<TAB>score")
        if _float(fields[2], qrels_file, number) > 0:
            qrels.setdefault(fields[0], set()).add(fields[1])
    ids, texts = read_corpus(folder, id_field="_id")
    corpus = dict(zip(ids, (text.strip() for text in texts)))
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, row in json_records(queries_file):
        if row.get("_id") is None:
            raise ValueError(f"{queries_file}:{number}: missing key '_id'")
        qid = str(row["_id"])
        if qid in first_line:
            raise ValueError(f"{queries_file}: duplicate query id {qid!r} on lines {first_line[qid]} and {number}")
        first_line[qid] = number
        if qid in qrels:
            queries[qid] = _text(row.get("text"), queries_file, number, "text")
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        raise ValueError(f"{qrels_file}: {len(missing)} query ids have no text in {queries_file}, e.g. {missing[:3]}")
    judged = [(qid, doc) for qid, docs in qrels.items() for doc in docs]
    nowhere = sorted({doc for _, doc in judged if doc not in corpus})
    if nowhere:
        logger.warning(
            f"{qrels_file}: {sum(doc not in corpus for _, doc in judged)} of {len(judged)} relevance judgements name "
            f"{len(nowhere)} documents that are not in {corpus_file} (e.g. {nowhere[:3]}); they count as relevant "
            "but cannot be retrieved"
        )
    return BEIRData(corpus, queries, qrels, split)
