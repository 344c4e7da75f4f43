"""Training data: loading sources, mapping their columns, validating them, and the n^alpha single-source sampler.

A *source* is a local ``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet`` file (``.gz`` allowed) or a directory of such
files, read by :mod:`gte_st.readers` (CSV / TSV values are text as written), or a Hugging Face Hub dataset id loaded
through :mod:`datasets`. Each source becomes a
:class:`datasets.Dataset` with string columns ``anchor``, ``positive`` and optionally ``negative_1`` ...
``negative_k`` (the layout sentence-transformers' in-batch-negative losses expect). Several sources form a
:class:`datasets.DatasetDict`; :class:`AlphaSourceBatchSampler` then draws every batch from one source, chosen with
probability proportional to ``n_i ** alpha`` (GTE's multi-task mixture), identically on every rank.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from sentence_transformers.base.sampler import MultiDatasetDefaultBatchSampler
from torch.utils.data import BatchSampler, ConcatDataset

from gte_st.readers import FORMATS, FileFormatError, as_number, as_text, file_format, read_records, where

logger = logging.getLogger(__name__)

# Default column names, tried in order: sentence-transformers, FlagEmbedding, then common pair layouts.
ANCHOR_COLUMNS = ("anchor", "query", "question", "sentence1", "sentence_A", "text1", "title")
POSITIVE_COLUMNS = ("positive", "pos", "answer", "document", "sentence2", "sentence_B", "text2", "body", "text")
NEGATIVE_COLUMNS = ("negative", "neg", "negatives", "hard_negative", "hard_negatives")
# Teacher scores for distillation: FlagEmbedding's pos_scores/neg_scores lists, kept as one ``label`` list per row
# (positive first, then one score per negative column), which sentence-transformers' collator hands to the loss.
SCORE_COLUMNS = ("pos_scores", "neg_scores")
# Gold scores of scored pairs (STS-style data for CoSENT), tried in order; any scale, only their order matters.
PAIR_SCORE_COLUMNS = ("score", "similarity_score", "similarity", "relatedness_score", "label")


class DataValidationError(ValueError):
    """Raised before training when a source is unusable; the message names the source, column and row."""


@dataclass
class SourceSpec:
    """One training source: ``name`` (used in logs and the summary) and ``location`` (path or Hub id)."""

    name: str
    location: str

    @classmethod
    def parse(cls, spec: str) -> SourceSpec:
        """``"path"``, ``"hub/dataset-id"`` or ``"name=path"``."""
        name, sep, location = spec.partition("=")
        if not sep or "/" in name or not name:
            location, name = spec, ""
        if not name:
            path = Path(location)
            name = path.name.split(".")[0] if path.exists() else location.replace("/", "__")
        return cls(name=name, location=location)


def load_source(location: str, *, split: str = "train", max_rows: int | None = None) -> Dataset:
    """Load one source: a local file or directory read by :mod:`gte_st.readers` (the rules every gte-st reader
    follows: UTF-8, CSV quoting, CSV / TSV values kept as the text they are), or a Hub dataset id through
    :func:`datasets.load_dataset`."""
    source = _load_table(location, split=split, max_rows=max_rows)
    return source if isinstance(source, Dataset) else source.to_dataset()


def _load_table(location: str, *, split: str = "train", max_rows: int | None = None) -> Dataset | _Table:
    """:func:`load_source` before a local source becomes an Arrow table: :func:`prepare_source` validates its plain
    values first (a table cannot hold a text in one row and a number in another, which is what it reports)."""
    from datasets import load_dataset

    path = Path(location).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and file_format(p) is not None)
        if not files:
            raise DataValidationError(
                f"{location}: directory has no .jsonl/.json/.csv/.tsv/.parquet files (looked recursively)."
            )
        formats = {file_format(p) for p in files}
        if len(formats) > 1:
            raise DataValidationError(f"{location}: directory mixes file formats {sorted(formats)}; use one format.")
        return _load_files(files, max_rows)
    if path.is_file() or path.suffix.lower() in FORMATS or path.suffix == ".gz":
        if not path.is_file():
            raise DataValidationError(f"{location}: file not found.")
        if file_format(path) is None:
            raise DataValidationError(
                f"{location}: unsupported file type; use .jsonl, .json, .csv, .tsv or .parquet (optionally .gz)."
            )
        return _load_files([path], max_rows)
    if location.startswith((".", "/", "~")) or location.count("/") > 1:
        raise DataValidationError(f"{location}: file or directory not found.")
    try:
        dataset = load_dataset(location, split=split)
    except Exception as exc:  # the Hub is unreachable, the id is wrong, the split is missing, ...
        raise DataValidationError(
            f"{location}: not a local file or directory, and loading it as a Hub dataset (split {split!r}) failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return dataset.select(range(min(max_rows, len(dataset)))) if max_rows is not None else dataset


@dataclass
class _Table:
    """The records of local files as plain columns (with the file and line of every row), the part of the
    :class:`datasets.Dataset` interface :func:`prepare_source` reads."""

    columns: dict[str, list]
    rows: list[tuple[Path, int]]

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, column: str) -> list:
        return self.columns[column]

    def to_dataset(self) -> Dataset:
        """The table as a :class:`datasets.Dataset`; a column mixing JSON types is an error naming file and line."""
        _check_column_types(self.columns, self.rows)
        try:
            return Dataset.from_dict(self.columns)
        except Exception as exc:  # pyarrow cannot unify nested values (e.g. lists of texts and of numbers)
            files = ", ".join(str(file) for file in dict.fromkeys(file for file, _ in self.rows))
            raise DataValidationError(
                f"{files}: could not be stored as a table: {type(exc).__name__}: {exc}"
            ) from None


def _load_files(files: Sequence[Path], max_rows: int | None) -> _Table:
    """The records of ``files`` (read in order, at most ``max_rows`` in all) as one table."""
    records: list[tuple[Path, int, dict]] = []
    for file in files:
        if max_rows is not None and len(records) >= max_rows:
            break
        count = 0
        try:
            for line, record in read_records(file):
                if max_rows is not None and len(records) >= max_rows:
                    break
                records.append((file, line, record))
                count += 1
        except FileFormatError as exc:
            raise DataValidationError(f"{exc}.") from None
        if count == 0:
            raise DataValidationError(f"{file}: the file is empty (no rows).")
    columns: dict[str, list] = {}
    for row, (_, _, record) in enumerate(records):
        for key in record:
            if key not in columns:
                columns[key] = [None] * row
        for key, values in columns.items():
            values.append(record.get(key))
    return _Table(columns, [(file, line) for file, line, _ in records])


def _kind(value: object) -> str | None:
    """The JSON type of a value (what a column must hold throughout), ``None`` for null."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _check_column_types(columns: dict[str, list], rows: list[tuple[Path, int]]) -> None:
    """Every column holds one JSON type (or null): a table cannot hold a string in one row and a number in
    another. The error names the file, line and column of the first value that differs."""
    for column, values in columns.items():
        first = next(((row, _kind(v)) for row, v in enumerate(values) if v is not None), None)
        if first is None:
            continue
        for row, value in enumerate(values):
            kind = _kind(value)
            if kind is not None and kind != first[1]:
                file, line = rows[row]
                raise DataValidationError(
                    f"{where(file, line)}: column {column!r}: expected a {first[1]} (as in {where(*rows[first[0]])}), "
                    f"got {type(value).__name__} ({value!r:.60})."
                )


