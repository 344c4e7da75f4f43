"""Data sources, column mapping, validation errors and the n^alpha single-source batch sampler."""

from __future__ import annotations

import csv
import hashlib
import json
from itertools import accumulate
from pathlib import Path

import pytest
import torch
from conftest import stsb_rows
from datasets import Dataset
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler
from torch.utils.data import ConcatDataset

from gte_st.data import (
    AlphaSourceBatchSampler,
    DataValidationError,
    load_source,
    load_training_data,
    prepare_source,
    resolve_columns,
    sampling_probabilities,
)


def _pairs(start: int, count: int) -> list[tuple[str, str]]:
    return [(s1, s2) for _, s1, s2 in stsb_rows("train")[start : start + count]]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf8")
    return path


def source_of(batch: list[int], sizes: list[int]) -> int:
    ends = list(accumulate(sizes))
    owners = {next(i for i, end in enumerate(ends) if index < end) for index in batch}
    assert len(owners) == 1, f"batch mixes sources {owners}"
    return owners.pop()


def test_resolve_columns_defaults_and_explicit():
    assert resolve_columns(["anchor", "positive", "negative"]) == ("anchor", "positive", ["negative"])
    assert resolve_columns(["query", "pos", "neg"]) == ("query", "pos", ["neg"])
    assert resolve_columns(["anchor", "positive", "negative_2", "negative_1"]) == (
        "anchor",
        "positive",
        ["negative_1", "negative_2"],
    )
    assert resolve_columns(["q", "d", "x"], ["q", "d"]) == ("q", "d", [])
    with pytest.raises(DataValidationError, match=r"unknown column\(s\) \['nope'\]"):
        resolve_columns(["q", "d"], ["q", "nope"])
    with pytest.raises(DataValidationError, match="cannot tell the anchor/positive columns"):
        resolve_columns(["foo", "bar"])


def test_file_formats_and_flagembedding_lists(tmp_path):
    pairs = _pairs(0, 20)
    _write_jsonl(
        tmp_path / "fe.jsonl", [{"query": a, "pos": [b], "neg": [pairs[-1][0], pairs[-2][0]]} for a, b in pairs]
    )
    with open(tmp_path / "st.tsv", "w", encoding="utf8") as f:
        f.write("anchor\tpositive\n" + "".join(f"{a}\t{b}\n" for a, b in pairs))
    with open(tmp_path / "st.csv", "w", encoding="utf8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer"])
        writer.writerows(pairs)
    Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [b for _, b in pairs]}).to_parquet(
        tmp_path / "st.parquet"
    )

    fe = prepare_source(load_source(str(tmp_path / "fe.jsonl")), "fe.jsonl")
    assert fe.column_names == ["anchor", "positive", "negative_1", "negative_2"]
    assert fe[0] == {
        "anchor": pairs[0][0],
        "positive": pairs[0][1],
        "negative_1": pairs[-1][0],
        "negative_2": pairs[-2][0],
    }
    one_negative = prepare_source(load_source(str(tmp_path / "fe.jsonl")), "fe.jsonl", num_negatives=1)
    assert one_negative.column_names == ["anchor", "positive", "negative_1"]
    for name in ("st.tsv", "st.csv", "st.parquet"):
        dataset = prepare_source(load_source(str(tmp_path / name)), name)
        assert dataset.column_names == ["anchor", "positive"]
        assert dataset["anchor"] == [a for a, _ in pairs]

    folder = tmp_path / "folder"
    folder.mkdir()
    _write_jsonl(folder / "part1.jsonl", [{"anchor": a, "positive": b} for a, b in pairs[:5]])
    _write_jsonl(folder / "part2.jsonl", [{"anchor": a, "positive": b} for a, b in pairs[5:]])
    data = load_training_data([f"mine={folder}", str(tmp_path / "st.tsv")], min_rows=4)
    assert {name: len(d) for name, d in data.items()} == {"mine": 20, "st": 20}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"anchor": "a b c", "positive": "d e f"}, {"anchor": "", "positive": "x"}],
            r"bad\.jsonl:2: column 'anchor': empty",
        ),
        ([{"anchor": "a b", "positive": 3}], r"bad\.jsonl:1: column 'positive': expected a string, got int"),
        (
            [{"query": "a", "pos": ["b"], "neg": ["c"]}, {"query": "a", "pos": ["b"], "neg": []}],
            r"bad\.jsonl:2: column 'neg': empty",
        ),
        ([{"query": "a", "pos": [], "neg": ["c"]}], r"bad\.jsonl:1: column 'pos': empty list"),
        ([{"foo": "a", "bar": "b"}], r"bad\.jsonl: cannot tell the anchor/positive columns"),
    ],
)
def test_validation_errors_name_file_column_row(tmp_path, rows, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataValidationError, match=message) as info:
        load_training_data([str(path)])
    assert "bad.jsonl" in str(info.value)


