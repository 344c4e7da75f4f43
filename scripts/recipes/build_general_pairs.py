#!/usr/bin/env python
"""General-domain replay sources for `gte-st train --replay` (docs/training.md, "Replay"), from the train side of
public data sets only, plus the dev splits their choices are made on.

    python scripts/recipes/build_general_pairs.py --out-dir general [--data ../shared/data] [--sources all]

Writes jsonl sources in sentence-transformers' column layout (``anchor``, ``positive`` [, ``negative``]):

- ``snli.jsonl``: SNLI triplets (premise, entailed hypothesis, contradicted hypothesis; SNLI's dev/test release, see
  its SOURCE.txt: do not evaluate on SNLI after replaying it);
- ``wikiqa.jsonl``: WikiQA *train* questions -> a correct answer sentence, with a wrong candidate of the same question
  as the negative; the questions of ``wikiqa-dev.txt`` are left out;
- ``wikiqa-lists.jsonl``: for ``--replay_objective distillation`` only: every WikiQA *train* question (answered or
  not) with the candidate sentences of its article, LIST_SIZE per row (``positive``, ``negative_1..``; not labels:
  the replay only keeps the base model's similarities, here between a question and the sentences it is ranked
  against, the fine-grained geometry answer-sentence selection uses and in-batch pairs do not constrain); the
  questions of ``wikiqa-dev.txt`` are left out;
- ``wikiqa-dev.txt``: a fifth of the WikiQA train questions (chosen by a stable hash of the question) in WikiQA's own
  layout, a reranking dev set (``gte-st eval --task reranking``) for choices that must not look at WikiQA test;
- ``mrpc.jsonl``: the MRPC *train* pairs labelled paraphrase;
- ``stsb.jsonl``: the STS-B *train* pairs scored >= 4 (of 5): near-paraphrases;
- ``docstrings.jsonl``: the embedded default job's *train* docstring pairs (``gte_st.default_data``; its held-out
  files stay held out).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"  # the data folder beside the checkout
SOURCES = ("snli", "wikiqa", "wikiqa-lists", "mrpc", "stsb", "docstrings")
LIST_SIZE = 4  # candidates per wikiqa-lists row: a question's list in chunks, the last one filled from its start


def write_jsonl(path: Path, rows: list[dict]) -> int:
    with open(path, "w", encoding="utf8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def held_out(text: str, fraction: float) -> bool:
    """A stable split of a text (a WikiQA question) into train and dev."""
    return int.from_bytes(hashlib.sha1(text.encode("utf8")).digest()[:4], "big") / 2**32 < fraction


def snli(data: Path) -> list[dict]:
    import csv

    with open(data / "snli_devtest" / "triplets_from_devtest.tsv", encoding="utf8") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [{"anchor": r["anchor"], "positive": r["positive"], "negative": r["negative"]} for r in rows]


def wikiqa(data: Path, dev_fraction: float) -> tuple[list[dict], list[str]]:
    """(train rows, dev lines): a question with a correct and a wrong candidate gives one row per correct answer."""
    from gte_st.evaluation.readers import read_reranking

    path = data / "wikiqa" / "WikiQA-train.txt"
    rows, dev_questions = [], set()
    for sample in read_reranking(path):
        if not sample["positive"]:
            continue
        if held_out(sample["query"], dev_fraction):
            dev_questions.add(sample["query"])
        elif sample["negative"]:
            rows += [{"anchor": sample["query"], "positive": p, "negative": sample["negative"][0]} for p in sample["positive"]]  # fmt: skip
    dev = [line for line in path.read_text(encoding="utf8").splitlines() if line.split("\t")[0] in dev_questions]
    return rows, dev


def wikiqa_lists(data: Path, dev_fraction: float) -> list[dict]:
    """Rows of every non-dev WikiQA train question and LIST_SIZE of its candidates (correct ones first), until each
    candidate is in a row; a list shorter than LIST_SIZE repeats its candidates."""
    from gte_st.evaluation.readers import read_reranking

    rows = []
    for sample in read_reranking(data / "wikiqa" / "WikiQA-train.txt"):
        candidates = sample["positive"] + sample["negative"]
        if held_out(sample["query"], dev_fraction) or not candidates:
            continue
        for start in range(0, len(candidates), LIST_SIZE):
            chunk = [candidates[(start + i) % len(candidates)] for i in range(LIST_SIZE)]
            negatives = {f"negative_{i}": text for i, text in enumerate(chunk[1:], 1)}
            rows.append({"anchor": sample["query"], "positive": chunk[0], **negatives})
    return rows


def mrpc(data: Path) -> list[dict]:
    from gte_st.evaluation.readers import read_pairs

    pairs = read_pairs(data / "mrpc" / "msr_paraphrase_train.txt")
    return [
        {"anchor": a, "positive": b} for a, b, label in zip(pairs.sentences1, pairs.sentences2, pairs.labels) if label
    ]


def stsb(data: Path, min_score: float) -> list[dict]:
    from gte_st.evaluation.readers import read_sts

    pairs = read_sts(data / "stsb" / "sts-train.csv")
    return [
        {"anchor": a, "positive": b}
        for a, b, score in zip(pairs.sentences1, pairs.sentences2, pairs.scores)
        if score >= min_score and a != b
    ]


def docstrings() -> list[dict]:
    from gte_st.default_data import default_pairs

    return [{"anchor": p.anchor, "positive": p.positive} for p in default_pairs()["train"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA), help="the shared data folder")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--sources", default="all", help=f"comma-separated, from {','.join(SOURCES)} (default all)")
    parser.add_argument("--wikiqa-dev-fraction", type=float, default=0.2, help="WikiQA train questions kept for dev")
    parser.add_argument("--stsb-min-score", type=float, default=4.0)
    args = parser.parse_args()
    sources = SOURCES if args.sources == "all" else tuple(args.sources.split(","))
    if unknown := sorted(set(sources) - set(SOURCES)):
        parser.error(f"unknown sources {unknown}; choose from {SOURCES}")

    from gte_st.errors import UsageError
    from gte_st.files import check_output_path

    try:  # the output folder is this script's own: never the data folder, inside it or holding it
        check_output_path(args.out_dir, {"data folder": args.data}, option="--out-dir")
    except UsageError as error:
        parser.error(str(error))
    data, out = Path(args.data), Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    if "snli" in sources:
        counts["snli"] = write_jsonl(out / "snli.jsonl", snli(data))
    if "wikiqa" in sources:
        rows, dev = wikiqa(data, args.wikiqa_dev_fraction)
        counts["wikiqa"] = write_jsonl(out / "wikiqa.jsonl", rows)
        (out / "wikiqa-dev.txt").write_text("\n".join(dev) + "\n", encoding="utf8")
    if "wikiqa-lists" in sources:
        counts["wikiqa-lists"] = write_jsonl(out / "wikiqa-lists.jsonl", wikiqa_lists(data, args.wikiqa_dev_fraction))
    if "mrpc" in sources:
        counts["mrpc"] = write_jsonl(out / "mrpc.jsonl", mrpc(data))
    if "stsb" in sources:
        counts["stsb"] = write_jsonl(out / "stsb.jsonl", stsb(data, args.stsb_min_score))
    if "docstrings" in sources:
        counts["docstrings"] = write_jsonl(out / "docstrings.jsonl", docstrings())
    print(", ".join(f"{name} {n} rows" for name, n in counts.items()) + f" -> {out}")


if __name__ == "__main__":
    main()
