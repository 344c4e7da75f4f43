"""``gte-st search INDEX QUERY...``: query an index directory (dense, BM25, BM25 -> GTE, hybrid)."""

from __future__ import annotations

import json

from gte_st.commands._args import (
    ArgumentParser,
    add_backend_arguments,
    add_truncate_dim_argument,
    load_model,
    positive_int,
)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="gte-st search", description="Query an index directory.")
    parser.add_argument("index", help="index directory built by `gte-st index`")
    parser.add_argument("queries", nargs="+", help="one or more queries")
    parser.add_argument("-k", type=positive_int, default=10)
    parser.add_argument(
        "--rerank-bm25", type=positive_int, nargs="?", const=100, metavar="K",
        help="two-stage: BM25 top K (default 100) re-scored by the model",
    )  # fmt: skip
    parser.add_argument(
        "--bm25-weight", type=float, default=0.0, metavar="W",
        help="with --rerank-bm25: hybrid score W*BM25 + (1-W)*cosine, both min-max normalised (default 0)",
    )  # fmt: skip
    parser.add_argument("--bm25-only", action="store_true", help="lexical BM25 alone")
    parser.add_argument("--model", help="query model (default: the one recorded in the index)")
    parser.add_argument("--ef-search", type=positive_int, help="HNSW search breadth")
    parser.add_argument("--nprobe", type=positive_int, help="IVF cells visited")
    parser.add_argument("--json", action="store_true", help="print JSON lines {query, hits}")
    add_truncate_dim_argument(
        parser, "query dimensions: the index's own (recorded when it was built); another is refused"
    )
    add_backend_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    from gte_st.errors import UsageError
    from gte_st.search import Index, check_bm25_weight

    args = build_parser().parse_args(argv)
    try:
        check_bm25_weight(args.bm25_weight, args.rerank_bm25)
    except ValueError as exc:
        raise UsageError(f"--bm25-weight: {exc}") from None
    index = Index.load(args.index, truncate_dim=args.truncate_dim)
    if not args.bm25_only:  # the query model: the one named, else the one recorded, run by --backend
        name = args.model or index.meta["model"].get("name")
        if not name:
            raise UsageError(f"{args.index}: the index records no model name; pass --model")
        index.set_model(
            load_model(
                name, backend=args.backend, file_name=args.file_name,
                torch_precision=index.meta.get("encode_precision", "auto"),
            )
        )  # fmt: skip
    kwargs = {}
    if not args.rerank_bm25 and not args.bm25_only:
        kwargs = {"ef_search": args.ef_search, "nprobe": args.nprobe}
    results = index.search(
        args.queries, args.k, rerank_bm25=args.rerank_bm25, bm25_weight=args.bm25_weight, bm25_only=args.bm25_only,
        **kwargs,
    )  # fmt: skip
    for query, hits in zip(args.queries, results):
        if args.json:
            print(json.dumps({"query": query, "hits": [hit.to_dict() for hit in hits]}, ensure_ascii=False))
            continue
        print(f"# {query}")
        for hit in hits:
            text = hit.text if len(hit.text) <= 100 else hit.text[:97] + "..."
            print(f"{hit.rank:>3}  {hit.score:.4f}  {hit.id}  {text}")
    return 0
