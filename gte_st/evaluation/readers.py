"""Readers for the evaluation data layouts people already have on disk.

Every reader takes a file (or a folder plus a split) and returns plain Python lists; the layout is detected from the
file name, extension and first line, and an unreadable row raises a ``ValueError`` naming the file and line.

* pairs with a gold score (STS): STS-B ``sts-<split>.csv`` (tab-separated, no header: genre, file, year, id, score,
  sentence1, sentence2[, ...]), the sentence-transformers ``stsbenchmark.tsv.gz`` (header with ``split``), SICK
  (``pair_ID  sentence_A  sentence_B  relatedness_score ...``, or the full SICK.txt with ``SemEval_set``), jsonl with
  ``sentence1``/``sentence2``/``score``, csv with a ``sentence1,sentence2,score`` (or ``label``) header, and plain
  ``[id<TAB>]s1<TAB>s2<TAB>score`` files (STS-B-zh's ``.data``; LCQMC, BQ and ATEC read as STS, 0/1 labels as scores);
* labelled pairs (pair classification): MRPC (``Quality  #1 ID  #2 ID  #1 String  #2 String``), csv/tsv with a
  ``sentence1,sentence2,label`` header (BQ), jsonl with those keys, plain ``[id<TAB>]s1<TAB>s2<TAB>label`` (LCQMC, and
  ATEC's tab-separated ``.csv``);
* labelled texts (classification, clustering): csv/tsv with a header naming a text column (``text``, ``sentence``,
  ``subject``, ``title``) and a label column (``label``, ``category``) and optionally ``split``; jsonl with those keys;
* reranking: WikiQA (``question<TAB>candidate<TAB>label``) or jsonl ``{"query", "positive": [...], "negative": [...]}``;
* retrieval: a BEIR folder (``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gte_st.files import open_text

TEXT_COLUMNS = ("text", "sentence", "subject", "title", "content")
LABEL_COLUMNS = ("label", "category", "labels", "class")
SPLIT_ALIASES = {"dev": ("dev", "valid", "validation", "trial"), "test": ("test",), "train": ("train",)}


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, tab-separated fields) for each non-empty line; no quoting (STS-B, SICK, WikiQA, MRPC)."""
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, [field.replace("\ufeff", "") for field in line.split("\t")]


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not valid JSON ({e})") from None


def _comma_separated(file: Path) -> bool:
    """Whether a ``.csv`` file is really comma-separated: its first line has no tab (ATEC's ``.csv`` is tab-separated
    ``id, s1, s2, label`` without a header)."""
    if not file.name.lower().removesuffix(".gz").endswith(".csv"):
        return False
    with open_text(file) as f:
        first = next((line for line in f if line.strip()), "")
    return "\t" not in first


