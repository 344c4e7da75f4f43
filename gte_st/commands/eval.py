"""``gte-st eval MODEL --task TASK --data PATH``: evaluate a model on local files, print a table, write JSON."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gte_st.commands._args import (
    ArgumentParser,
    add_backend_arguments,
    add_compile_argument,
    add_precision_argument,
    add_truncate_dim_argument,
    check_compile,
    check_outputs,
    existing_path,
    load_model,
    positive_int,
)
from gte_st.errors import UsageError
from gte_st.evaluation.result import EvalResult
from gte_st.files import atomic_write_json


def build_parser() -> ArgumentParser:
    import argparse

    parser = ArgumentParser(
        prog="gte-st eval",
        description="Evaluate a sentence-transformers model (a local directory, or a Hub id when the Hub is "
        "reachable) on local data files. Metrics are printed as a table and written as JSON with --output.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="model directory or Hugging Face Hub id")
    from gte_st.registry import EVAL_TASKS

    parser.add_argument(
        "--task", required=True, choices=EVAL_TASKS.names(), help=f"task type: {EVAL_TASKS.help_table()}"
    )
    formats = "; ".join(f"{name}: {EVAL_TASKS.entry(name).metadata['data']}" for name in EVAL_TASKS)
    parser.add_argument(
        "--data", nargs="+", type=existing_path, default=[], metavar="PATH",
        help=f"data file(s) or folder(s) -- {formats}",
    )  # fmt: skip
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
    add_truncate_dim_argument(parser)

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

    group = parser.add_argument_group(
        "mteb (needs `pip install 'gte-st[mteb]'`; Hub access unless --mteb-data gives the data)"
    )
    group.add_argument("--mteb-tasks", nargs="+", default=None, metavar="NAME", help="e.g. STSBenchmark SciFact")
    group.add_argument(
        "--mteb-data",
        nargs="+",
        type=existing_path,
        default=None,
        metavar="PATH",
        help="local data for each of --mteb-tasks, in order: a BEIR folder (Retrieval), an STS file (STS), a labelled "
        "file (Classification), read as --data is; mteb evaluates it without the Hub (--split, --max-samples, "
        "--max-corpus and --train-data apply)",
    )
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
    """One evaluator of :data:`gte_st.registry.EVAL_TASKS` on one data path, with the options its entry names.
    ``model`` may be a loader: evaluators read their data before they load it."""
    from gte_st.registry import EVAL_TASKS

    entry = EVAL_TASKS.entry(args.task)
    options = {keyword: getattr(args, dest) for keyword, dest in entry.metadata["options"].items()}
    common = {"batch_size": args.batch_size, "precision": args.precision, "compile": args.compile}
    return entry.load()(model, path, dataset=args.dataset, **common, **options)


def _run_mteb(args: Any) -> int:
    from gte_st.evaluation import mteb_runner

    mteb_runner.import_mteb()
    if args.list_tasks:
        for name, task_type in mteb_runner.list_tasks(args.mteb_tasks, args.mteb_task_types, args.mteb_languages):
            print(f"{task_type}\t{name}")
        return 0
    if args.mteb_data is None:
        tasks = mteb_runner.get_tasks(args.mteb_tasks, args.mteb_task_types, args.mteb_languages)
    else:
        if not args.mteb_tasks or args.mteb_task_types or args.mteb_languages:
            raise UsageError("--mteb-data needs the tasks named one by one with --mteb-tasks (no types or languages)")
        if len(args.mteb_data) != len(args.mteb_tasks):
            raise UsageError(
                f"--mteb-data gives {len(args.mteb_data)} path(s) for {len(args.mteb_tasks)} task(s) of --mteb-tasks: "
                "one path per task, in the same order"
            )
        tasks = [
            mteb_runner.load_local_data(
                mteb_runner.get_tasks([name])[0], path, split=args.split, train_path=args.train_data,
                max_samples=args.max_queries, max_corpus=args.max_corpus,
            )
            for name, path in zip(args.mteb_tasks, args.mteb_data)
        ]  # fmt: skip
    model = load_model(
        args.model, device=args.device, max_seq_length=args.max_seq_length, trust_remote_code=args.trust_remote_code,
        truncate_dim=args.truncate_dim,
    )  # fmt: skip
    name, revision = mteb_runner.model_identity(model, args.model)
    results = mteb_runner.run_mteb(model, tasks, args.output_folder, name, revision)
    for task_result in getattr(results, "task_results", []):
        for split, scores in task_result.scores.items():
            main = [f"{100 * s['main_score']:.2f}" for s in scores]
            print(f"{task_result.task_name}\t{split}\tmain score {' '.join(main)}")
    print(f"mteb results written under {Path(args.output_folder) / 'results' / name.replace('/', '__') / revision}")
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
    if args.max_queries is None:
        args.max_queries = args.max_samples  # retrieval's --max-samples counts queries
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
    loaded: list[Any] = []

    def model_loader() -> Any:
        """Loads the model once, when the first evaluator has read and checked its data (a bad file fails first)."""
        if not loaded:
            loaded.append(load_model(
                args.model, device=args.device, max_seq_length=args.max_seq_length,
                trust_remote_code=args.trust_remote_code, backend=args.backend, file_name=args.file_name,
                truncate_dim=args.truncate_dim, torch_precision=args.precision,
            ))  # fmt: skip
        return loaded[0]

    needs_model = not (args.task == "retrieval" and args.retriever == "bm25")
    results = [_run_task(args, model_loader if needs_model else None, path) for path in args.data]
    model = loaded[0] if loaded else None
    if model is not None and model.truncate_dim is not None:
        for result in results:
            result.details["truncate_dim"] = model.truncate_dim
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