def resolve_columns(column_names: Sequence[str], columns: Sequence[str] | None = None) -> tuple[str, str, list[str]]:
    """(anchor, positive, negative columns) of a source: the explicit ``columns`` (source column names in the
    order anchor, positive, negative...) or the first matching default names."""
    names = list(column_names)
    if columns:
        if len(columns) < 2:
            raise DataValidationError(f"columns={list(columns)}: give at least an anchor and a positive column.")
        if missing := [c for c in columns if c not in names]:
            raise DataValidationError(f"unknown column(s) {missing}; the source has columns {names}.")
        return columns[0], columns[1], list(columns[2:])
    anchor = next((c for c in ANCHOR_COLUMNS if c in names), None)
    positive = next((c for c in POSITIVE_COLUMNS if c in names and c != anchor), None)
    if anchor is None or positive is None:
        raise DataValidationError(
            f"cannot tell the anchor/positive columns from {names}; expected e.g. anchor/positive[/negative] "
            "(sentence-transformers) or query/pos/neg (FlagEmbedding), or pass --columns ANCHOR POSITIVE [NEG ...]."
        )
    negatives = [c for c in NEGATIVE_COLUMNS if c in names]
    numbered = sorted(
        (c for c in names if c.startswith("negative_") and c.removeprefix("negative_").isdigit()),
        key=lambda c: int(c.removeprefix("negative_")),
    )
    return anchor, positive, negatives[:1] + numbered