def _csv_pairs(file: Path, score_columns: tuple[str, ...]) -> tuple[list[str], list[str], list[str]]:
    """(sentences1, sentences2, raw scores) of a comma-separated file with a ``sentence1,sentence2,<score>`` header,
    the score from the first of ``score_columns`` present."""
    s1: list[str] = []
    s2: list[str] = []
    values: list[str] = []
    with open_text(file) as f:
        reader = csv.DictReader(f)
        header = [name.strip().lower() for name in reader.fieldnames or []]
        score = next((reader.fieldnames[header.index(c)] for c in score_columns if c in header), None)
        if "sentence1" not in header or "sentence2" not in header or score is None:
            raise ValueError(
                f"{file}:1: need a header naming sentence1, sentence2 and one of {', '.join(score_columns)}; "
                f"found {reader.fieldnames}"
            )
        a, b = reader.fieldnames[header.index("sentence1")], reader.fieldnames[header.index("sentence2")]
        for number, row in enumerate(reader, start=2):
            if row.get(a) is None or row.get(b) is None or row.get(score) in (None, ""):
                raise ValueError(f"{file}:{number}: need columns sentence1, sentence2, {score}")
            s1.append(row[a])
            s2.append(row[b])
            values.append(row[score])
    return s1, s2, values


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _split_matches(value: str, split: str) -> bool:
    return value.strip().lower() in SPLIT_ALIASES.get(split, (split,))


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
    if name.endswith((".jsonl", ".jsonl.gz")):
        for number, row in _jsonl(file):
            if split and "split" in row and not _split_matches(str(row["split"]), split):
                continue
            score = row.get("score", row.get("label"))
            missing = [key for key in ("sentence1", "sentence2") if key not in row] + ["score"] * (score is None)
            if missing:
                raise ValueError(f"{file}:{number}: missing key {missing[0]!r} (need sentence1, sentence2, score)")
            s1.append(row["sentence1"])
            s2.append(row["sentence2"])
            scores.append(float(score))
        return ScoredPairs(s1, s2, scores, split or "test")

    if _comma_separated(file):  # sentence1,sentence2,score|label (BQ read as STS: the 0/1 labels are the scores)
        s1, s2, values = _csv_pairs(file, ("score", "label", "similarity"))
        scores = [_float(value, file, number) for number, value in enumerate(values, start=2)]
        inferred = next((k for k, v in SPLIT_ALIASES.items() if any(a in name for a in v)), None)
        return ScoredPairs(s1, s2, scores, split or inferred or "test")
    rows = _lines(file)
    first_number, first = next(rows, (0, []))
    lowered = [field.strip().lower() for field in first]
    if "sentence_a" in lowered and "relatedness_score" in lowered:  # SICK
        ia, ib, isc = lowered.index("sentence_a"), lowered.index("sentence_b"), lowered.index("relatedness_score")
        iset = lowered.index("semeval_set") if "semeval_set" in lowered else None
        for number, fields in rows:
            if iset is not None and split and not _split_matches(fields[iset], split):
                continue
            s1.append(fields[ia])
            s2.append(fields[ib])
            scores.append(_float(fields[isc], file, number))
        inferred = next((k for k, v in SPLIT_ALIASES.items() if any(a in name for a in v)), None)
        return ScoredPairs(s1, s2, scores, split or inferred or "test")
    if "sentence1" in lowered and "score" in lowered:  # header layout, e.g. stsbenchmark.tsv.gz
        ia, ib, isc = lowered.index("sentence1"), lowered.index("sentence2"), lowered.index("score")
        isplit = lowered.index("split") if "split" in lowered else None
        wanted = split or ("test" if isplit is not None else None)
        for number, fields in rows:
            if isplit is not None and wanted and not _split_matches(fields[isplit], wanted):
                continue
            s1.append(fields[ia])
            s2.append(fields[ib])
            scores.append(_float(fields[isc], file, number))
        return ScoredPairs(s1, s2, scores, wanted or "test")

    for number, fields in [(first_number, first), *rows]:
        if len(fields) >= 7 and _is_float(fields[4]):  # STS-B original release
            score, a, b = fields[4], fields[5], fields[6]
        elif len(fields) == 3 and _is_float(fields[2]):  # s1 \t s2 \t score
            a, b, score = fields
        elif len(fields) == 4 and _is_float(fields[3]):  # id \t s1 \t s2 \t score (ATEC)
            a, b, score = fields[1:]
        else:
            raise ValueError(
                f"{file}:{number}: unrecognised STS row with {len(fields)} tab-separated fields; expected the STS-B "
                "layout (score in column 5, sentences in 6-7), SICK, [id<TAB>]s1<TAB>s2<TAB>score, "
                "sentence1,sentence2,score csv, or jsonl"
            )
        s1.append(a)
        s2.append(b)
        scores.append(_float(score, file, number))
    inferred = next((k for k, v in SPLIT_ALIASES.items() if any(a in name for a in v)), None)
    return ScoredPairs(s1, s2, scores, split or inferred or "test")


