"""Reading the rows of the files people have: one reader per format family, shared by the training-data loader
(:mod:`gte_st.data`), the corpus reader (:mod:`gte_st.corpus`) and the evaluation readers
(:mod:`gte_st.evaluation.readers`), so that a file reads the same everywhere.

The rules, the same for every caller:

* **Text** is UTF-8; a leading byte-order mark is dropped and ``*.gz`` files are decompressed. A byte that is not
  UTF-8 is reported with the file, its line and its absolute byte offset (in the decompressed text).
* **Lines** end at ``\\n``, ``\\r\\n`` or ``\\r``. Line numbers count every physical line from 1, blank ones too, as
  an editor shows them; a record is numbered by the line it starts on (the header of a CSV / TSV file is line 1).
* **JSON**: a ``.jsonl`` file holds one JSON object per line (blank lines are skipped); a ``.json`` file holds JSON
  Lines as well, or one JSON array of objects, or one (possibly multi-line) object.
* **CSV** (``.csv``): comma-separated with a header row naming the columns, RFC 4180 quoting (a quoted field may
  hold commas, doubled quotes and newlines; a stray quote after a closing one, or a quote never closed, is an
  error). **TSV** (``.tsv``): tab-separated with a header row and no quoting (a quote is an ordinary character),
  the layout of BEIR, MS MARCO and sentence-transformers' files. In both, every row has exactly as many fields as
  the header names columns, and every value is the text it is: ``1990``, ``NA``, ``null`` and an empty field stay
  strings (no type guessing). A field may be as long as a line (the ``csv`` module's 128 KiB field limit is lifted:
  it guards against runaway quotes, which the strict quoting above reports instead).
* **Parquet**: the columns' own types; the row number (from 1) stands in for the line.

Errors a user can fix are :class:`FileFormatError` (a ``ValueError``) whose message starts with ``path:line:``.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gte_st.errors import GteStError

# Suffix (after dropping ``.gz``) -> format family.
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
_BOM = b"\xef\xbb\xbf"

# The csv module refuses fields over 128 KiB by default, as a guard against a quote that is never closed swallowing
# the rest of the file; strict quoting reports that case as an error, so any field that fits in memory is accepted.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class FileFormatError(GteStError, ValueError):
    """A file cannot be read as its format says; the message names the file and line (``path:line: ...``)."""


def file_format(path: str | os.PathLike) -> str | None:
    """The format family of ``path`` from its suffix (``.gz`` ignored): ``json``, ``csv``, ``tsv``, ``parquet``."""
    name = Path(path).name.lower().removesuffix(".gz")
    return next((fmt for suffix, fmt in FORMATS.items() if name.endswith(suffix)), None)


def where(path: str | os.PathLike, line: int) -> str:
    """How a message names a record: ``path:line``, or ``path: row N`` for parquet (which has no lines)."""
    return f"{path}: row {line}" if file_format(path) == "parquet" else f"{path}:{line}"


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _decoded_lines(path: str | os.PathLike) -> Iterator[str]:
    """Every line of a UTF-8 text file, decoded, with its line terminator.

    Lines are split on bytes (``\\n``, then ``\\r`` inside what ``readline`` returns), so a decoding error knows its
    absolute byte offset and line, which a chunked text reader does not."""
    path = Path(path)
    offset = 0
    number = 0
    try:
        with _open_binary(path) as f:
            for chunk in f:
                pieces = chunk.splitlines(keepends=True) if b"\r" in chunk else (chunk,)
                for raw in pieces:
                    number += 1
                    start = 0
                    if number == 1 and raw.startswith(_BOM):
                        start = len(_BOM)
                    try:
                        yield raw[start:].decode("utf-8")
                    except UnicodeDecodeError as exc:
                        byte = offset + start + exc.start
                        gz = " of the decompressed text" if path.name.lower().endswith(".gz") else ""
                        raise FileFormatError(
                            f"{path}:{number}: not UTF-8 text (byte {byte}{gz}: {exc.reason}); re-encode it as UTF-8"
                        ) from None
                    offset += len(raw)
    except FileFormatError:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except (OSError, EOFError, zlib.error) as exc:  # a directory, a corrupt or truncated .gz, a read error
        raise FileFormatError(f"{path}: cannot be read ({exc})") from None


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, line without its terminator) for every line, blank ones included."""
    for number, line in enumerate(_decoded_lines(path), 1):
        yield number, line.rstrip("\r\n")