def test_missing_unsupported_and_too_small_sources(tmp_path):
    with pytest.raises(DataValidationError, match=r"missing\.jsonl: file not found"):
        load_training_data([str(tmp_path / "missing.jsonl")])
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(DataValidationError, match="unsupported file type"):
        load_training_data([str(tmp_path / "notes.txt")])
    small = _write_jsonl(tmp_path / "small.jsonl", [{"anchor": a, "positive": b} for a, b in _pairs(0, 5)])
    with pytest.raises(DataValidationError, match=r"small\.jsonl: 5 rows, fewer than one global batch \(8 rows\)"):
        load_training_data([str(small)], min_rows=8)


def test_sampling_probabilities():
    assert sampling_probabilities([100, 400], 0.5) == pytest.approx([1 / 3, 2 / 3])
    assert sampling_probabilities([100, 400], 1.0) == pytest.approx([0.2, 0.8])
    assert sampling_probabilities([100, 400], 0.0) == pytest.approx([0.5, 0.5])


def test_sampling_probabilities_with_replay_keep_the_replay_share():
    # own sources 100 and 400 share 0.8 by n^0.5 (1:2); replay sources 900 and 100 share 0.2 by n^0.5 (3:1)
    p = sampling_probabilities([100, 400, 900, 100], 0.5, replay=[False, False, True, True], replay_share=0.2)
    assert p == pytest.approx([0.8 / 3, 1.6 / 3, 0.15, 0.05])
    # the share does not depend on how large the replay data are
    big = sampling_probabilities([100, 400, 90_000], 0.5, replay=[False, False, True], replay_share=0.2)
    assert big == pytest.approx([0.8 / 3, 1.6 / 3, 0.2])
    # without replay sources the share is not used
    assert sampling_probabilities([100, 400], 0.5, [False, False], 0.2) == pytest.approx([1 / 3, 2 / 3])
    for share in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="replay_share must lie strictly between 0 and 1"):
            sampling_probabilities([100, 400], 0.5, [False, True], share)
    with pytest.raises(ValueError, match="every source is a replay source"):
        sampling_probabilities([100, 400], 0.5, [True, True], 0.2)


def _sampler(
    sizes: list[int],
    batch_size: int,
    alpha: float,
    world_size: int = 1,
    seed: int = 7,
    replay: list[bool] | None = None,
    replay_share: float = 0.0,
):
    rows = stsb_rows("train")
    datasets, start = [], 0
    for size in sizes:
        chunk = rows[start : start + size]
        datasets.append(Dataset.from_dict({"anchor": [r[1] for r in chunk], "positive": [r[2] for r in chunk]}))
        start += size
    generator = torch.Generator()
    samplers = [NoDuplicatesBatchSampler(d, batch_size, True, generator=generator, seed=seed) for d in datasets]
    concat = ConcatDataset(datasets)
    return concat, AlphaSourceBatchSampler(
        concat,
        samplers,
        generator=generator,
        seed=seed,
        alpha=alpha,
        world_size=world_size,
        replay=replay,
        replay_share=replay_share,
    )


