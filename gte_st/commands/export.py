"""``gte-st export MODEL [--format onnx|openvino] [--quantize ...]``: export a model, each variant verified first.

Examples::

    gte-st export my-gte                                          # onnx/model.onnx + fused onnx/model_O2.onnx
    gte-st export my-gte --quantize int8-static --calibration texts.txt
    gte-st export my-gte --format openvino --quantize int8-static # openvino/openvino_model{,_qint8_quantized}.xml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gte_st.commands._args import ArgumentParser, check_outputs, positive_int
from gte_st.loading import check_model_location
from gte_st.registry import EXPORT_VARIANTS, export_formats, export_quantize_choices


def _threshold(value: str) -> tuple[str, float]:
    import argparse

    name, sep, number = value.partition("=")
    try:
        return name.strip(), float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. int8=0.97), got {value!r}") from None


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="gte-st export",
        description="Export a model to ONNX or OpenVINO IR (fp32, fused, int8 dynamic/static, bf16); every variant "
        "is compared with the torch model (minimum cosine over short, long and non-English texts) and written only "
        "if it passes.",
    )
    parser.add_argument("model_dir", help="saved sentence-transformers / GTE model directory")
    parser.add_argument("--format", choices=export_formats(), default=None, help="artifact format (default onnx)")
    parser.add_argument(
        "--quantize",
        choices=export_quantize_choices(),
        default="none",
        help="also write a quantised variant: "
        + "; ".join(
            f"{entry.name} ({entry.help})"
            for entry in map(EXPORT_VARIANTS.entry, EXPORT_VARIANTS)
            if entry.metadata.get("quantize")
        ),
    )
    parser.add_argument(
        "--no-optimize",
        action="store_true",
        help="ONNX: skip the fused onnx/model_O2.onnx (ORT transformer optimizer)",
    )
    parser.add_argument(
        "--calibration",
        help="static int8: texts to calibrate on, a corpus file (txt: one per line; jsonl[.gz], json, csv, tsv, "
        "parquet: a text field; a BEIR folder)",
    )
    parser.add_argument("--calibration-size", type=positive_int, default=200, help="calibration texts used")
    parser.add_argument(
        "--down-projections",
        choices=["float", "search"],
        default="float",
        help="OpenVINO int8-static: keep the feed-forward down-projections in float (default), or 'search': "
        "split their inputs' outlier channels and quantise as many as the model tolerates, chosen by measurement "
        "(3 NNCF runs, up to 2 more per layer if not all pass; faster on CPUs without AMX)",
    )
    parser.add_argument("--sample", help="texts for the parity check, a corpus file as --calibration reads")
    parser.add_argument(
        "--threshold",
        type=_threshold,
        action="append",
        default=[],
        metavar="NAME=MIN_COSINE",
        help="override a parity threshold, by class (fp32, bf16, int8) or variant (onnx-int8-dynamic)",
    )
    parser.add_argument("--sts", help="STS file to report the quality delta on (e.g. stsb/sts-test.csv)")
    parser.add_argument("--retrieval", help="BEIR folder to report the nDCG@10 delta on (e.g. beir_scifact)")
    parser.add_argument("--max-corpus", type=positive_int, help="limit the BEIR corpus to N documents for speed")
    parser.add_argument("--opset", type=positive_int, default=17)
    parser.add_argument("--report", help="write the export report as JSON to this file")
    return parser


def _format(report) -> str:
    line = (
        f"{report.variant:<22} {'ok' if report.written else 'REFUSED':<7}  min cos {report.min_cosine:.5f} "
        f"(threshold {report.threshold}, mean {report.mean_cosine:.5f})  {report.size_mb} MB  {report.file_name}"
    )
    if not report.written:
        line += f"\n{'':<22} worst text: {report.worst_text!r}"
    for task, scores in report.quality.items():
        line += (
            f"\n{'':<22} {task}: torch {scores['torch']:.4f}  exported {scores['exported']:.4f}  "
            f"delta {scores['delta']:+.4f}"
        )
    return line


def _how_to_load(model_dir: str, file_name: str) -> str:
    from gte_st.export import backend_of

    backend = backend_of(file_name)
    d, f = json.dumps(model_dir), json.dumps(file_name)
    st = f'SentenceTransformer({d}, backend="{backend}", model_kwargs={{"file_name": {f}}})'
    needs = "optimum-onnx" if backend == "onnx" else "optimum-intel"
    return f"  {file_name}: gte_st.export.load_exported({d}, {f}), or where {needs} is installed: {st}"


def main(argv: list[str]) -> int:
    from gte_st.export import ExportParityError, export

    parser = build_parser()
    args = parser.parse_args(argv)
    check_model_location(args.model_dir)
    check_outputs(
        {"--report": args.report},
        {"model directory": args.model_dir, "--sample": args.sample, "--calibration": args.calibration,
         "--sts": args.sts, "--retrieval": args.retrieval},
    )  # fmt: skip
    sample = None
    if args.sample:
        from gte_st.export import read_texts

        sample = read_texts(args.sample)
    try:
        report = export(
            args.model_dir,
            args.format or "onnx",
            args.quantize,
            optimize=not args.no_optimize,
            calibration=args.calibration,
            calibration_size=args.calibration_size,
            sample=sample,
            sts=args.sts,
            retrieval=args.retrieval,
            max_corpus=args.max_corpus,
            opset=args.opset,
            thresholds=dict(args.threshold),
            down_projections=args.down_projections,
        )
    except ExportParityError as exc:
        for variant in exc.report.variants:
            print(_format(variant))
        if args.report:
            Path(args.report).write_text(json.dumps(exc.report.to_dict(), indent=2))
        print(f"gte-st export: error: {exc}", file=sys.stderr)
        return 1
    for variant in report.variants:
        print(_format(variant))
    print("load with:")
    for variant in report.variants:
        print(_how_to_load(str(args.model_dir), variant.file_name))
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2))
    return 0
