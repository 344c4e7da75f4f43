"""The embedded offline default data: weak (summary -> documentation) pairs mined from Python sources.

Each documented function or class of a Python source gives one GTE-style pair:

- ``anchor``: the docstring's summary line (a short natural-language "title"),
- ``positive``: the qualified name, the signature and the rest of the docstring (the "body"; text + code).

The summary line is removed from the positive so the pair is not a trivial copy. Source files are read with
:mod:`ast` (nothing is imported or executed). Files are assigned to the train or held-out split by a stable hash of
their path relative to their root, so no file contributes to both; the held-out split is a small retrieval task
(queries = summaries, corpus = bodies) for the before/after nDCG@10 of the default job.

The default job reads the pairs **shipped with the package** (:data:`DEFAULT_PAIRS_FILE`, :func:`default_pairs`),
mined once by ``scripts/build_default_pairs.py`` from the standard library and gte-st's dependencies at the versions
its ``NOTICE`` names. Mining at run time made the job's training pairs *and* its held-out queries depend on the
installed versions (a new huggingface_hub release changed a quarter of the held-out set, and so the job's printed
figure); the shipped file gives every machine the same data, whatever it has installed.
:func:`mine_docstring_pairs` stays for building that file and for mining other sources.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import re
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from gte_st.readers import FileFormatError, json_records

logger = logging.getLogger(__name__)

# Packages whose sources scripts/build_default_pairs.py mines (gte-st's own dependencies, beside the standard library).
# torch and transformers are left out: parsing their ~5k files takes over a minute on 2 cores.
DEFAULT_PACKAGES = (
    "sentence_transformers",
    "datasets",
    "accelerate",
    "huggingface_hub",
    "numpy",
    "sklearn",
    "tqdm",
)

_MIN_SUMMARY_WORDS = 4
_MIN_BODY_WORDS = 8
_MAX_BODY_CHARS = 1200


@dataclass(frozen=True)
class DocPair:
    """One mined pair; ``source`` is the file it came from (relative to its root)."""

    anchor: str
    positive: str
    source: str


def source_roots(packages: tuple[str, ...] = DEFAULT_PACKAGES) -> list[tuple[str, Path]]:
    """(name, directory) of the standard library and of each installed package in ``packages`` (missing ones are
    skipped)."""
    import importlib.util

    roots = [("stdlib", Path(sysconfig.get_paths()["stdlib"]))]
    for name in packages:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            roots.append((name, Path(next(iter(spec.submodule_search_locations)))))
    return roots


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _signature(node: ast.AST) -> str:
    if isinstance(node, ast.ClassDef):
        bases = ", ".join(ast.unparse(base) for base in node.bases)
        return f"class {node.name}({bases})" if bases else f"class {node.name}"
    assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    args = ast.unparse(node.args)
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"def {node.name}({args}){returns}"


def pairs_from_source(code: str, module: str, source: str) -> Iterator[DocPair]:
    """Mine pairs from one Python source text (``module`` prefixes the qualified names)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return

    def visit(node: ast.AST, prefix: str) -> Iterator[DocPair]:
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            qualname = f"{prefix}.{child.name}"
            if not child.name.startswith("_"):
                pair = _pair(child, qualname, source)
                if pair is not None:
                    yield pair
            if isinstance(child, ast.ClassDef):
                yield from visit(child, qualname)

    yield from visit(tree, module)


def _pair(node: ast.AST, qualname: str, source: str) -> DocPair | None:
    doc = ast.get_docstring(node, clean=True)
    if not doc:
        return None
    paragraphs = doc.split("\n\n", 1)
    summary = _clean(paragraphs[0])
    body = _clean(paragraphs[1]) if len(paragraphs) > 1 else ""
    if len(summary.split()) < _MIN_SUMMARY_WORDS or len(body.split()) < _MIN_BODY_WORDS:
        return None
    if len(summary) > 300 or ">>>" in summary:
        return None
    try:
        signature = _signature(node)
    except Exception:  # ast.unparse can fail on exotic nodes
        return None
    positive = f"{qualname}: {signature}\n{body}"[:_MAX_BODY_CHARS]
    return DocPair(anchor=summary, positive=positive, source=source)


