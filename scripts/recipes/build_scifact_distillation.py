#!/usr/bin/env python
"""Training files for the SciFact hybrid-distillation recipe (``scifact-hybrid.sh`` beside this file), from train-side
data only: SciFact's corpus and its *train* claims/qrels (never the test queries or qrels).

    python scripts/recipes/build_scifact_distillation.py --out-dir scifact-distill [--holdout 200] [--bm25-weight 0.4]

Writes, in FlagEmbedding's distillation layout (``query``, ``pos``, ``neg``, ``pos_scores``, ``neg_scores``; the
scores are the BM25 + dense hybrid's on the model's cosine scale, :func:`gte_st.search.teacher.hybrid_teacher_rows`):

- ``claims.jsonl``: the train claims -> their cited abstracts (documents as BEIR embeds them, title + abstract);
- ``stsb.jsonl``: the STS-B *train* pairs with their gold scores (``sentence1``, ``sentence2``, ``score`` on the
  0-5 scale), for the recipe's short ``--loss cosent`` stage that gives back the STS quality the claims stage costs;
- with ``--titles``: ``titles.jsonl``, every corpus title -> its abstract, candidates from an index of abstracts
  without titles (so the title does not match itself), for a weak in-domain stage. Off by default: the recipe has no
  such stage (before the claims stage it scored lower on dev), and building it encodes the corpus a second time and
  every title, which was more than half of this script's time;
- with ``--holdout N``: the last N train claims go to ``dev-claims/`` (a BEIR folder: corpus, queries, qrels/dev.tsv)
  instead, for choosing the recipe's settings on data the model did not train on.

The teacher's cosines come from ``--model`` (default the offline all-MiniLM-L6-v2) at ``--max-seq-length``, the
length the student trains at.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import time
from pathlib import Path

from gte_st.registry import PRECISIONS

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "beir_scifact"  # the data folder beside the checkout
STSB = DATA.parent / "stsb" / "sts-train.csv"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def stsb_pairs(path: Path) -> list[dict]:
    """The STS-B train pairs as scored-pair rows (``sentence1``, ``sentence2``, ``score``, 0-5 scale)."""
    from gte_st.evaluation.readers import read_sts

    pairs = read_sts(path)
    return [
        {"sentence1": a, "sentence2": b, "score": score}
        for a, b, score in zip(pairs.sentences1, pairs.sentences2, pairs.scores)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA), help="BEIR SciFact folder")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--model", default=None, help="teacher model (default: the offline all-MiniLM-L6-v2)")
    parser.add_argument("--bm25-weight", type=float, default=0.4, help="hybrid weight (0.4: best on train queries)")
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--negative-pool", type=int, default=30)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--titles", action="store_true", help="also write titles.jsonl (title -> abstract rows)")
    parser.add_argument("--max-titles", type=int, default=None, help="with --titles: use only the first N titles")
    parser.add_argument("--holdout", type=int, default=0, help="train claims held out as dev-claims/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS.names(),
        help="teacher encode precision (gte_st.encoding): auto (default) is bf16 only where this CPU runs it natively"
        " and faster (emulated bf16 is several times slower than fp32), else fp32; near-tied"
        " candidates may order differently between the two",
    )
    parser.add_argument("--stsb", default=str(STSB), help="STS-B train file")
    args = parser.parse_args()
    if args.max_titles is not None and not args.titles:
        parser.error("argument --max-titles: only with --titles")

    # The checks that need no heavy import come first: a bad option or path is one line before torch is even loaded.
    from gte_st.errors import UsageError
    from gte_st.files import check_output_path
    from gte_st.ranking.fusion import check_bm25_weight

    check_bm25_weight(args.bm25_weight)
    try:  # the output folder is this script's own: never an input, inside one or holding one
        check_output_path(
            args.out_dir,
            {"BEIR folder": args.data, "STS-B file": args.stsb, "teacher model": args.model},
            option="--out-dir",
        )
    except UsageError as error:
        parser.error(str(error))
    for path in (
        Path(args.data) / "corpus.jsonl.gz",
        Path(args.data) / "queries.jsonl",
        Path(args.data) / "qrels" / "train.tsv",
    ):
        if not path.is_file():
            parser.error(f"--data {args.data}: no {path.relative_to(args.data)} (a BEIR folder with train qrels)")
    if not Path(args.stsb).is_file():
        parser.error(f"--stsb: {args.stsb} is not a file")
    try:  # read before any work or output, so a bad file is one line and leaves nothing behind
        stsb = stsb_pairs(Path(args.stsb))
    except (OSError, ValueError) as error:
        parser.error(f"--stsb: {error}")

    import csv

    from sentence_transformers import SentenceTransformer

    import gte_st
    from gte_st.encoding import encode
    from gte_st.search import BM25Retriever
    from gte_st.search.teacher import hybrid_teacher_rows

    start = time.time()
    data, out = Path(args.data), Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(data / "corpus.jsonl.gz", "rt", encoding="utf8") as f:
        docs = [json.loads(line) for line in f]
    ids = [str(doc["_id"]) for doc in docs]
    full = [(doc["title"].strip() + " " + doc["text"].strip()).strip() for doc in docs]
    with open(data / "queries.jsonl", encoding="utf8") as f:
        query_text = {str(q["_id"]): q["text"] for q in map(json.loads, f)}
    qrels: dict[str, list[str]] = {}
    with open(data / "qrels" / "train.tsv", encoding="utf8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if float(row["score"]) > 0:
                qrels.setdefault(row["query-id"], []).append(row["corpus-id"])
    claim_ids = list(qrels)
    dev_ids = claim_ids[len(claim_ids) - args.holdout :] if args.holdout else []
    train_ids = claim_ids[: len(claim_ids) - len(dev_ids)]

    model = SentenceTransformer(args.model or gte_st.default_base_model(), device="cpu")
    model.max_seq_length = args.max_seq_length
    full_emb = encode(model, full, precision=args.precision)
    claim_emb = encode(model, [query_text[q] for q in train_ids], precision=args.precision)
    common = dict(bm25_weight=args.bm25_weight, num_negatives=args.num_negatives, negative_pool=args.negative_pool)
    titles: list[dict] = []
    if args.titles:
        titled = [(doc["title"].strip(), doc_id) for doc, doc_id in zip(docs, ids) if doc["title"].strip()]
        titled = titled[: args.max_titles]
        abstracts = [doc["text"].strip() or doc["title"].strip() for doc in docs]
        titles = hybrid_teacher_rows(
            [title for title, _ in titled],
            [[doc] for _, doc in titled],
            ids,
            abstracts,
            encode(model, [title for title, _ in titled], precision=args.precision),
            encode(model, abstracts, precision=args.precision),
            bm25=BM25Retriever(ids, abstracts),
            seed=args.seed,
            **common,
        )
        write_jsonl(out / "titles.jsonl", titles)
    claims = hybrid_teacher_rows(
        [query_text[q] for q in train_ids],
        [qrels[q] for q in train_ids],
        ids,
        full,
        claim_emb,
        full_emb,
        bm25=BM25Retriever(ids, full),
        seed=args.seed,
        **common,
    )
    write_jsonl(out / "claims.jsonl", claims)
    write_jsonl(out / "stsb.jsonl", stsb)
    if dev_ids:
        dev = out / "dev-claims"
        (dev / "qrels").mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "corpus.jsonl.gz", dev / "corpus.jsonl.gz")
        write_jsonl(dev / "queries.jsonl", [{"_id": q, "text": query_text[q]} for q in dev_ids])
        with open(dev / "qrels" / "dev.tsv", "w", encoding="utf8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{doc}\t1\n" for q in dev_ids for doc in qrels[q])
    print(
        f"{len(titles)} title rows, {len(claims)} claim rows ({len(train_ids)} claims), {len(stsb)} STS-B pairs, "
        f"{len(dev_ids)} dev claims "
        f"-> {out} in {time.time() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
