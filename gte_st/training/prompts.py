"""``--prompts``: the prompts a stage trains with, checked before any data is read, given to every text column, and
saved in the model as the ``query`` / ``document`` prompts it is served with.

A model serves one query prompt and one document prompt (sentence-transformers' ``encode_query`` /
``encode_document``, and gte-st's ``eval`` retrieval sides, ``index`` and ``search``), so a stage trains with one
prompt for its anchors and one for its documents: ``--prompts`` is a single string (every column) or a mapping of the
training columns ``anchor``, ``positive``, ``negative`` / ``negative_<i>`` to prompts, where the negatives -- documents
-- take the positive's prompt unless given the same one explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

ANCHOR, POSITIVE, NEGATIVE = "anchor", "positive", "negative"
NEGATIVE_COLUMN = re.compile(r"negative(_\d+)?")
# The names under which a model's config_sentence_transformers.json holds its prompts (sentence-transformers').
QUERY_PROMPT, DOCUMENT_PROMPT = "query", "document"


def check_prompts(prompts: Any, *, where: str = "") -> dict[str, str] | None:
    """``--prompts`` as a mapping of training columns to prompts (``None``: no prompts), or a ``ValueError`` naming
    what is wrong: a per-source (nested) mapping, a key no training column has, a prompt that is not a string, or
    negatives prompted unlike the positive."""
    prefix = f"{where}: " if where else ""
    if prompts is None or prompts == "" or prompts == {}:
        return None
    if isinstance(prompts, str):
        return {ANCHOR: prompts, POSITIVE: prompts, NEGATIVE: prompts}
    if not isinstance(prompts, dict):
        raise ValueError(f"{prefix}--prompts must be a string or a mapping of columns to prompts, got {prompts!r}")
    for key, value in prompts.items():
        if isinstance(value, dict):
            raise ValueError(
                f"{prefix}--prompts {key!r}: per-source prompts are not supported; a model serves one query and one "
                "document prompt, so give one mapping of columns to prompts for the stage"
            )
        if key not in (ANCHOR, POSITIVE) and not NEGATIVE_COLUMN.fullmatch(str(key)):
            hint = (
                " (the saved model calls them 'query' and 'document')"
                if key in (QUERY_PROMPT, DOCUMENT_PROMPT)
                else ""
            )
            raise ValueError(
                f"{prefix}--prompts key {key!r} is no training column; the columns are anchor, positive and "
                f"negative_1..k ('negative' for all of them){hint}"
            )
        if not isinstance(value, str):
            raise ValueError(f"{prefix}--prompts {key!r} must be a string, got {value!r}")
    document = prompts.get(POSITIVE, "")
    if differing := sorted(k for k in prompts if NEGATIVE_COLUMN.fullmatch(str(k)) and prompts[k] != document):
        raise ValueError(
            f"{prefix}--prompts {differing}: negatives are documents and are served with the document prompt; give "
            f"them the positive's prompt {document!r} or leave them out"
        )
    return {ANCHOR: prompts.get(ANCHOR, ""), POSITIVE: document, NEGATIVE: document}


def column_prompts(prompts: dict[str, str] | None, columns: Iterable[str]) -> dict[str, str] | None:
    """The prompt of each text column of a source (``negative_<i>`` take the negative/document prompt), as
    sentence-transformers' data collator reads them; columns without a prompt are left out."""
    if prompts is None:
        return None
    out = {}
    for column in columns:
        key = NEGATIVE if NEGATIVE_COLUMN.fullmatch(column) else column
        if prompts.get(key):
            out[column] = prompts[key]
    return out


def served_prompts(prompts: dict[str, str] | None) -> dict[str, str]:
    """The ``query`` / ``document`` prompts a model trained with ``prompts`` is saved with (empty without)."""
    if prompts is None:
        return {}
    return {QUERY_PROMPT: prompts[ANCHOR], DOCUMENT_PROMPT: prompts[POSITIVE]}


__all__ = ["DOCUMENT_PROMPT", "QUERY_PROMPT", "check_prompts", "column_prompts", "served_prompts"]