def test_alpha_sampler_single_source_batches_follow_n_alpha_without_duplicates():
    sizes = [160, 640, 2560]
    concat, sampler = _sampler(sizes, batch_size=8, alpha=0.5)
    batches = list(sampler)
    assert len(batches) == len(sampler) == sum(sizes) // 8
    counts = [0, 0, 0]
    for batch in batches:
        assert len(batch) == 8
        counts[source_of(batch, sizes)] += 1
        texts = [text for index in batch for text in concat[index].values()]
        assert len(texts) == len(set(texts)), "duplicate text inside a batch"
    expected = [p * len(batches) for p in sampling_probabilities(sizes, 0.5)]  # 1/7, 2/7, 4/7
    for count, exp in zip(counts, expected):
        assert abs(count - exp) < 4 * (exp * (1 - exp / len(batches))) ** 0.5, (counts, expected)
    # the smallest source (20 batches) is up-sampled beyond one pass, the largest down-sampled
    assert counts[0] > sizes[0] // 8 and counts[2] < sizes[2] // 8
    assert batches == list(sampler), "same seed and epoch must give the same batches"
    sampler.set_epoch(1)
    assert batches != list(sampler)


def test_alpha_sampler_groups_world_size_batches_per_source():
    sizes = [96, 384]
    _, sampler = _sampler(sizes, batch_size=8, alpha=1.0, world_size=2)
    batches = list(sampler)
    assert len(batches) % 2 == 0
    sources = [source_of(batch, sizes) for batch in batches]
    # accelerate gives batch i to rank i % 2: both ranks see the same source at every step
    assert all(sources[i] == sources[i + 1] for i in range(0, len(sources), 2))
    assert len(set(sources)) == 2


def test_replay_sources_get_the_share_asked_for_over_many_batches():
    """Counted over many batches of the sampler (20 epochs), each source's share of the batches is the one asked
    for: 0.7 for the stage's own sources (split 1:2 by n^0.5), 0.3 for the replay sources (split 2:1); an epoch
    holds the own sources' batches plus the replay share on top."""
    sizes, replay = [160, 640, 1280, 320], [False, False, True, True]
    concat, sampler = _sampler(sizes, batch_size=8, alpha=0.5, replay=replay, replay_share=0.3)
    own_batches = (160 + 640) // 8
    assert len(sampler) == round(own_batches / 0.7) == 143
    counts, total = [0] * 4, 0
    for epoch in range(20):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        for batch in batches:
            counts[source_of(batch, sizes)] += 1
            texts = [text for index in batch for text in concat[index].values()]
            assert len(texts) == len(set(texts)), "duplicate text inside a batch"
        total += len(batches)
    expected = sampling_probabilities(sizes, 0.5, replay, 0.3)
    assert expected == pytest.approx([0.7 / 3, 1.4 / 3, 0.2, 0.1])
    for count, p in zip(counts, expected):
        assert abs(count / total - p) < 4 * (p * (1 - p) / total) ** 0.5, (counts, total, expected)
    assert abs(sum(counts[2:]) / total - 0.3) < 4 * (0.3 * 0.7 / total) ** 0.5


def test_default_docstring_pairs_are_real_and_split_by_file():
    from gte_st.default_data import mine_docstring_pairs, pairs_from_source

    code = (
        'def area(r):\n    """Compute the area of a circle.\n\n    Uses pi times the radius squared, for r >= 0."""\n'
    )
    (pair,) = pairs_from_source(code, "geometry", "geometry.py")
    assert pair.anchor == "Compute the area of a circle."
    assert pair.positive == "geometry.area: def area(r)\nUses pi times the radius squared, for r >= 0."

    splits = mine_docstring_pairs(("tqdm",), max_files_per_root=250)  # the first 250 files of each root: ~2 s, not 8
    assert len(splits["train"]) > 500 and len(splits["test"]) > 50
    train_files = {p.source for p in splits["train"]}
    assert not train_files & {p.source for p in splits["test"]}, "a file feeds both splits"
    assert all(p.anchor not in p.positive for p in splits["train"][:200])
    assert {p.source.split("/")[0] for p in splits["train"]} == {"stdlib", "tqdm"}


