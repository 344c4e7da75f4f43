"""Batches for training: every text tokenised once per dataset, and length-grouped batches without duplicates.

:class:`TokenCache` tokenises every text of the training sources once, before the first step, with the model's own
``preprocess`` (so the ids are exactly those it would produce), and keeps them unpadded; its :meth:`TokenCache.
preprocess` then builds each batch by padding the cached ids -- the same tensors ``model.preprocess`` returns for the
batch, without tokenising the texts again at every step (and every epoch).

:class:`LengthGroupedBatchSampler` cuts a shuffled epoch into batches of rows of similar token length, so that a
batch is padded to little more than its own texts: each epoch is a random permutation, split into windows of
``window`` batches; the rows of a window are ordered by their token count and cut into batches; the batches are then
shuffled. A batch is thereby a random sample of ``window * batch_size`` random rows, narrowed by length -- its
in-batch negatives stay random, not near-duplicates -- and, like sentence-transformers' ``NoDuplicatesBatchSampler``,
no text appears twice in a batch (a row that would repeat a text of the batch is deferred to a later one). Every row
is used once per epoch (but for the rows of an incomplete last batch with ``drop_last``).

Example::

    from gte_st.training.batching import LengthGroupedBatchSampler, TokenCache

    cache = TokenCache(model)
    cache.add(dataset["anchor"] + dataset["positive"])
    lengths = cache.row_lengths(dataset, ["anchor", "positive"])
    sampler = LengthGroupedBatchSampler(dataset, batch_size=32, drop_last=True, lengths=lengths, window=8)
    features = cache.preprocess(["a text", "another text"])   # == model.preprocess([...])
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from sentence_transformers.base.sampler import DefaultBatchSampler

logger = logging.getLogger(__name__)

# gte-st's training defaults (``gte-st train --length_grouping`` / ``--pretokenize``; measured in
# scripts/bench_train_throughput.py, docs/benchmarks.md).
DEFAULT_LENGTH_GROUPING = 8
DEFAULT_PRETOKENIZE = True
# Columns of a training dataset that hold no text to embed.
NON_TEXT_COLUMNS = ("label", "labels", "score", "scores", "dataset_name")


def text_columns(dataset: Any) -> list[str]:
    """The columns of ``dataset`` that hold texts (sentence-transformers' collator embeds every other column)."""
    return [c for c in dataset.column_names if c not in NON_TEXT_COLUMNS]


class TokenCache:
    """Each distinct text tokenised once by ``model.preprocess`` (in chunks of ``chunk`` texts), its ids kept unpadded
    in flat int arrays; :meth:`preprocess` pads the cached ids of a batch into the tensors ``model.preprocess``
    would return. Texts not in the cache, prompts and tasks go to ``model.preprocess`` itself.

    Only right-padding tokenizers whose outputs are ``input_ids`` plus per-token int tensors are cached (BERT, GTE,
    ModernBERT, XLM-R...); for any other :attr:`enabled` is ``False`` and every call goes to ``model.preprocess``."""

    def __init__(self, model: Any, chunk: int = 256) -> None:
        self.model = model
        self.chunk = chunk
        tokenizer = getattr(model, "tokenizer", None)
        self.enabled = tokenizer is not None and getattr(tokenizer, "padding_side", "right") == "right"
        self.pad_values: dict[str, int] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.index: dict[str, int] = {}  # text -> row of the arrays below
        self._starts: list[int] = []
        self._lengths: list[int] = []
        self._chunks: dict[str, list[np.ndarray]] = {}
        self._flat: dict[str, np.ndarray] = {}
        self.max_seq_length = model.max_seq_length

    def __len__(self) -> int:
        return len(self.index)

    def add(self, texts: Sequence[str]) -> None:
        """Tokenise the texts not yet cached (``model.preprocess``, chunk by chunk)."""
        if not self.enabled:
            return
        new = list(dict.fromkeys(t for t in texts if isinstance(t, str) and t not in self.index))
        offset = sum(self._lengths)
        for start in range(0, len(new), self.chunk):
            batch = new[start : start + self.chunk]
            features = self.model.preprocess(batch)
            mask = features.get("attention_mask")
            keys = [k for k, v in features.items() if isinstance(v, torch.Tensor) and v.dim() == 2]
            if mask is None or "input_ids" not in keys or any(features[k].shape != mask.shape for k in keys):
                self.enabled = False  # not a plain (ids, mask, ...) tokenizer: leave every batch to preprocess
                return
            if not self.pad_values:
                self.pad_values = {key: self._pad_value(key) for key in keys}
                self.dtypes = {key: features[key].dtype for key in keys}
            elif set(keys) != set(self.pad_values):
                self.enabled = False
                return
            lengths = mask.sum(dim=1).tolist()
            for key in keys:
                values = features[key]
                # ids in int32, masks and token types in int8: a quarter / an eighth of int64's memory
                storage = np.int32 if key == "input_ids" or int(values.abs().max()) > 127 else np.int8
                self._chunks.setdefault(key, []).append(
                    np.concatenate([values[row, :length].numpy() for row, length in enumerate(lengths)]).astype(
                        storage
                    )
                )
            for text, length in zip(batch, lengths):
                self.index[text] = len(self._lengths)
                self._starts.append(offset)
                self._lengths.append(int(length))
                offset += int(length)
        self._flat = {}

    def _pad_value(self, key: str) -> int:
        tokenizer = self.model.tokenizer
        if key == "input_ids":
            return int(tokenizer.pad_token_id or 0)
        if key == "token_type_ids":
            return int(getattr(tokenizer, "pad_token_type_id", 0) or 0)
        return 0

    def _arrays(self) -> dict[str, np.ndarray]:
        if not self._flat:
            self._flat = {
                key: np.concatenate([part.astype(np.int32) for part in parts]) if len({p.dtype for p in parts}) > 1
                else np.concatenate(parts)
                for key, parts in self._chunks.items()
            }  # fmt: skip
        return self._flat

    def lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Token counts (special tokens included, truncated at the model's length) of cached texts."""
        return np.array([self._lengths[self.index[t]] for t in texts], dtype=np.int64)

    def row_lengths(self, dataset: Any, columns: Sequence[str] | None = None) -> np.ndarray:
        """Per row of ``dataset``, the token count of its texts in ``columns`` (default: every text column)
        together; the texts are cached first."""
        columns = list(columns or text_columns(dataset))
        total = np.zeros(len(dataset), dtype=np.int64)
        for column in columns:
            values = list(dataset[column])
            self.add(values)
            if not self.enabled:
                return np.array([sum(len(str(v)) for v in row) for row in zip(*(list(dataset[c]) for c in columns))])
            total += self.lengths(values)
        return total

    def preprocess(self, texts: Sequence[str], prompt: str | None = None, task: str | None = None, **kwargs: Any):
        """``model.preprocess(texts, ...)``, from the cache when every text is in it, no prompt or task applies and
        the model's length is still the one the texts were cut at."""
        usable = (
            self.enabled
            and prompt is None
            and task is None
            and not kwargs
            and self.model.max_seq_length == self.max_seq_length
            and all(isinstance(t, str) and t in self.index for t in texts)
        )
        if not usable:
            call = {"prompt": prompt, **({"task": task} if task is not None else {}), **kwargs}
            return self.model.preprocess(list(texts), **call)
        rows = [self.index[t] for t in texts]
        lengths = [self._lengths[r] for r in rows]
        width = max(lengths)
        arrays = self._arrays()
        features = {}
        for key, flat in arrays.items():
            out = np.full((len(rows), width), self.pad_values[key], dtype=flat.dtype)
            for i, (row, length) in enumerate(zip(rows, lengths)):
                start = self._starts[row]
                out[i, :length] = flat[start : start + length]
            features[key] = torch.from_numpy(out).to(self.dtypes[key])
        return features


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """Batches of rows of similar token length, without a repeated text inside a batch (see the module docstring).

    Args:
        dataset: The (single-source) dataset.
        batch_size, drop_last, valid_label_columns, generator, seed: As sentence-transformers' batch samplers.
        lengths: Token count of each row (e.g. :meth:`TokenCache.row_lengths`).
        window: Batches per window whose rows are ordered by length (1: random batches, like
            ``NoDuplicatesBatchSampler``; larger: less padding, batches drawn from fewer lengths).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        *,
        lengths: Sequence[int],
        window: int = 8,
    ) -> None:
        super().__init__(
            dataset, batch_size=batch_size, drop_last=drop_last, valid_label_columns=valid_label_columns,
            generator=generator, seed=seed,
        )  # fmt: skip
        if len(lengths) != len(dataset):
            raise ValueError(f"lengths has {len(lengths)} entries for a dataset of {len(dataset)} rows")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.window = window
        columns = [c for c in text_columns(dataset) if c not in (valid_label_columns or [])]
        # one set of hashed values per row: the texts that must not repeat inside a batch
        self.values = (
            [frozenset(map(hash, row)) for row in zip(*(list(dataset[c]) for c in columns))] if columns else []
        )

    def _order(self, generator: torch.Generator) -> np.ndarray:
        """A random permutation whose windows of ``window * batch_size`` rows are each sorted by length."""
        permutation = torch.randperm(len(self.lengths), generator=generator).numpy()
        size = self.window * self.batch_size
        parts = []
        for start in range(0, len(permutation), size):
            part = permutation[start : start + size]
            parts.append(part[np.argsort(-self.lengths[part], kind="stable")])
        return np.concatenate(parts) if parts else permutation

    def _batches(self, order: np.ndarray) -> list[list[int]]:
        """Greedy no-duplicates batches over ``order``: a row whose texts are already in the batch being filled waits
        for the next batch, which takes the waiting rows first; every row lands in exactly one batch (the last ones
        may be incomplete)."""
        batches: list[list[int]] = []
        waiting: list[int] = []
        position, total = 0, len(order)
        while position < total or waiting:
            batch: list[int] = []
            seen: set[int] = set()
            still: list[int] = []
            candidates = iter(waiting)
            while len(batch) < self.batch_size:
                row = next(candidates, None)
                if row is None:
                    if position == total:
                        break
                    row, position = int(order[position]), position + 1
                values = self.values[row] if self.values else frozenset()
                if seen.isdisjoint(values):
                    batch.append(row)
                    seen.update(values)
                else:
                    still.append(row)
            waiting = still + list(candidates)  # the waiting rows not offered yet keep their turn
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(int(self.seed) + int(self.epoch))
        batches = self._batches(self._order(generator))
        full = [b for b in batches if len(b) == self.batch_size]
        tail = [] if self.drop_last else [b for b in batches if len(b) < self.batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        if len(shuffled) < len(self) - len(tail) and self.drop_last:
            logger.warning(
                f"LengthGroupedBatchSampler: only {len(shuffled)} of {len(self)} batches without duplicates; the "
                "dataset repeats too many texts for this batch size"
            )
        yield from shuffled
        yield from tail

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.lengths) // self.batch_size
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


__all__ = [
    "DEFAULT_LENGTH_GROUPING",
    "DEFAULT_PRETOKENIZE",
    "LengthGroupedBatchSampler",
    "TokenCache",
    "text_columns",
]