class _Cells:
    """How a message names one value of a source: ``path:line: column 'x'`` for rows read from files (the line a
    user opens in an editor, as the readers' own errors do), ``source: column 'x', row N`` (N 0-based, the
    dataset's own index) for a :class:`datasets.Dataset` such as a saved or Hub dataset."""

    def __init__(self, dataset: Dataset | _Table, source: str) -> None:
        self.rows = dataset.rows if isinstance(dataset, _Table) else None
        self.source = source

    def __call__(self, column: str, row: int) -> str:
        if self.rows is None:
            return f"{self.source}: column {column!r}, row {row}"
        return f"{where(*self.rows[row])}: column {column!r}"


def prepare_source(
    dataset: Dataset | _Table,
    source: str,
    *,
    columns: Sequence[str] | None = None,
    num_negatives: int | None = None,
    scored: bool = False,
) -> Dataset:
    """Validate one loaded source and return it as ``anchor, positive[, negative_1..k]`` string columns (plus a
    ``label`` column of teacher scores when the source has FlagEmbedding's ``pos_scores``/``neg_scores``).

    With ``scored`` (a loss on scored pairs such as CoSENT), the source is ``anchor, positive, label``: the label
    is the pair's gold score, from the third of ``columns`` or the first of :data:`PAIR_SCORE_COLUMNS` present;
    negative columns are not read.

    List-valued columns (FlagEmbedding's ``pos``/``neg``) are flattened: the first positive, the first ``k``
    negatives (``k`` = ``num_negatives``, default the shortest list), and their scores alike. Raises
    :class:`DataValidationError` naming the first bad value's column and where it is (:class:`_Cells`).
    """
    if len(dataset) == 0:
        raise DataValidationError(f"{source}: no rows.")
    try:
        anchor, positive, negatives = resolve_columns(dataset.column_names, columns)
    except DataValidationError as exc:
        raise DataValidationError(f"{source}: {exc}") from None
    cell = _Cells(dataset, source)
    out: dict[str, list[str]] = {}
    out["anchor"] = _string_column(dataset[anchor], cell, anchor, first_only=True)
    out["positive"] = _string_column(dataset[positive], cell, positive, first_only=True)
    if scored:
        score = (
            columns[2]
            if columns and len(columns) > 2
            else next((c for c in PAIR_SCORE_COLUMNS if c in dataset.column_names), None)
        )
        if score is None:
            raise DataValidationError(
                f"{source}: a scored-pair loss needs a score column ({'/'.join(PAIR_SCORE_COLUMNS)}) or --columns "
                f"ANCHOR POSITIVE SCORE; the source has columns {dataset.column_names}."
            )
        out["label"] = [_finite_number(v, cell, score, row) for row, v in enumerate(dataset[score])]
        return Dataset.from_dict(out)
    if num_negatives != 0:
        negative_lists: list[list[str]] = [[] for _ in range(len(dataset))]
        for column in negatives:
            values = dataset[column]
            for row, value in enumerate(values):
                items = value if isinstance(value, list) else [value]
                for item in items:
                    _check_string(item, cell, column, row)
                negative_lists[row].extend(items)
        if negatives:
            k = min(len(n) for n in negative_lists)
            if num_negatives is not None:
                if k < num_negatives:
                    row = next(i for i, n in enumerate(negative_lists) if len(n) < num_negatives)
                    raise DataValidationError(
                        f"{cell(negatives[0], row)}: {len(negative_lists[row])} negative(s), "
                        f"but num_negatives={num_negatives}."
                    )
                k = num_negatives
            if k == 0:
                row = next(i for i, n in enumerate(negative_lists) if not n)
                raise DataValidationError(
                    f"{cell(negatives[0], row)}: empty negatives list; fix the row or pass "
                    "--num_negatives 0 to train on pairs only."
                )
            for i in range(k):
                out[f"negative_{i + 1}"] = [n[i] for n in negative_lists]
        elif num_negatives:
            raise DataValidationError(
                f"{source}: num_negatives={num_negatives} but no negative column in {dataset.column_names}."
            )
    if SCORE_COLUMNS[0] in dataset.column_names:
        out["label"] = _teacher_scores(dataset, source, cell, sum(c.startswith("negative_") for c in out))
    return Dataset.from_dict(out)


