"""Reading a corpus of documents (ids and texts) from the files people have: jsonl / csv / tsv / parquet / txt, or a
BEIR folder. Used by ``gte-st index``, ``dedup`` and ``cluster``."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gte_st.errors import GteStError
from gte_st.files import open_text

ID_FIELDS = ("_id", "id", "doc_id", "docid", "pid")
TEXT_FIELDS = ("text", "sentence", "content", "body", "passage", "document")
CORPUS_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")


class CorpusError(GteStError, ValueError):
    """The corpus cannot be used (unreadable, empty, duplicate ids, missing text); the message names file and row."""


def pick_field(fields: Sequence[str], wanted: str | None, candidates: Sequence[str]) -> str | None:
    """``wanted`` when given, else the first of ``candidates`` present in ``fields``."""
    if wanted is not None:
        return wanted
    return next((name for name in candidates if name in fields), None)


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row number, record) of a jsonl / csv / tsv / parquet / txt file; row numbers count data rows from 1."""
    name = path.name.lower().removesuffix(".gz")
    try:
        if name.endswith((".jsonl", ".json")):
            with open_text(path) as f:
                for number, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield number, json.loads(line)
                        except json.JSONDecodeError as exc:
                            raise CorpusError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
        elif name.endswith((".csv", ".tsv")):
            delimiter = "\t" if name.endswith(".tsv") else ","
            with open_text(path) as f:
                header = f.readline()
                if delimiter == "," and "\t" in header and "," not in header:
                    raise CorpusError(
                        f"{path}: expected a comma-separated file with a header row, found tab-separated fields "
                        f"({header.strip()[:60]!r}); rename it to .tsv (with a header row) or convert it"
                    )
                f.seek(0)
                for number, row in enumerate(csv.DictReader(f, delimiter=delimiter), 1):
                    yield number, row
        elif name.endswith(".parquet"):
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as exc:  # pyarrow raises its own error types for unreadable files
                raise CorpusError(f"{path}: not a readable parquet file ({exc})") from None
            yield from enumerate(table.to_pylist(), 1)
        elif name.endswith(".txt"):
            with open_text(path) as f:
                for number, line in enumerate(f, 1):
                    if line.strip():
                        yield number, {"id": str(number), "text": line.rstrip("\r\n")}
        else:
            raise CorpusError(f"{path}: unsupported corpus format; use {', '.join(CORPUS_SUFFIXES)} or a BEIR folder")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); re-encode it as UTF-8") from None
    except (EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorpusError(f"{path}: cannot be read ({exc})") from None


def resolve_corpus_file(path: str | Path) -> Path:
    """The corpus file of ``path``: the file itself, or ``corpus.jsonl[.gz]`` of a BEIR folder."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in ("corpus.jsonl", "corpus.jsonl.gz") if (path / name).is_file()]
        if not found:
            raise CorpusError(f"{path} is a folder without corpus.jsonl / corpus.jsonl.gz (not a BEIR folder)")
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    if not path.name.lower().removesuffix(".gz").endswith(CORPUS_SUFFIXES):
        raise CorpusError(f"{path}: unsupported corpus format; use {', '.join(CORPUS_SUFFIXES)} or a BEIR folder")
    return path


def read_corpus(
    path: str | Path, *, id_field: str | None = None, text_field: str | None = None, title_field: str | None = "title"
) -> tuple[list[str], list[str]]:
    """Read (ids, texts) from a jsonl / csv / tsv / parquet / txt file or a BEIR folder (``corpus.jsonl[.gz]``).

    The id field defaults to the first of ``_id, id, doc_id, docid, pid`` present (row numbers when none is);
    the text field to the first of ``text, sentence, content, body, passage, document``. A non-empty
    ``title_field`` is prepended to the text (``"title text"``), as BEIR evaluations do.

    Raises:
        CorpusError: unreadable file, empty corpus, duplicate ids, or a row without text (naming the file and row).
    """
    path = resolve_corpus_file(path)
    ids: list[str] = []
    texts: list[str] = []
    first_row: dict[str, int] = {}
    id_key = text_key = None
    for number, record in _rows(path):
        if not isinstance(record, dict):
            raise CorpusError(f"{path}: row {number} is not an object")
        if text_key is None:
            id_key = pick_field(list(record), id_field, ID_FIELDS)
            text_key = pick_field(list(record), text_field, TEXT_FIELDS)
            if text_key is None:
                raise CorpusError(
                    f"{path}: row {number} has no text field (fields: {sorted(record)}); pass --text-field"
                )
        text = record.get(text_key)
        if text is None or not isinstance(text, str):
            if text is None:
                raise CorpusError(f"{path}: row {number}: missing text field {text_key!r} (fields: {sorted(record)})")
            raise CorpusError(
                f"{path}: row {number}: text field {text_key!r} is a {type(text).__name__}, not a string"
            )
        title = record.get(title_field) if title_field else None
        if isinstance(title, str) and title.strip():
            text = f"{title.strip()} {text}"
        if id_key is None:
            doc_id = str(number)
        else:
            if record.get(id_key) is None:
                raise CorpusError(f"{path}: row {number}: missing id field {id_key!r}")
            doc_id = str(record[id_key])
        if doc_id in first_row:
            raise CorpusError(f"{path}: duplicate id {doc_id!r} in rows {first_row[doc_id]} and {number}")
        first_row[doc_id] = number
        ids.append(doc_id)
        texts.append(text)
    if not ids:
        raise CorpusError(f"{path}: empty corpus (no rows)")
    return ids, texts


def check_corpus(ids: list[str], texts: list[str]) -> None:
    """The same rules for an in-memory corpus: non-empty, as many texts as ids, unique ids."""
    if not ids:
        raise CorpusError("empty corpus (no documents)")
    if len(ids) != len(texts):
        raise CorpusError(f"{len(ids)} ids but {len(texts)} texts")
    seen: dict[str, int] = {}
    for row, doc_id in enumerate(ids, 1):
        if doc_id in seen:
            raise CorpusError(f"duplicate id {doc_id!r} in rows {seen[doc_id]} and {row}")
        seen[doc_id] = row


__all__ = ["CorpusError", "ID_FIELDS", "TEXT_FIELDS", "check_corpus", "pick_field", "read_corpus"]
