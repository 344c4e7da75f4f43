"""``gte-st eval MODEL --task TASK --data PATH``: evaluate a model on local files, print a table, write JSON."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gte_st.commands._args import (
    ArgumentParser,
    add_backend_arguments,
    add_compile_argument,
    add_precision_argument,
    check_compile,
    check_outputs,
    existing_path,
    load_model,
    positive_int,
)
from gte_st.evaluation.result import EvalResult
from gte_st.files import atomic_write_json

TASKS = ("sts", "retrieval", "pair-classification", "classification", "clustering", "reranking", "mteb")


def build_parser() -> ArgumentParser:
    import argparse

    parser = ArgumentParser(
        prog="gte-st eval",
        description="Evaluate a sentence-transformers model (a local directory, or a Hub id when the Hub is "
        "reachable) on local data files. Metrics are printed as a table and written as JSON with --output.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="model directory or Hugging Face Hub id")
    parser.add_argument("--task", required=True, choices=TASKS, help="task type")
    parser.add_argument(
        "--data",
        nargs="+",
        type=existing_path,
        default=[],
        metavar="PATH",
        help="data file(s) or folder(s): STS-B/SICK/jsonl (sts), BEIR folder (retrieval), MRPC/LCQMC/jsonl "
        "(pair-classification), labelled csv/tsv/jsonl (classification, clustering), WikiQA/jsonl (reranking)",
    )
    parser.add_argument("--split", default=None, help="split to evaluate (default: test, or what the file holds)")
    parser.add_argument("--output", default=None, metavar="JSON", help='write {"model", "results": [...]} here')
    parser.add_argument("--batch-size", type=positive_int, default=64)
    add_precision_argument(parser, default="fp32")  # fp32 by default: reproducible, published scores
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--max-seq-length", type=positive_int, default=None, help="override the model's truncation length"
    )
    parser.add_argument("--max-samples", type=positive_int, default=None, help="evaluate only N pairs/texts/queries")
    parser.add_argument("--dataset", default=None, help="dataset name to report (default: the data folder's name)")
    parser.add_argument("--trust-remote-code", action="store_true")
    add_backend_arguments(parser, default="torch")  # torch fp32 by default: reproducible, published scores
    add_compile_argument(parser, "the evaluation texts")

    group = parser.add_argument_group("retrieval")
    group.add_argument("--cache-dir", default=None, help="cache corpus embeddings here (keyed by model and corpus)")
    group.add_argument("--max-corpus", type=positive_int, default=None, help="search relevant docs + others up to N")
    group.add_argument("--max-queries", type=positive_int, default=None, help="evaluate only the first N queries")
    group.add_argument("--retriever", default="dense", choices=("dense", "bm25"), help="first-stage retriever")
    group.add_argument(
        "--bm25-rerank", type=positive_int, default=None, metavar="K", help="re-score BM25's top K with MODEL"
    )
    group.add_argument(
        "--bm25-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="with --bm25-rerank: hybrid score W*BM25 + (1-W)*cosine, both min-max normalised (default 0)",
    )

    group = parser.add_argument_group("classification / clustering")
    group.add_argument("--train-data", default=None, metavar="PATH", help="fit the classifier on this file")
    group.add_argument(
        "--n-folds", type=positive_int, default=5, help="cross-validation folds when there is no train data"
    )
    group.add_argument(
        "--n-clusters", type=positive_int, default=None, help="k for k-means (default: number of labels)"
    )
    group.add_argument("--seed", type=int, default=42)

    group = parser.add_argument_group("mteb (needs `pip install 'gte-st[mteb]'` and Hub access)")
    group.add_argument("--mteb-tasks", nargs="+", default=None, metavar="NAME", help="e.g. STSBenchmark SciFact")
    group.add_argument("--mteb-task-types", nargs="+", default=None, metavar="TYPE", help="e.g. Retrieval STS")
    group.add_argument("--mteb-languages", nargs="+", default=None, metavar="LANG", help="ISO 639-3, e.g. eng")
    group.add_argument("--list-tasks", action="store_true", help="list the selected mteb tasks and exit")
    group.add_argument("--output-folder", default="mteb-results", help="where mteb writes its result files")
    return parser


def format_table(results: list[EvalResult]) -> str:
    """A plain-text table: one row per result, metrics in percent."""
    header = ["task", "dataset", "split", "main", "metrics (%)"]
    rows = [
        [
            r.task_type,
            r.dataset,
            r.split,
            f"{r.main_score} {100 * r.score:.2f}",
            "  ".join(f"{k} {100 * v:.2f}" for k, v in r.metrics.items() if k != r.main_score),
        ]
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _run_task(args: Any, model: Any, path: str) -> EvalResult:
    from gte_st import evaluation as ev

    common: dict[str, Any] = {
        "batch_size": args.batch_size, "precision": args.precision, "compile": args.compile, "dataset": args.dataset,
    }  # fmt: skip
    if args.task == "retrieval":
        return ev.evaluate_retrieval(
            model, path, split=args.split or "test", cache_dir=args.cache_dir, max_corpus=args.max_corpus,
            max_queries=args.max_queries or args.max_samples, retriever=args.retriever,
            bm25_rerank=args.bm25_rerank, bm25_weight=args.bm25_weight, **common,
        )  # fmt: skip
    common.update({"split": args.split, "max_samples": args.max_samples})
    if args.task == "classification":
        return ev.evaluate_classification(
            model, path, train_path=args.train_data, n_folds=args.n_folds, seed=args.seed, **common
        )
    if args.task == "clustering":
        return ev.evaluate_clustering(model, path, n_clusters=args.n_clusters, seed=args.seed, **common)
    functions: dict[str, Callable[..., EvalResult]] = {
        "sts": ev.evaluate_sts,
        "pair-classification": ev.evaluate_pair_classification,
        "reranking": ev.evaluate_reranking,
    }
    return functions[args.task](model, path, **common)


def _run_mteb(args: Any) -> int:
    from gte_st.evaluation import mteb_runner

    mteb_runner.import_mteb()
    if args.list_tasks:
        for name, task_type in mteb_runner.list_tasks(args.mteb_tasks, args.mteb_task_types, args.mteb_languages):
            print(f"{task_type}\t{name}")
        return 0
    tasks = mteb_runner.get_tasks(args.mteb_tasks, args.mteb_task_types, args.mteb_languages)
    model = load_model(
        args.model, device=args.device, max_seq_length=args.max_seq_length, trust_remote_code=args.trust_remote_code
    )
    mteb_runner.run_mteb(model, tasks, args.output_folder)
    print(f"mteb results written under {args.output_folder}")
    return 0


def main(argv: list[str]) -> int:
    from gte_st.search import check_bm25_weight

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    check_compile(parser, args)
    check_outputs(
        {"--output": args.output, "--cache-dir": args.cache_dir, "--output-folder": args.output_folder},
        {"model": args.model, "data": args.data, "--train-data": args.train_data},
    )
    if args.task == "mteb":
        if args.compile:
            parser.error("--compile is not supported with --task mteb (mteb encodes through the model itself)")
        return _run_mteb(args)
    if not args.data:
        parser.error(f"--data is required for --task {args.task}")
    if args.bm25_rerank is not None and args.task != "retrieval":
        parser.error("--bm25-rerank K needs --task retrieval")
    try:
        check_bm25_weight(args.bm25_weight, args.bm25_rerank, "--bm25-rerank K")
    except ValueError as exc:
        parser.error(f"--bm25-weight: {exc}")
    if args.retriever == "bm25" and args.bm25_rerank:
        parser.error("--retriever bm25 and --bm25-rerank are exclusive (the latter re-scores BM25 with the model)")
    model = None
    if not (args.task == "retrieval" and args.retriever == "bm25"):
        model = load_model(
            args.model, device=args.device, max_seq_length=args.max_seq_length, trust_remote_code=args.trust_remote_code,
            backend=args.backend, file_name=args.file_name, torch_precision=args.precision,
        )  # fmt: skip
    results = [_run_task(args, model, path) for path in args.data]
    print(format_table(results))
    for result in results:
        if first := result.details.get("first_stage"):
            scores = "  ".join(f"{k} {100 * v:.2f}" for k, v in first.items() if k != "retriever")
            print(
                f"{result.dataset}: first stage ({first['retriever']}, top {result.details['bm25_rerank']}): {scores}"
            )
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(output, {"model": args.model, "results": [r.to_dict() for r in results]})
        print(f"results written to {output}")
    return 0