def _float(value: str, file: Path, number: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{file}:{number}: expected a number, got {value!r}") from None


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
    name = file.name.lower()
    inferred = next((k for k, v in SPLIT_ALIASES.items() if any(a in name for a in v)), None)
    if name.endswith((".jsonl", ".jsonl.gz")):
        for number, row in _jsonl(file):
            try:
                s1.append(row["sentence1"])
                s2.append(row["sentence2"])
                labels.append(int(row["label"]))
            except (KeyError, ValueError) as e:
                raise ValueError(f"{file}:{number}: need sentence1, sentence2 and an integer label ({e})") from None
        return LabelledPairs(s1, s2, labels, split or inferred or "test")
    if _comma_separated(file):
        s1, s2, values = _csv_pairs(file, ("label",))
        for number, value in enumerate(values, start=2):
            try:
                labels.append(int(value))
            except ValueError:
                raise ValueError(f"{file}:{number}: expected an integer label, got {value!r}") from None
        return LabelledPairs(s1, s2, labels, split or inferred or "test")
    rows = list(_lines(file))
    lowered = [field.strip().lower() for field in rows[0][1]] if rows else []
    if lowered and lowered[0] == "quality":  # MRPC
        for number, fields in rows[1:]:
            if len(fields) < 5:
                raise ValueError(f"{file}:{number}: expected 5 tab-separated MRPC fields, got {len(fields)}")
            labels.append(int(fields[0]))
            s1.append(fields[3])
            s2.append(fields[4])
    else:
        for number, fields in rows:
            if len(fields) >= 3 and fields[-1].strip() in ("0", "1"):  # [id \t] s1 \t s2 \t label
                s1.append(fields[-3])
                s2.append(fields[-2])
                labels.append(int(fields[-1]))
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
    """Read texts with class labels (csv/tsv with a header, or jsonl). With a ``split`` column and a ``split``
    argument, only that split's rows are kept; without a split argument every row is returned with its split."""
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{file} does not exist")
    records: list[dict] = []
    if file.name.lower().endswith((".jsonl", ".jsonl.gz")):
        records = [row for _, row in _jsonl(file)]
    else:
        with open_text(file) as f:
            delimiter = "\t" if ".tsv" in file.name.lower() or ".txt" in file.name.lower() else ","
            quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
            records = list(csv.DictReader(f, delimiter=delimiter, quoting=quoting))
    if not records:
        raise ValueError(f"{file}: no rows")
    keys = {key.strip().lower(): key for key in records[0]}
    text_key = next((keys[c] for c in TEXT_COLUMNS if c in keys), None)
    label_key = next((keys[c] for c in LABEL_COLUMNS if c in keys), None)
    if text_key is None or label_key is None:
        raise ValueError(
            f"{file}: need a text column (one of {TEXT_COLUMNS}) and a label column (one of {LABEL_COLUMNS}); "
            f"found {list(records[0])}"
        )
    split_key = keys.get("split")
    texts, labels, splits = [], [], []
    for number, row in enumerate(records, start=2):
        if split_key and split and not _split_matches(str(row[split_key]), split):
            continue
        if row.get(text_key) is None or row.get(label_key) is None:
            raise ValueError(f"{file}: row {number} lacks {text_key!r} or {label_key!r}")
        texts.append(str(row[text_key]))
        labels.append(str(row[label_key]))
        if split_key:
            splits.append(str(row[split_key]).strip().lower())
    if not texts:
        raise ValueError(f"{file}: no rows for split {split!r}")
    return LabelledTexts(texts, labels, splits if split_key else None)


def read_reranking(path: str | Path, split: str | None = None) -> list[dict[str, str | list[str]]]:
    """Read reranking samples ``{"query", "positive": [...], "negative": [...]}`` from WikiQA-style
    ``question<TAB>candidate<TAB>label`` files (grouped by question, in order of appearance) or jsonl."""
    file = _resolve_file(Path(path), split, ("*-{split}.txt", "*{split}*.tsv", "*{split}*.jsonl"))
    if file.name.lower().endswith((".jsonl", ".jsonl.gz")):
        samples = []
        for number, row in _jsonl(file):
            if not {"query", "positive", "negative"} <= set(row):
                raise ValueError(f"{file}:{number}: need keys query, positive, negative")
            samples.append({"query": row["query"], "positive": row["positive"], "negative": row["negative"]})
        return samples
    grouped: dict[str, dict[str, list[str]]] = {}
    for number, fields in _lines(file):
        if len(fields) < 3 or fields[-1].strip() not in ("0", "1"):
            raise ValueError(f"{file}:{number}: expected question<TAB>candidate<TAB>label(0/1)")
        entry = grouped.setdefault(fields[0], {"positive": [], "negative": []})
        entry["positive" if fields[-1].strip() == "1" else "negative"].append(fields[1])
    return [{"query": query, **entry} for query, entry in grouped.items()]


@dataclass
class BEIRData:
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, set[str]]
    split: str


def read_beir(folder: str | Path, split: str = "test") -> BEIRData:
    """Read a BEIR folder. Documents are ``title + " " + text`` (stripped), as BEIR and MTEB embed them; only
    qrels with a score > 0 count as relevant and only queries that have one are kept."""
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
    with open_text(qrels_file) as f:
        for number, line in enumerate(f, start=1):
            fields = line.rstrip("\r\n").split("\t")
            if number == 1 and not _is_float(fields[-1]):
                continue  # header: query-id corpus-id score
            if len(fields) < 3:
                raise ValueError(f"{qrels_file}:{number}: expected query-id<TAB>corpus-id<TAB>score")
            if float(fields[2]) > 0:
                qrels.setdefault(fields[0], set()).add(fields[1])
    corpus = {
        str(row["_id"]): (str(row.get("title") or "") + " " + str(row.get("text") or "")).strip()
        for _, row in _jsonl(corpus_file)
    }
    queries = {str(row["_id"]): str(row["text"]) for _, row in _jsonl(queries_file) if str(row["_id"]) in qrels}
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        raise ValueError(f"{qrels_file}: {len(missing)} query ids have no text in {queries_file}, e.g. {missing[:3]}")
    return BEIRData(corpus, queries, qrels, split)