def _teacher_scores(dataset: Dataset | _Table, source: str, cell: _Cells, num_negatives: int) -> list[list[float]]:
    """Per row ``[pos_scores[0], neg_scores[0..k-1]]``, checked to be finite numbers, one per kept text column."""
    pos_column, neg_column = SCORE_COLUMNS
    if num_negatives and neg_column not in dataset.column_names:
        raise DataValidationError(f"{source}: column {pos_column!r} without {neg_column!r} for the negatives.")
    negatives = dataset[neg_column] if num_negatives else [[] for _ in range(len(dataset))]
    scores = []
    for row, (positive, negative) in enumerate(zip(dataset[pos_column], negatives)):
        values = [positive[0] if isinstance(positive, list) and positive else positive]
        negative = negative if isinstance(negative, list) else [negative]
        if len(negative) < num_negatives:
            raise DataValidationError(
                f"{cell(neg_column, row)}: {len(negative)} score(s) for {num_negatives} negatives."
            )
        values += negative[:num_negatives]
        columns = [pos_column] + [neg_column] * num_negatives
        scores.append([_finite_number(value, cell, column, row) for column, value in zip(columns, values)])
    return scores


def _finite_number(value: object, cell: _Cells, column: str, row: int) -> float:
    try:
        return as_number(value, cell(column, row))
    except FileFormatError as exc:
        raise DataValidationError(f"{exc}.") from None


def _check_string(value: object, cell: _Cells, column: str, row: int) -> None:
    try:
        as_text(value, cell(column, row))
    except FileFormatError as exc:
        raise DataValidationError(f"{exc}.") from None


def _string_column(values: list[object], cell: _Cells, column: str, *, first_only: bool) -> list[str]:
    out = []
    for row, value in enumerate(values):
        if isinstance(value, list) and first_only:
            if not value:
                raise DataValidationError(f"{cell(column, row)}: empty list.")
            value = value[0]
        _check_string(value, cell, column, row)
        out.append(value)
    return out


