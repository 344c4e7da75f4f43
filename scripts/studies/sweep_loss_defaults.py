"""Choose NormalizedMSELoss's defaults by measurement (train/dev data only).

From the offline all-MiniLM-L6-v2, fine-tune on SciFact *train* claims -> cited abstracts for a fixed budget with each
setting, and score on dev data only: STS-B dev Spearman and nDCG@10 on a held-out 20 % of the SciFact train claims
(retrieving from their cited abstracts plus distractor abstracts). sentence-transformers'
MultipleNegativesRankingLoss on the same budget is the reference. No test split is touched.

A setting is ``mnrl``, ``MARGIN:WEIGHT`` (the original two-parameter form) or ``NAME={JSON NormalizedMSELoss
arguments}``; settings are separated by ``;``. Every setting runs once per seed of ``--seeds``.

    python scripts/studies/sweep_loss_defaults.py --steps 30 --max-seq-length 64 --seeds 0 \
        --settings 'mnrl;0.3:2048;infonce={"weighting": "infonce", "negative_penalty": "hinge", "margin": -1}'
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data"  # the data folder beside the checkout
DATA = DEFAULT_DATA


def load_scifact_train(seed: int = 0):
    corpus = {}
    with gzip.open(DATA / "beir_scifact" / "corpus.jsonl.gz", "rt", encoding="utf8") as f:
        for line in f:
            doc = json.loads(line)
            corpus[doc["_id"]] = f"{doc['title']} {doc['text']}".strip()
    queries = {}
    with open(DATA / "beir_scifact" / "queries.jsonl", encoding="utf8") as f:
        for line in f:
            q = json.loads(line)
            queries[q["_id"]] = q["text"]
    qrels: dict[str, set[str]] = {}
    with open(DATA / "beir_scifact" / "qrels" / "train.tsv", encoding="utf8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], set()).add(row["corpus-id"])
    qids = sorted(qrels)
    random.Random(seed).shuffle(qids)
    n_dev = len(qids) // 5
    dev_qids, train_qids = qids[:n_dev], qids[n_dev:]
    train = [(queries[q], corpus[d]) for q in train_qids for d in sorted(qrels[q])]
    dev_docs = {d for q in dev_qids for d in qrels[q]}
    distractors = [d for d in sorted(corpus) if d not in dev_docs]
    random.Random(seed).shuffle(distractors)
    dev_corpus = {d: corpus[d] for d in list(dev_docs) + distractors[:1500]}
    dev_queries = {q: queries[q] for q in dev_qids}
    dev_qrels = {q: qrels[q] for q in dev_qids}
    return train, dev_corpus, dev_queries, dev_qrels


def load_stsb_dev():
    s1, s2, scores = [], [], []
    with open(DATA / "stsb" / "sts-dev.csv", encoding="utf8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            scores.append(float(fields[4]) / 5)
            s1.append(fields[5])
            s2.append(fields[6])
    return s1, s2, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--settings", default="mnrl;0.3:2048", help="';'-separated settings (see above)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, each setting runs once per seed")
    parser.add_argument("--out", default="sweep_loss_defaults.json")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="the shared data folder")
    args = parser.parse_args()
    global DATA
    DATA = Path(args.data_dir)

    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.evaluation import (
        EmbeddingSimilarityEvaluator,
        InformationRetrievalEvaluator,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    import gte_st
    from gte_st.losses import NormalizedMSELoss

    train, dev_corpus, dev_queries, dev_qrels = load_scifact_train()
    s1, s2, scores = load_stsb_dev()
    evaluators = {
        "stsb_dev_spearman": EmbeddingSimilarityEvaluator(s1, s2, scores, name="stsb-dev", batch_size=64),
        "scifact_dev_ndcg@10": InformationRetrievalEvaluator(
            dev_queries, dev_corpus, dev_qrels, name="scifact-dev", batch_size=64, ndcg_at_k=[10],
            mrr_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[10], map_at_k=[10],
        ),
    }  # fmt: skip
    keys = {"stsb_dev_spearman": "stsb-dev_spearman_cosine", "scifact_dev_ndcg@10": "scifact-dev_cosine_ndcg@10"}
    dataset = Dataset.from_dict({"anchor": [a for a, _ in train], "positive": [p for _, p in train]})
    print(f"train pairs {len(dataset)}, dev queries {len(dev_queries)}, dev corpus {len(dev_corpus)}")

    def evaluate(model) -> dict[str, float]:
        model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return {name: round(ev(model)[keys[name]] * 100, 2) for name, ev in evaluators.items()}

    results = {"settings": vars(args), "runs": []}
    base = gte_st.build_model(max_seq_length=args.max_seq_length)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    results["before"] = evaluate(base)
    print("before", results["before"], flush=True)
    runs = [(setting, int(seed)) for setting in args.settings.split(";") for seed in args.seeds.split(",")]
    work = tempfile.mkdtemp(prefix="sweep-loss-defaults-")
    for setting, seed in runs:
        base.load_state_dict(state)
        torch.manual_seed(seed)
        if setting == "mnrl":
            loss, label = MultipleNegativesRankingLoss(base), "MultipleNegativesRankingLoss(scale=20)"
        elif "=" in setting:
            label, kwargs = setting.split("=", 1)
            loss = NormalizedMSELoss(base, **json.loads(kwargs))
            label = f"mse {label} {kwargs}"
        else:
            margin, weight = (float(x) for x in setting.split(":"))
            loss, label = NormalizedMSELoss(base, margin=margin, negative_weight=weight), f"mse m={margin} w={weight}"
        training_args = SentenceTransformerTrainingArguments(
            output_dir=work, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr, warmup_steps=int(0.1 * args.steps), bf16=True, use_cpu=True, report_to=[],
            save_strategy="no", logging_steps=10, seed=seed, batch_sampler="no_duplicates",
        )  # fmt: skip
        start = time.time()
        SentenceTransformerTrainer(model=base, args=training_args, train_dataset=dataset, loss=loss).train()
        scores_after = evaluate(base)
        run = {"loss": label, "seed": seed, **scores_after, "train_s": round(time.time() - start, 1)}
        results["runs"].append(run)
        print(run, flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
