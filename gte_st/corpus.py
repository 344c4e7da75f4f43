"""Reading a corpus of documents (ids and texts) from the files people have: jsonl / json / csv / tsv / parquet / txt,
or a BEIR folder. The one corpus reader: used by ``gte-st index``, ``dedup``, ``cluster`` and the retrieval
evaluation (:func:`gte_st.evaluation.readers.read_beir`), so a corpus has one rule everywhere (e.g. duplicate ids are
an error)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gte_st.errors import GteStError
from gte_st.readers import FileFormatError, file_format, read_records, text_lines

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
    """(row, record) of a corpus file: :func:`gte_st.readers.read_records`, plus ``.txt`` (one document per
    non-blank line, its line number as id). The row is the line the record starts on (a CSV header is row 1), or the
    parquet row from 1."""
    if path.name.lower().removesuffix(".gz").endswith(".txt"):
        for number, line in text_lines(path):
            if line.strip():
                yield number, {"id": str(number), "text": line}
        return
    if file_format(path) is None:
        raise CorpusError(f"{path}: unsupported corpus format; use {', '.join(CORPUS_SUFFIXES)} or a BEIR folder")
    yield from read_records(path)


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
    """Read (ids, texts) from a jsonl / json / csv / tsv / parquet / txt file or a BEIR folder (``corpus.jsonl[.gz]``),
    read by the rules of :mod:`gte_st.readers` (CSV / TSV values are text as written: no type guessing). This is the
    one corpus reader: ``gte-st index``, ``dedup``, ``cluster`` and the retrieval evaluation all read through it.

    The id field defaults to ``_id`` in a BEIR folder, else to the first of ``_id, id, doc_id, docid, pid`` present
    in the first row (row numbers when none is); the text field to the first of ``text, sentence, content, body,
    passage, document``. An id is a string or an integer. A non-empty ``title_field`` is prepended to the text
    (``"title text"``), as BEIR evaluations do. Rows are numbered by the line they start on (a CSV header is row 1), or
    from 1 in a parquet file.

    Raises:
        CorpusError: unreadable file, empty corpus, duplicate ids (naming the id and both rows), or a row without
            text or id (naming the file and row).
    """
    if id_field is None and Path(path).is_dir():
        id_field = "_id"  # BEIR's corpus.jsonl names its ids "_id"; a row without one is an error, not a row number
    path = resolve_corpus_file(path)
    ids: list[str] = []
    texts: list[str] = []
    first_row: dict[str, int] = {}
    id_key = text_key = None
    try:
        for number, record in _rows(path):
            if text_key is None:
                id_key = pick_field(list(record), id_field, ID_FIELDS)
                text_key = pick_field(list(record), text_field, TEXT_FIELDS)
                if text_key is None:
                    raise CorpusError(
                        f"{path}: row {number} has no text field (fields: {sorted(record)}); pass --text-field"
                    )
            text = record.get(text_key)
            if not isinstance(text, str):
                if text is None:
                    raise CorpusError(
                        f"{path}: row {number}: missing text field {text_key!r} (fields: {sorted(record)})"
                    )
                raise CorpusError(
                    f"{path}: row {number}: text field {text_key!r} is a {type(text).__name__}, not a string"
                )
            title = record.get(title_field) if title_field else None
            if isinstance(title, str) and title.strip():
                text = f"{title.strip()} {text}"
            doc_id = str(number) if id_key is None else _doc_id(record.get(id_key), id_key, path, number)
            if doc_id in first_row:
                raise CorpusError(f"{path}: duplicate id {doc_id!r} in rows {first_row[doc_id]} and {number}")
            first_row[doc_id] = number
            ids.append(doc_id)
            texts.append(text)
    except FileFormatError as exc:
        raise CorpusError(str(exc)) from None
    if not ids:
        raise CorpusError(f"{path}: empty corpus (no rows)")
    return ids, texts


def _doc_id(value: Any, key: str, path: Path, number: int) -> str:
    if value is None:
        raise CorpusError(f"{path}: row {number}: missing id field {key!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CorpusError(
            f"{path}: row {number}: id field {key!r} is a {type(value).__name__}, not a string or an integer"
        )
    if not str(value).strip():
        raise CorpusError(f"{path}: row {number}: empty id in field {key!r}")
    return str(value)


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