def test_the_default_job_reads_its_shipped_pairs_not_the_installed_packages(tmp_path, monkeypatch):
    """The default job's pairs come from the file shipped with the package, so every machine trains and evaluates on
    the same pairs whatever versions it has installed: with mining made impossible, default_datasets still returns
    them, and a rebuild of the file from the same pairs is byte-identical."""
    import gte_st.default_data as default_data

    shipped = default_data.read_docstring_pairs()
    assert len(shipped["train"]) > 4000 and len(shipped["test"]) > 800
    assert not {p.source for p in shipped["train"]} & {p.source for p in shipped["test"]}, "a file feeds both splits"
    notice = (default_data.DEFAULT_PAIRS_FILE.parent / "NOTICE").read_text()
    assert hashlib.sha256(default_data.DEFAULT_PAIRS_FILE.read_bytes()).hexdigest() in notice
    assert f"{len(shipped['train'])}   {len(shipped['test']):>8}" in notice  # the 'all' row's counts

    def no_mining(*args, **kwargs):
        raise AssertionError("the default job mined the installed packages")

    monkeypatch.setattr(default_data, "mine_docstring_pairs", no_mining)
    monkeypatch.setattr(default_data, "source_roots", no_mining)
    train, held_out = default_data.default_datasets(max_test=default_data.HELD_OUT_QUERIES)
    assert sum(len(d) for d in train.values()) == len(shipped["train"])
    assert len(held_out["test"]["queries"]) == 200 and len(held_out["test"]["corpus"]) == len(shipped["test"])

    rebuilt = default_data.write_docstring_pairs(shipped, tmp_path / "pairs.jsonl.gz")
    assert rebuilt == default_data.DEFAULT_PAIRS_FILE.read_bytes()
    assert default_data.read_docstring_pairs(tmp_path / "pairs.jsonl.gz") == shipped


