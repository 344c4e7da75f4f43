"""gte_st.training.batching: texts tokenised once give the very batches the model's preprocess gives, and the
length-grouped sampler keeps batches free of repeated texts, covers every row once per epoch, pads less and stays
random."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import stsb_rows
from datasets import Dataset

from gte_st.training.batching import LengthGroupedBatchSampler, TokenCache


@pytest.fixture(scope="module")
def pairs() -> Dataset:
    rows = stsb_rows("train")[:300]
    anchors = [a for _, a, _ in rows]
    positives = [b for _, _, b in rows]
    # texts that repeat across rows (a sentence used by two pairs, as in real data), and long ones
    anchors[10] = anchors[11]
    positives[20] = anchors[30]
    positives[40] = " ".join(positives[40:60])
    return Dataset.from_dict({"anchor": anchors, "positive": positives, "label": [float(i % 5) for i in range(300)]})


def test_cached_tokens_give_the_batches_preprocess_gives(tiny_model, pairs):
    cache = TokenCache(tiny_model)
    cache.add(list(pairs["anchor"]) + list(pairs["positive"]))
    assert cache.enabled and len(cache) == len(set(list(pairs["anchor"]) + list(pairs["positive"])))
    generator = random.Random(0)
    for size in (1, 5, 32):
        texts = generator.sample(list(pairs["positive"]) + list(pairs["anchor"]), size)
        ours, stock = cache.preprocess(texts), tiny_model.preprocess(texts)
        assert set(ours) == {k for k, v in stock.items() if isinstance(v, torch.Tensor)}
        for key, value in ours.items():
            assert value.dtype == stock[key].dtype and torch.equal(value, stock[key]), key
    # a text it has not seen, a prompt, or another model length: the model's own preprocess
    unseen = ["a sentence that was never in the data", pairs["anchor"][0]]
    assert torch.equal(cache.preprocess(unseen)["input_ids"], tiny_model.preprocess(unseen)["input_ids"])
    prompted = cache.preprocess(pairs["anchor"][:3], prompt="query: ")["input_ids"]
    assert torch.equal(prompted, tiny_model.preprocess(pairs["anchor"][:3], prompt="query: ")["input_ids"])
    length = tiny_model.max_seq_length
    try:
        tiny_model.max_seq_length = 8
        assert cache.preprocess([pairs["positive"][40]])["input_ids"].shape[1] == 8
    finally:
        tiny_model.max_seq_length = length
    lengths = cache.row_lengths(pairs)
    expected = [
        len(tiny_model.preprocess([a])["input_ids"][0]) + len(tiny_model.preprocess([p])["input_ids"][0])
        for a, p in zip(pairs["anchor"][:20], pairs["positive"][:20])
    ]
    assert lengths[:20].tolist() == expected


@pytest.mark.parametrize("drop_last", [True, False])
def test_length_grouped_batches_have_no_repeated_text_and_cover_every_row_once(tiny_model, pairs, drop_last):
    cache = TokenCache(tiny_model)
    lengths = cache.row_lengths(pairs)
    sampler = LengthGroupedBatchSampler(pairs, 32, drop_last, ["label"], seed=3, lengths=lengths, window=4)
    batches = list(sampler)
    rows = [row for batch in batches for row in batch]
    assert len(rows) == len(set(rows))  # no row twice in an epoch
    if drop_last:
        assert len(batches) == len(sampler) == 300 // 32 and all(len(b) == 32 for b in batches)
    else:
        assert sorted(rows) == list(range(300)) and len(batches) >= len(sampler)
    for batch in batches:
        texts = [pairs[row][column] for row in batch for column in ("anchor", "positive")]
        assert len(texts) == len(set(texts)), "a text repeats inside a batch"
    # deterministic per (seed, epoch), another order next epoch
    assert list(sampler) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_length_grouping_pads_less_and_keeps_batches_random(tiny_model, pairs):
    cache = TokenCache(tiny_model)
    lengths = cache.row_lengths(pairs)
    random_batches = LengthGroupedBatchSampler(pairs, 16, True, seed=0, lengths=lengths, window=1)
    grouped = LengthGroupedBatchSampler(pairs, 16, True, seed=0, lengths=lengths, window=8)

    def padded_tokens(sampler) -> int:
        return sum(int(lengths[b].max()) * len(b) for b in sampler)

    assert padded_tokens(grouped) < 0.9 * padded_tokens(random_batches)
    # rows of a batch come from across the dataset, not from neighbouring rows; the batch order is shuffled
    spans = [max(b) - min(b) for b in grouped]
    assert np.median(spans) > 100
    firsts = [int(lengths[b].max()) for b in grouped]
    assert firsts != sorted(firsts, reverse=True)
    with pytest.raises(ValueError, match="lengths has"):
        LengthGroupedBatchSampler(pairs, 16, True, lengths=lengths[:-1])


@pytest.mark.parametrize("options", [{}, {"length_grouping": 0, "pretokenize": False}], ids=["defaults", "off"])
def test_the_trainer_uses_the_options(tiny_model, pairs, tmp_path, options):
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    from gte_st.training import GTETrainer, GTETrainingArguments, build_loss

    args = GTETrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=16, use_cpu=True, report_to="none"
    )
    trainer = GTETrainer(
        model=tiny_model, args=args, train_dataset=pairs.remove_columns("label"), loss=build_loss(tiny_model, "mnrl"),
        **options,
    )  # fmt: skip
    loader = trainer.get_train_dataloader()
    sampler = getattr(loader, "batch_sampler", None)
    sampler = getattr(sampler, "batch_sampler", sampler)  # accelerate's shard wrapper, if any
    batch = next(iter(loader))
    if options:
        assert isinstance(sampler, NoDuplicatesBatchSampler)
        assert trainer.data_collator.preprocess_fn == tiny_model.preprocess
    else:
        assert isinstance(sampler, LengthGroupedBatchSampler) and sampler.window == 8
        assert trainer.data_collator.preprocess_fn == trainer.token_cache.preprocess
    assert batch["anchor_input_ids"].shape[0] == 16
