"""``gte-st index CORPUS --model M --out DIR``: encode a corpus into an embeddings + FAISS index directory."""

from __future__ import annotations

from pathlib import Path

from gte_st.commands._args import (
    ArgumentParser,
    add_backend_arguments,
    add_compile_argument,
    add_precision_argument,
    add_truncate_dim_argument,
    check_compile,
    check_outputs,
    load_model,
    positive_int,
)
from gte_st.loading import check_model_location


def build_parser() -> ArgumentParser:
    from gte_st.search.index import INDEX_TYPES, PRECISIONS

    parser = ArgumentParser(prog="gte-st index", description="Encode a corpus into an index directory.")
    parser.add_argument("corpus", help="jsonl / csv / tsv / parquet / txt file, or a BEIR folder")
    parser.add_argument("--model", required=True, help="model directory or name")
    parser.add_argument("--out", required=True, help="index directory to create")
    parser.add_argument("--precision", default="float32", choices=sorted(PRECISIONS))
    parser.add_argument("--index", dest="index_type", default="flat", choices=INDEX_TYPES)
    parser.add_argument("--hnsw-m", type=positive_int, default=32)
    parser.add_argument("--nlist", type=positive_int, help="IVF cells (default min(4*sqrt(N), N/39))")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--shard-size", type=positive_int, default=4096, help="documents per resumable shard")
    parser.add_argument("--id-field")
    parser.add_argument("--text-field")
    add_precision_argument(parser, "--encode-precision")
    add_compile_argument(parser, "the corpus")
    add_truncate_dim_argument(parser)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    add_backend_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    from gte_st.corpus import read_corpus
    from gte_st.search import build_index
    from gte_st.search.build import check_destination
    from gte_st.vocabulary import warn_unknown_tokens

    parser = build_parser()
    args = parser.parse_args(argv)
    check_compile(parser, args)
    check_outputs({"--out": args.out}, {"corpus": args.corpus, "model": args.model})
    # Everything that can be checked without the model is checked before it is loaded.
    corpus = read_corpus(args.corpus, id_field=args.id_field, text_field=args.text_field)
    check_model_location(args.model)
    check_destination(args.out, args.overwrite)  # before --backend auto loads the model to choose
    model = args.model
    if args.backend != "torch" or args.file_name:  # an exported artifact, or the fastest verified path (auto)
        model = load_model(
            args.model, backend=args.backend, file_name=args.file_name, torch_precision=args.encode_precision
        )
    warn_unknown_tokens(model, corpus[1], str(args.corpus))
    index = build_index(
        corpus,
        model,
        args.out,
        precision=args.precision,
        index_type=args.index_type,
        hnsw_m=args.hnsw_m,
        nlist=args.nlist,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        show_progress_bar=not args.no_progress,
        encode_precision=args.encode_precision,
        compile=args.compile,
        corpus_name=str(args.corpus),
        model_name=str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model,
        truncate_dim=args.truncate_dim,
    )
    print(
        f"indexed {len(index)} documents into {args.out} ({index.precision}, {index.meta['index']['type']}, "
        f"{index.meta['model']['dimension']}-d, encoding {index.meta['encode_seconds']} s)"
    )
    return 0
