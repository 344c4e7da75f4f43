#!/usr/bin/env python
"""Training files for the Chinese recipe (scripts/recipes/chinese.sh), from train splits only.

    python scripts/recipes/build_chinese_pairs.py --out-dir chinese/data

Writes scored pairs (``sentence1``, ``sentence2``, ``score``) for ``--loss cosent``, read with gte-st's evaluation
readers from ``../shared/data``:

- ``stsb_zh.jsonl``: STS-B-zh train (CNSD's translation of STS-B), gold scores 0-5;
- ``atec.jsonl``: ATEC's contest train file (Ant Financial customer-service questions), labels 0/1 as the scores
  (CoSENT only uses their order within a batch);
- ``stsb_en.jsonl``: English STS-B train, gold scores 0-5: the replay that keeps English STS while the model learns
  Chinese.

Never reads a dev or test split (STS-B-zh valid and English STS-B dev are the recipe's choice sets; STS-B-zh test,
LCQMC, BQ, English STS-B test and SICK-R test are reported only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"  # the data folder beside the checkout
SOURCES = {
    "stsb_zh": DATA / "zh_pairs" / "stsb_zh" / "STS-B.train.data",
    "atec": DATA / "zh_pairs" / "atec" / "atec_nlp_sim_train.csv",
    "stsb_en": DATA / "stsb" / "sts-train.csv",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    from gte_st.errors import UsageError
    from gte_st.files import check_output_path

    try:  # the output folder is this script's own: never one of the source files or a folder holding one
        check_output_path(args.out_dir, {f"{name} file": path for name, path in SOURCES.items()}, option="--out-dir")
    except UsageError as error:
        parser.error(str(error))
    from gte_st.evaluation.readers import read_sts  # after the check: it loads torch, seconds before a one-line error

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, path in SOURCES.items():
        pairs = read_sts(path, split="train")
        rows = [
            {"sentence1": a, "sentence2": b, "score": score}
            for a, b, score in zip(pairs.sentences1, pairs.sentences2, pairs.scores)
            if a.strip() and b.strip()
        ]
        with open(out / f"{name}.jsonl", "w", encoding="utf8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        print(f"{out / name}.jsonl: {len(rows)} pairs from {path}")


if __name__ == "__main__":
    main()