def load_training_data(
    specs: Sequence[str],
    *,
    columns: Sequence[str] | None = None,
    num_negatives: int | None = None,
    split: str = "train",
    max_rows: int | None = None,
    min_rows: int = 1,
    scored: bool = False,
) -> DatasetDict:
    """Load, map and validate every source; returns a :class:`DatasetDict` keyed by source name.

    ``scored``: every source is a scored pair source (``anchor, positive, label``; see :func:`prepare_source`).

    ``min_rows`` is the smallest acceptable source (one global batch): smaller sources are an error.
    """
    data: dict[str, Dataset] = {}
    for spec in specs:
        source = SourceSpec.parse(spec)
        if source.name in data:
            raise DataValidationError(f"{spec}: two sources are named {source.name!r}; name them with NAME=PATH.")
        dataset = _load_table(source.location, split=split, max_rows=max_rows)
        data[source.name] = prepare_source(
            dataset, source.location, columns=columns, num_negatives=num_negatives, scored=scored
        )
    return validate_sizes(DatasetDict(data), min_rows=min_rows, locations={SourceSpec.parse(s).name: s for s in specs})


def validate_sizes(data: DatasetDict, *, min_rows: int, locations: dict[str, str] | None = None) -> DatasetDict:
    """Every source must hold at least one (global) batch, since each batch is drawn from a single source."""
    for name, dataset in data.items():
        if len(dataset) < min_rows:
            where = (locations or {}).get(name, name)
            raise DataValidationError(
                f"{where}: {len(dataset)} rows, fewer than one global batch ({min_rows} rows); lower the batch size "
                "or merge this source with another."
            )
    return data


def sampling_probabilities(
    sizes: Sequence[int], alpha: float = 0.5, replay: Sequence[bool] | None = None, replay_share: float = 0.0
) -> list[float]:
    """GTE's multi-source mixture, with an optional share of batches kept for replay sources.

    Without replay: p_i = n_i^alpha / sum_j n_j^alpha over all sources (alpha=1: proportional, 0: uniform). With
    replay sources R (``replay[i]`` true) and share s: the stage's own sources D share 1 - s and the replay sources
    share s, each group split by the same rule,

        p_i = (1 - s) n_i^alpha / sum_{j in D} n_j^alpha  (i in D),    p_i = s n_i^alpha / sum_{j in R} n_j^alpha  (i in R),

    so the replay share does not depend on how large the replay data are (general data sets are often far larger
    than the domain's) and the domain's own mixture is the one it would have without replay.

    Computed in log space (a softmax of ``alpha * log n_i``), so any finite ``alpha`` gives finite probabilities: a
    large one puts (nearly) all the mass on the largest source of each group instead of overflowing."""
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    flags = [False] * len(sizes) if replay is None else [bool(r) for r in replay]
    if len(flags) != len(sizes):
        raise ValueError(f"replay flags {list(flags)} do not match the {len(sizes)} sources")
    if any(flags):
        if not (math.isfinite(replay_share) and 0 < replay_share < 1):
            raise ValueError(f"replay_share must lie strictly between 0 and 1, got {replay_share}")
        if all(flags):
            raise ValueError("every source is a replay source; a stage needs data of its own besides replay")
    groups = [(False, 1 - replay_share if any(flags) else 1.0), (True, replay_share)]
    probabilities = [0.0] * len(sizes)
    for flag, share in groups:
        members = [i for i, f in enumerate(flags) if f == flag]
        if not members:
            continue
        logits = [alpha * math.log(sizes[i]) if sizes[i] > 0 else -math.inf for i in members]
        top = max(logits)
        if top == -math.inf:
            what = "replay" if flag else "training"
            raise ValueError(
                f"every {what} source is empty (sizes {[sizes[i] for i in members]}); nothing to sample from."
            )
        weights = [math.exp(logit - top) for logit in logits]
        for i, weight in zip(members, weights):
            probabilities[i] = share * weight / sum(weights)
    return probabilities


