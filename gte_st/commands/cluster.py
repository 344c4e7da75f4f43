"""``gte-st cluster FILE --k K``: group texts into k topics with spherical k-means on their embeddings."""

from __future__ import annotations

import numpy as np

from gte_st.commands._args import ArgumentParser, check_compile, positive_int
from gte_st.commands.dedup import add_corpus_and_model_arguments, embed, read_texts, write_jsonl


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="gte-st cluster", description="Group texts into k topics (k-means).")
    add_corpus_and_model_arguments(parser)
    parser.add_argument("--k", type=positive_int, required=True, help="number of clusters")
    parser.add_argument("--nearest", type=positive_int, default=5, help="texts shown per cluster")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str]) -> int:
    from gte_st.clusters import cluster
    from gte_st.errors import UsageError

    parser = build_parser()
    args = parser.parse_args(argv)
    check_compile(parser, args)
    ids, texts = read_texts(args)
    if args.k > len(texts):
        raise UsageError(f"--k {args.k} is more than the {len(texts)} texts of {args.file}")
    embeddings = embed(args, texts)
    result = cluster(embeddings, args.k, n_nearest=args.nearest, seed=args.seed)
    order = sorted(range(args.k), key=lambda c: -result.sizes[c])
    records = [
        {
            "cluster": c,
            "size": result.sizes[c],
            "nearest": [
                {"id": ids[row], "score": round(score, 6), "text": texts[row]} for row, score in result.nearest[c]
            ],
            "members": [ids[row] for row in np.flatnonzero(result.labels == c)],
        }
        for c in order
    ]
    if args.out:
        write_jsonl(args.out, records)
    for record in records:
        print(f"## cluster {record['cluster']} ({record['size']} texts)")
        for item in record["nearest"]:
            print(f"   {item['score']:.3f}  {item['text'][:100]}")
    return 0
