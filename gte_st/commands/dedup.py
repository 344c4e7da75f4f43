"""``gte-st dedup FILE --threshold T``: mine near-duplicate / paraphrase pairs from a text file."""

from __future__ import annotations

import json
import sys

from gte_st.commands._args import (
    ArgumentParser,
    add_backend_arguments,
    add_compile_argument,
    check_compile,
    check_outputs,
    load_model,
    positive_int,
)


def add_corpus_and_model_arguments(parser: ArgumentParser) -> None:
    """Options shared by ``dedup`` and ``cluster``."""
    parser.add_argument("file", help="jsonl / csv / tsv / parquet / txt (one text per line) file")
    parser.add_argument("--model", default=None, help="model directory or name (default: the offline MiniLM)")
    parser.add_argument("--id-field")
    parser.add_argument("--text-field")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--out", help="write the results as JSON lines to this file")
    parser.add_argument("--no-progress", action="store_true")
    add_backend_arguments(parser)
    add_compile_argument(parser)


def read_texts(args) -> tuple[list[str], list[str]]:
    """(ids, texts) of the file, read and checked before any model is loaded (and ``--out`` checked against the
    inputs first: the results never overwrite the file they come from)."""
    from gte_st.corpus import read_corpus

    check_outputs({"--out": args.out}, {"input file": args.file, "model": args.model})
    return read_corpus(args.file, id_field=args.id_field, text_field=args.text_field, title_field=None)


def embed(args, texts: list[str]):
    """Embeddings of ``texts`` by the model the user named (default: the offline MiniLM)."""
    from gte_st.encoding import encode
    from gte_st.model import default_base_model

    model = load_model(args.model or default_base_model(), backend=args.backend, file_name=args.file_name)
    return encode(
        model, texts, batch_size=args.batch_size, show_progress_bar=not args.no_progress, compile=args.compile
    )


def write_jsonl(path: str, records: list[dict]) -> None:
    from gte_st.files import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="gte-st dedup", description="Mine near-duplicate / paraphrase pairs.")
    add_corpus_and_model_arguments(parser)
    parser.add_argument("--threshold", type=float, default=0.9, help="minimum cosine similarity (default 0.9)")
    from gte_st.duplicates import DEFAULT_CHUNK_SIZE

    parser.add_argument(
        "--chunk-size", type=positive_int, default=DEFAULT_CHUNK_SIZE, help="queries per range-search chunk"
    )
    return parser


def main(argv: list[str]) -> int:
    from gte_st.duplicates import duplicate_groups, mine_duplicates
    from gte_st.errors import UsageError

    parser = build_parser()
    args = parser.parse_args(argv)
    check_compile(parser, args)
    if not -1.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold is a cosine similarity in [-1, 1], got {args.threshold}")
    ids, texts = read_texts(args)
    embeddings = embed(args, texts)
    pairs = mine_duplicates(embeddings, args.threshold, chunk_size=args.chunk_size)
    groups = duplicate_groups(len(texts), pairs)
    records = [
        {"id1": ids[i], "id2": ids[j], "score": round(score, 6), "text1": texts[i], "text2": texts[j]}
        for i, j, score in pairs
    ]
    if args.out:
        write_jsonl(args.out, records)
    for record in records[: 10 if args.out else len(records)]:
        print(
            f"{record['score']:.4f}  {record['id1']}  {record['id2']}  {record['text1'][:60]!r}  {record['text2'][:60]!r}"
        )
    redundant = sum(len(g) - 1 for g in groups)
    print(
        f"{len(pairs)} pairs with cosine >= {args.threshold} among {len(texts)} texts; {len(groups)} duplicate "
        f"groups; keeping one text per group drops {redundant} texts"
        + (f"; pairs written to {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    return 0