def _is_held_out(source: str, held_out_fraction: float) -> bool:
    digest = hashlib.sha1(source.encode("utf8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < held_out_fraction


def mine_docstring_pairs(
    packages: tuple[str, ...] = DEFAULT_PACKAGES,
    *,
    held_out_fraction: float = 0.1,
    max_files_per_root: int | None = None,
) -> dict[str, list[DocPair]]:
    """Mine (summary, documentation) pairs from the standard library and the installed ``packages``.

    Returns ``{"train": [...], "test": [...]}``, deterministic for a given Python installation. Pairs whose summary
    line repeats (e.g. the same docstring on several overloads) are kept once, in the first split they were seen in;
    test rows whose summary or positive also appears in train are dropped so the held-out split is clean.
    """
    splits: dict[str, list[DocPair]] = {"train": [], "test": []}
    seen: set[str] = set()
    for root_name, root in source_roots(packages):
        files = sorted(p for p in root.rglob("*.py") if "test" not in p.relative_to(root).as_posix().lower())
        if root_name == "stdlib":
            files = [p for p in files if "site-packages" not in p.parts and "idlelib" not in p.parts]
        for path in files[:max_files_per_root]:
            rel = f"{root_name}/{path.relative_to(root).as_posix()}"
            module = ".".join(
                ([] if root_name == "stdlib" else [root_name]) + list(path.relative_to(root).with_suffix("").parts)
            ).removesuffix(".__init__")
            try:
                code = path.read_text(encoding="utf8")
            except (OSError, UnicodeDecodeError):
                continue
            split = "test" if _is_held_out(rel, held_out_fraction) else "train"
            for pair in pairs_from_source(code, module, rel):
                key = pair.anchor.lower()
                if key in seen:
                    continue
                seen.add(key)
                splits[split].append(pair)
    train_texts = {p.positive for p in splits["train"]}
    splits["test"] = [p for p in splits["test"] if p.positive not in train_texts]
    logger.info(
        f"mined {len(splits['train'])} train / {len(splits['test'])} held-out docstring pairs "
        f"(Python {sys.version_info.major}.{sys.version_info.minor})"
    )
    return splits


# The pairs the default job trains and evaluates on, shipped with the package (scripts/build_default_pairs.py wrote
# it; the NOTICE beside it names the sources, their versions and licences).
DEFAULT_PAIRS_FILE = Path(__file__).with_name("default_pairs") / "docstring_pairs.jsonl.gz"
_SPLITS = ("train", "test")


def write_docstring_pairs(splits: dict[str, list[DocPair]], path: str | Path) -> bytes:
    """The bytes of a gzipped JSON Lines file of ``splits`` (one ``{"split", "anchor", "positive", "source"}`` object
    per pair, in order), written to ``path`` and returned. Byte-identical for the same pairs (no timestamp in the
    gzip header), so a rebuild from the same sources changes nothing in git."""
    import gzip
    import json

    from gte_st.files import atomic_write_bytes

    lines = [
        json.dumps({"split": split, **asdict(pair)}, ensure_ascii=False, sort_keys=True)
        for split in _SPLITS
        for pair in splits[split]
    ]
    data = gzip.compress(("\n".join(lines) + "\n").encode("utf8"), compresslevel=9, mtime=0)
    atomic_write_bytes(path, data)
    return data


def read_docstring_pairs(path: str | Path = DEFAULT_PAIRS_FILE) -> dict[str, list[DocPair]]:
    """``{"train": [...], "test": [...]}`` from a file :func:`write_docstring_pairs` wrote (``.jsonl`` or
    ``.jsonl.gz``). A row without a known ``split`` or without text ``anchor`` / ``positive`` / ``source`` is a
    :class:`~gte_st.readers.FileFormatError` naming the file and line."""
    splits: dict[str, list[DocPair]] = {split: [] for split in _SPLITS}
    for line, record in json_records(path):
        split = record.get("split")
        if split not in splits:
            raise FileFormatError(f"{path}:{line}: 'split' must be one of {list(_SPLITS)}, got {split!r}")
        fields = {name: record.get(name) for name in ("anchor", "positive", "source")}
        missing = [name for name, value in fields.items() if not isinstance(value, str) or not value]
        if missing:
            raise FileFormatError(f"{path}:{line}: needs text in {missing}")
        splits[split].append(DocPair(**fields))
    return splits


def default_pairs() -> dict[str, list[DocPair]]:
    """The default job's pairs: :func:`read_docstring_pairs` of the shipped :data:`DEFAULT_PAIRS_FILE`."""
    splits = read_docstring_pairs(DEFAULT_PAIRS_FILE)
    logger.info(
        f"read {len(splits['train'])} train / {len(splits['test'])} held-out docstring pairs from {DEFAULT_PAIRS_FILE}"
    )
    return splits


# Held-out queries the default job evaluates on: enough for a stable nDCG@10 while the before/after evaluation takes
# seconds on two cores.
HELD_OUT_QUERIES = 200


def default_datasets(
    *, max_train: int | None = None, max_test: int | None = 400, seed: int = 42
) -> tuple[dict[str, object], dict[str, object]]:
    """The default job's data as ``datasets.Dataset`` objects.

    Returns ``(train, held_out)``: ``train`` maps a source name to a Dataset with ``anchor``/``positive`` columns;
    ``held_out`` maps ``"test"`` and ``"dev"`` to ``{"queries": {qid: text}, "corpus": {did: text}, "relevant_docs":
    {qid: {did}}}`` over the held-out files, ready for
    :class:`~sentence_transformers.sentence_transformer.evaluation.InformationRetrievalEvaluator`. Both share the
    corpus, every held-out body (the distractors); ``test`` queries are a seeded sample of ``max_test`` of them (the
    ones the default job reports), ``dev`` queries every other held-out pair (``None``: every pair is ``test``), so
    that a choice made on ``dev`` (``--wise_ft auto``) never looks at the reported queries.
    """
    import random

    from datasets import Dataset

    splits = default_pairs()
    rng = random.Random(seed)
    train_pairs = list(splits["train"])
    rng.shuffle(train_pairs)
    if max_train is not None:
        train_pairs = train_pairs[:max_train]
    # Two sources: prose-only standard library vs. the ML packages, sampled by n^alpha like GTE's mixture.
    by_source: dict[str, list[DocPair]] = {"stdlib-docstrings": [], "packages-docstrings": []}
    for pair in train_pairs:
        by_source["stdlib-docstrings" if pair.source.startswith("stdlib/") else "packages-docstrings"].append(pair)
    train = {
        name: Dataset.from_dict({"anchor": [p.anchor for p in pairs], "positive": [p.positive for p in pairs]})
        for name, pairs in by_source.items()
        if pairs
    }

    test = list(splits["test"])
    corpus = {f"d{i}": pair.positive for i, pair in enumerate(test)}
    query_ids = list(range(len(test)))
    rng.shuffle(query_ids)
    reported = set(query_ids[:max_test] if max_test is not None else query_ids)
    held_out = {
        split: {
            "queries": {f"q{i}": test[i].anchor for i in ids},
            "corpus": corpus,
            "relevant_docs": {f"q{i}": {f"d{i}"} for i in ids},
        }
        for split, ids in (("test", sorted(reported)), ("dev", sorted(set(range(len(test))) - reported)))
    }
    return train, held_out


__all__ = [
    "DEFAULT_PACKAGES",
    "DEFAULT_PAIRS_FILE",
    "DocPair",
    "default_datasets",
    "default_pairs",
    "mine_docstring_pairs",
    "pairs_from_source",
    "read_docstring_pairs",
    "write_docstring_pairs",
]