def test_the_built_wheel_ships_the_default_pairs(tmp_path):
    """A user who installs gte-st from a wheel (not from this checkout) gets the default job's pairs and their NOTICE:
    the package data is declared in pyproject.toml. Built from a copy, so nothing is written into the checkout."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from conftest import REPO_ROOT

    source = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "gte_st", source / "gte_st", symlinks=True, ignore=skip)
    shutil.copytree(REPO_ROOT / "model_cards", source / "model_cards", ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source), "-w",
         str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("gte_st-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"gte_st/default_pairs/docstring_pairs.jsonl.gz", "gte_st/default_pairs/NOTICE"} <= set(names)
    shipped = zipfile.ZipFile(wheel).read("gte_st/default_pairs/docstring_pairs.jsonl.gz")
    assert shipped == (REPO_ROOT / "gte_st" / "default_pairs" / "docstring_pairs.jsonl.gz").read_bytes()


@pytest.mark.parametrize(
    "row, message",
    [
        ({"split": "dev", "anchor": "a", "positive": "b", "source": "s"}, "'split' must be one of"),
        ({"split": "train", "anchor": "a", "source": "s"}, "needs text in ['positive']"),
        ({"split": "test", "anchor": 3, "positive": "b", "source": ""}, "needs text in ['anchor', 'source']"),
    ],
)
def test_a_bad_docstring_pairs_row_is_named_by_file_and_line(tmp_path, row, message):
    from gte_st.default_data import read_docstring_pairs
    from gte_st.readers import FileFormatError

    good = {"split": "train", "anchor": "a", "positive": "b", "source": "s"}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(FileFormatError) as info:
        read_docstring_pairs(path)
    assert str(info.value).startswith(f"{path}:2: ") and message in str(info.value)


def test_flagembedding_teacher_scores_become_the_label_column(tmp_path):
    pairs = _pairs(0, 6)
    negatives = _pairs(10, 12)
    rows = [
        {
            "query": a,
            "pos": [b],
            "neg": [negatives[2 * i][0], negatives[2 * i + 1][0]],
            "pos_scores": [0.9],
            "neg_scores": [0.5, 0.1 * i],
        }
        for i, (a, b) in enumerate(pairs)
    ]
    path = _write_jsonl(tmp_path / "distill.jsonl", rows)
    dataset = prepare_source(load_source(str(path)), "distill.jsonl")
    assert dataset.column_names == ["anchor", "positive", "negative_1", "negative_2", "label"]
    assert dataset[3]["label"] == pytest.approx([0.9, 0.5, 0.3])
    one = prepare_source(load_source(str(path)), "distill.jsonl", num_negatives=1)
    assert one[3]["label"] == pytest.approx([0.9, 0.5])  # scores follow the kept negatives
    pairs_only = prepare_source(load_source(str(path)), "distill.jsonl", num_negatives=0)
    assert pairs_only.column_names == ["anchor", "positive", "label"] and pairs_only[0]["label"] == [0.9]
    # the label column is not a text column for the no-duplicates sampler
    sampler = NoDuplicatesBatchSampler(dataset, batch_size=3, drop_last=True, valid_label_columns=["label"])
    assert sum(len(batch) for batch in sampler) == 6


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"neg_scores": [0.5]}, r"\.jsonl:2: column 'neg_scores': 1 score\(s\) for 2 negatives"),
        ({"pos_scores": ["high"]}, r"\.jsonl:2: column 'pos_scores': expected a finite number, got 'high'"),
        ({"neg_scores": [0.5, float("nan")]}, r"\.jsonl:2: column 'neg_scores': expected a finite number, got nan"),
    ],
)
def test_bad_teacher_scores_name_file_column_row(tmp_path, row, message):
    good = {"query": "a b", "pos": ["c d"], "neg": ["e", "f"], "pos_scores": [0.9], "neg_scores": [0.5, 0.2]}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **row}) + "\n", encoding="utf8")
    with pytest.raises(DataValidationError, match=message) as info:
        load_training_data([str(path)])
    assert "bad.jsonl" in str(info.value)


def test_scored_pairs_keep_their_gold_score_as_the_label(tmp_path):
    rows = [{"sentence1": a, "sentence2": b, "score": s} for s, a, b in stsb_rows("train")[:6]]
    path = _write_jsonl(tmp_path / "sts.jsonl", rows)
    dataset = prepare_source(load_source(str(path)), "sts.jsonl", scored=True)
    assert dataset.column_names == ["anchor", "positive", "label"]
    assert dataset["label"] == pytest.approx([r["score"] for r in rows])
    assert dataset[2]["anchor"] == rows[2]["sentence1"] and dataset[2]["positive"] == rows[2]["sentence2"]
    # an explicit third column is the score; without `scored` the same file is plain pairs
    renamed = _write_jsonl(tmp_path / "gold.jsonl", [{"a": r["sentence1"], "b": r["sentence2"], "gold": r["score"]}
                                                     for r in rows])  # fmt: skip
    explicit = prepare_source(load_source(str(renamed)), "gold.jsonl", columns=["a", "b", "gold"], scored=True)
    assert explicit["label"] == dataset["label"]
    assert prepare_source(load_source(str(path)), "sts.jsonl").column_names == ["anchor", "positive"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"anchor": "a b", "positive": "c d"}] * 2,
            r"needs a score column \(score/.*columns \['anchor', 'positive'\]",
        ),
        (
            [
                {"anchor": "a b", "positive": "c d", "score": 1.0},
                {"anchor": "a b", "positive": "c d", "score": "high"},
            ],
            r"bad\.jsonl:2: column 'score': expected a finite number, got 'high'",
        ),  # fmt: skip
    ],
)
def test_bad_scored_pairs_name_file_column_row(tmp_path, rows, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataValidationError, match=message) as info:
        load_training_data([str(path)], scored=True)
    assert "bad.jsonl" in str(info.value)


def test_a_datasets_source_names_the_dataset_and_its_row():
    """Rows of a datasets.Dataset (a saved or Hub dataset) have no file line: the error names the source and the
    dataset's own 0-based index."""
    from datasets import Dataset

    from gte_st.data import prepare_source

    with pytest.raises(DataValidationError, match=r"^org/pairs: column 'anchor', row 1: empty"):
        prepare_source(Dataset.from_dict({"anchor": ["a b", ""], "positive": ["c", "d"]}), "org/pairs")