class AlphaSourceBatchSampler(MultiDatasetDefaultBatchSampler):
    """Draws each batch from a single source, chosen with probability proportional to ``n_i ** alpha`` (with replay
    sources: a fixed share of the batches for them, see :func:`sampling_probabilities`).

    Under data parallelism accelerate hands batch ``i`` of this sampler to rank ``i % world_size``; the sampler
    therefore draws sources for whole groups of ``world_size`` consecutive batches, so that at every step all ranks
    train on the same source. The sequence is a pure function of ``seed`` and the epoch, so every rank (and a resumed
    run) sees the same batches. An epoch has as many batches as the sources hold together; a source exhausted before
    the epoch ends is reshuffled and drawn again (small sources are up-sampled when ``alpha < 1``). Replay sources
    do not lengthen the epoch: it holds the batches of the stage's own sources plus the replay share on top
    (``own / (1 - replay_share)`` batches), so an epoch still means one pass over the stage's own data.

    Args:
        dataset: The :class:`~torch.utils.data.ConcatDataset` of the sources.
        batch_samplers: One batch sampler per source (e.g. sentence-transformers' ``NoDuplicatesBatchSampler``).
        generator, seed: As in sentence-transformers' multi-dataset samplers.
        alpha: The mixture exponent.
        world_size: Number of data-parallel ranks (batches per step).
        replay: Per source, whether it is a replay source (default: none is).
        replay_share: The share of batches drawn from the replay sources.
    """

    def __init__(
        self,
        dataset: ConcatDataset,
        batch_samplers: list[BatchSampler],
        generator: torch.Generator | None = None,
        seed: int = 0,
        alpha: float = 0.5,
        world_size: int = 1,
        replay: Sequence[bool] | None = None,
        replay_share: float = 0.0,
    ) -> None:
        super().__init__(dataset, batch_samplers, generator=generator, seed=seed)
        self.alpha = alpha
        self.world_size = max(1, world_size)
        self.replay = [False] * len(batch_samplers) if replay is None else [bool(r) for r in replay]
        self.replay_share = replay_share if any(self.replay) else 0.0
        self.probabilities = sampling_probabilities(
            [len(d) for d in dataset.datasets], alpha, self.replay, self.replay_share
        )

    def source_sequence(self) -> list[int]:
        """The source index of every batch of the current epoch."""
        generator = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + self.epoch)
        groups = len(self) // self.world_size
        draws = torch.multinomial(torch.tensor(self.probabilities), groups, replacement=True, generator=generator)
        return [int(source) for source in draws for _ in range(self.world_size)]

    def __iter__(self) -> Iterator[list[int]]:
        offsets = [0] + list(accumulate(len(d) for d in self.dataset.datasets))
        iterators: list[Iterator[list[int]] | None] = [None] * len(self.batch_samplers)
        restarts = [0] * len(self.batch_samplers)
        sequence = self.source_sequence()
        for start in range(0, len(sequence), self.world_size):
            source = sequence[start]
            sampler = self.batch_samplers[source]
            group: list[list[int]] = []
            for _ in range(3):  # a group never straddles two passes over a source: the ranks' rows stay disjoint
                if iterators[source] is None:
                    if restarts[source] and hasattr(sampler, "set_epoch"):
                        sampler.set_epoch(self.epoch + 7919 * restarts[source])
                    iterators[source] = iter(sampler)
                while len(group) < self.world_size and (batch := next(iterators[source], None)) is not None:
                    group.append(batch)
                if len(group) == self.world_size:
                    break
                group, iterators[source] = [], None
                restarts[source] += 1
            if len(group) < self.world_size:
                raise RuntimeError(f"source {source} cannot fill {self.world_size} batches; is it too small?")
            for batch in group:
                yield [index + offsets[source] for index in batch]
        for source, sampler in enumerate(self.batch_samplers):
            if restarts[source] and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)

    def __len__(self) -> int:
        own = sum(len(sampler) for sampler, replay in zip(self.batch_samplers, self.replay) if not replay)
        total = round(own / (1 - self.replay_share))
        return max(self.world_size, total - total % self.world_size)


__all__ = [
    "AlphaSourceBatchSampler",
    "DataValidationError",
    "SourceSpec",
    "load_source",
    "load_training_data",
    "prepare_source",
    "resolve_columns",
    "sampling_probabilities",
    "validate_sizes",
]