def tab_rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """(line number, tab-separated fields) of every non-blank line; no quoting. A ``U+FEFF`` (byte-order mark)
    pasted into a field is dropped."""
    for number, line in text_lines(path):
        if line.strip():
            yield number, [field.replace("\ufeff", "") for field in line.split("\t")]


def csv_rows(path: str | os.PathLike, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """(line a row starts on, fields) of every non-blank row of a quoted CSV file (RFC 4180, strict)."""
    counted = _Counted(_decoded_lines(path))
    reader = csv.reader(counted, delimiter=delimiter, strict=True)
    while True:
        start = counted.count + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise FileFormatError(f"{path}:{start}: not valid CSV ({exc}); a field holding a quote, comma or "
                                  'newline must be quoted, with quotes doubled ("a ""b"", c")') from None  # fmt: skip
        if len(row) > 1 or (row and row[0].strip()):  # a blank (or whitespace-only) line is no row
            yield start, row


class _Counted:
    """An iterator over lines that counts them (``csv.reader`` pulls several lines for a multi-line record)."""

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines, self.count = lines, 0

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.count += 1
        return line


def table_records(path: str | os.PathLike, delimiter: str = ",") -> Iterator[tuple[int, dict[str, str]]]:
    """(line, ``{column: text}``) of a CSV (``","``, quoted) or TSV (``"\\t"``, unquoted) file with a header row."""
    rows = csv_rows(path, delimiter) if delimiter == "," else tab_rows(path)
    first = next(rows, None)
    if first is None:
        return
    header_line, header = first
    if delimiter == "," and len(header) == 1 and "\t" in header[0]:
        raise FileFormatError(
            f"{path}:{header_line}: expected a comma-separated file whose first row names the columns, found "
            f"tab-separated fields ({header[0].strip()[:80]!r}); for tab-separated data use a .tsv file with a header "
            "row naming the columns (e.g. anchor<TAB>positive)"
        )
    header = [name.strip() for name in header]
    if len(set(header)) < len(header):
        twice = next(name for name in header if header.count(name) > 1)
        raise FileFormatError(f"{path}:{header_line}: the header names column {twice!r} twice ({header})")
    for line, fields in rows:
        if len(fields) != len(header):
            hint = "; a field holding a comma must be quoted" if delimiter == "," and len(fields) > len(header) else ""
            raise FileFormatError(
                f"{path}:{line}: {len(fields)} fields, but the header (line {header_line}) names {len(header)} "
                f"columns {header}{hint}"
            )
        yield line, dict(zip(header, fields))


def _json_object(value: Any, path: str | os.PathLike, line: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FileFormatError(
            f"{path}:{line}: expected a JSON object ({{...}}), got {type(value).__name__} ({json.dumps(value)[:60]})"
        )
    return value


# A \u escape of a UTF-16 surrogate: valid JSON, but alone (not as half of a pair) it is no character.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _check_text(value: Any, raw: str, path: str | os.PathLike, line: int) -> Any:
    """``value`` parsed from ``raw``, refused if an escape in ``raw`` left a lone surrogate in one of its strings
    (which no UTF-8 file, tokenizer or Arrow table can hold)."""
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise FileFormatError(
                f"{path}:{line}: a \\u escape encodes a lone surrogate, which is not a character; fix the text"
            ) from None
    return value


def _loads(text: str, path: str | os.PathLike, line: int) -> Any:
    """``json.loads`` of ``text`` (which starts on ``line``), with errors naming the file and line."""
    try:
        return _check_text(json.loads(text), text, path, line)
    except json.JSONDecodeError as exc:
        raise FileFormatError(
            f"{path}:{line + exc.lineno - 1}: not valid JSON ({exc.msg}, column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits, nesting deeper than the stack
        raise FileFormatError(f"{path}:{line}: not readable JSON ({exc})") from None


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def json_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) of a JSON Lines file; a ``.json`` file may instead hold one array of objects or one object."""
    path = Path(path)
    whole_file = path.name.lower().removesuffix(".gz").endswith(".json")
    lines = text_lines(path)
    for number, line in lines:
        if not line.strip():
            continue
        if whole_file and (line.lstrip().startswith("[") or not _parses(line)):
            yield from _json_document(path)  # an array, or one object over several lines
            return
        yield number, _json_object(_loads(line, path, number), path, number)
        break
    for number, line in lines:
        if line.strip():
            yield number, _json_object(_loads(line, path, number), path, number)


def _json_document(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The records of a whole-file JSON value: the objects of an array (each numbered by its first line), or one
    object."""
    text = "".join(_decoded_lines(path))
    position = len(text) - len(text.lstrip())
    if not text.startswith("[", position):
        line = text.count("\n", 0, position) + 1
        yield line, _json_object(_loads(text[position:], path, line), path, line)
        return
    decoder = json.JSONDecoder()
    position += 1
    line, counted, records = 1, 0, 0
    while True:
        position = _skip_space(text, position)
        line += text.count("\n", counted, position)
        counted = position
        if text.startswith("]", position) and records == 0:
            position += 1
            break
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise FileFormatError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:
            raise FileFormatError(f"{path}:{line}: not readable JSON ({exc})") from None
        records += 1
        yield line, _json_object(_check_text(value, text[position:end], path, line), path, line)
        position = _skip_space(text, end)
        if text.startswith(",", position):
            position += 1
        elif text.startswith("]", position):
            position += 1
            break
        else:
            line += text.count("\n", counted, position)
            raise FileFormatError(f"{path}:{line}: expected ',' or ']' after an element of the JSON array")
    position = _skip_space(text, position)
    if position < len(text):
        line += text.count("\n", counted, position)
        raise FileFormatError(f"{path}:{line}: more data after the JSON array")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def parquet_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, row) of a parquet file."""
    import pyarrow.parquet as pq

    if not Path(path).exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types for unreadable files
        raise FileFormatError(f"{path}: not a readable parquet file ({exc})") from None
    yield from enumerate(table.to_pylist(), 1)


def as_text(value: Any, where: str) -> str:
    """``value`` as a text to embed: a non-empty string, the rule for every text gte-st embeds or trains on (a number,
    a null or a blank string is refused, never turned into a text). ``where`` starts the error message."""
    if not isinstance(value, str):
        raise FileFormatError(f"{where}: expected a string, got {type(value).__name__} ({value!r:.60})")
    if not value.strip():
        raise FileFormatError(f"{where}: empty text")
    return value


def as_number(value: Any, where: str) -> float:
    """``value`` as a finite number: a number, or the text of one (CSV / TSV values are text); not a boolean, NaN or
    infinity. ``where`` starts the error message."""
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if not math.isfinite(number):
        raise FileFormatError(f"{where}: expected a finite number, got {value!r:.60}")
    return number


def read_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) of a ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` / ``.parquet`` file (``.gz`` allowed), by
    the rules of this module; a record is a dict (column -> value)."""
    fmt = file_format(path)
    if fmt == "json":
        return json_records(path)
    if fmt == "csv":
        return table_records(path, ",")
    if fmt == "tsv":
        return table_records(path, "\t")
    if fmt == "parquet":
        return parquet_records(path)
    raise FileFormatError(f"{path}: unsupported file type; use {', '.join(FORMATS)} (optionally .gz)")


__all__ = [
    "FORMATS",
    "FileFormatError",
    "as_number",
    "as_text",
    "csv_rows",
    "file_format",
    "json_records",
    "parquet_records",
    "read_records",
    "tab_rows",
    "table_records",
    "text_lines",
    "where",
]
