#!/usr/bin/env python
"""Query latency: milliseconds to embed one query at a time, median and p90 per path, stock ``model.encode`` against
every path ``backend="auto"`` / ``precision="auto"`` may pick, interleaved, on the offline all-MiniLM-L6-v2.

    python scripts/bench_query_latency.py --output docs/results/query_latency.json
    python scripts/bench_query_latency.py --isa avx512_vnni --output docs/results/query_latency_vnni.json

Each call embeds one SciFact claim (``--calls`` claims, each once: retrieval in front of an LLM sees new texts, and
their token lengths recur only now and then); after ``--warmup`` calls per path on other claims, the paths take turns
call by call, the order rotating, so every path sees the same machine load. Reported per path: median, p90, p99 and
maximum milliseconds, the median of the calls whose token length the run had not seen before against the others
(OpenVINO's dynamic-shape compilation builds kernels per new input shape), and the ratio of the median to stock
fp32's.

Paths:

=====================  =====================================================================================
stock-fp32             ``model.encode([q], normalize_embeddings=True)`` (the baseline)
stock-bf16-autocast    the same under ``torch.autocast("cpu", torch.bfloat16)`` (native ISA only)
gte-fp32 / gte-bf16 /  ``gte_st.encoding.encode(model, [q], precision=...)`` (the bf16 rows native only)
gte-bf16-autocast
gte-auto               ``encode(model, [q])``: ``precision="auto"``, as calibrated on this CPU (the pick is named)
<variant>              each artifact ``gte_st.export.export`` wrote into a temporary copy of the model (``--exports``:
                       ``openvino-int8-search`` = ``--format openvino --quantize int8-static --down-projections
                       search``, which also writes the fp32 IR; ``onnx`` = ``onnx/model.onnx`` + ``model_O2.onnx``),
                       loaded as ``backend="auto"`` would load it, through ``encode``
backend-auto           ``encode(load_model_dir(copy, backend="auto"), [q])`` (the choice and its reason are recorded)
=====================  =====================================================================================

``--isa avx512_vnni`` stands for a CPU without AMX and AVX512-BF16, as in scripts/bench_serving.py (set before any
library loads; ``gte_st.hardware.cpu_supports_bf16`` and OpenVINO's default precision follow it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"  # the data folder beside the checkout
ISA_ENV = {"avx512_vnni": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI", "MKL_ENABLE_INSTRUCTIONS": "AVX512_E1"}}
EXPORTS = {
    "openvino-int8-search": {"format": "openvino", "quantize": "int8-static", "down_projections": "search"},
    "onnx": {"format": "onnx", "quantize": "none"},
}


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear interpolation between the two nearest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the offline all-MiniLM-L6-v2)")
    parser.add_argument("--queries", type=Path, default=DATA / "beir_scifact" / "queries.jsonl")
    parser.add_argument("--calls", type=int, default=150, help="timed calls per path, one new query each")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per path first (other queries)")
    parser.add_argument("--exports", nargs="*", default=["openvino-int8-search"], choices=list(EXPORTS))
    parser.add_argument("--isa", choices=["native", *ISA_ENV], default="native")
    parser.add_argument("--output", type=Path, help="JSON results (e.g. docs/results/query_latency.json)")
    args = parser.parse_args()

    isa_env = ISA_ENV.get(args.isa, {})
    os.environ.update(isa_env)  # before torch / OpenVINO / MKL load
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    os.environ["GTE_ST_CACHE"] = str(work / "cache")  # this run calibrates "auto" afresh
    import shutil

    import torch
    from sentence_transformers import SentenceTransformer

    import gte_st
    from gte_st.encoding import encode, resolve_precision
    from gte_st.export import export, load_model_dir
    from gte_st.export.auto import choose_backend, load_candidate
    from gte_st.export.manifest import usable_artifacts
    from gte_st.hardware import cpu_supports_bf16, load_average, run_record

    with args.queries.open(encoding="utf8") as f:
        queries = [json.loads(line)["text"] for line in f]
    if len(queries) < args.calls + args.warmup:
        parser.error(f"{args.queries} holds {len(queries)} queries, fewer than --calls + --warmup")
    timed, warm = queries[: args.calls], queries[args.calls : args.calls + args.warmup]
    limited = args.isa != "native"
    report: dict = {
        **run_record(["onnxruntime", "openvino", "nncf"]),
        "bf16_native": cpu_supports_bf16(),
        "isa": args.isa,
        "isa_env": isa_env,
        "calls": args.calls,
    }
    try:
        model_dir = work / "model"
        shutil.copytree(Path(args.model or gte_st.default_base_model()), model_dir)
        for name in args.exports:
            start = time.perf_counter()
            export(model_dir, **EXPORTS[name])
            print(f"exported {name} in {time.perf_counter() - start:.0f} s", flush=True)
        stock = SentenceTransformer(str(model_dir), device="cpu")
        paths = {"stock-fp32": lambda q: stock.encode([q], normalize_embeddings=True)}
        precisions = ["fp32"] if limited else ["fp32", "bf16", "bf16-autocast"]
        if not limited:

            def stock_autocast(q: str):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return stock.encode([q], normalize_embeddings=True)

            paths["stock-bf16-autocast"] = stock_autocast
        for precision in precisions:
            paths[f"gte-{precision}"] = lambda q, p=precision: encode(stock, [q], precision=p)
        report["gte_auto_precision"] = resolve_precision("auto", stock)
        paths["gte-auto"] = lambda q: encode(stock, [q])
        usable, rejected = usable_artifacts(model_dir)
        report["rejected_artifacts"] = rejected
        for record in usable:
            artifact = load_candidate(model_dir, record)
            paths[record.variant] = lambda q, m=artifact: encode(m, [q])
        choice = choose_backend(model_dir)
        report["backend_auto"] = {
            "variant": choice.variant,
            "precision": choice.precision,
            "reason": choice.describe(),
        }
        auto_model = load_model_dir(model_dir, backend="auto")
        paths["backend-auto"] = lambda q: encode(auto_model, [q])
        print(f"backend auto: {choice.describe()}", flush=True)

        for fn in paths.values():
            for query in warm:
                fn(query)
        names = list(paths)
        times: dict[str, list[float]] = {name: [] for name in names}
        for index, query in enumerate(timed):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                paths[name](query)
                times[name].append((time.perf_counter() - start) * 1000)
        lengths = [len(ids) for ids in stock.tokenizer(timed)["input_ids"]]
        seen: set[int] = set()
        first_seen = []
        for length in lengths:
            first_seen.append(length not in seen)
            seen.add(length)
        stock_median = statistics.median(times["stock-fp32"])
        results = {}
        for name, values in times.items():
            new = [t for t, first in zip(values, first_seen) if first]
            again = [t for t, first in zip(values, first_seen) if not first]
            results[name] = {
                "median_ms": round(statistics.median(values), 2),
                "p90_ms": round(percentile(values, 90), 2),
                "p99_ms": round(percentile(values, 99), 2),
                "max_ms": round(max(values), 2),
                "median_ms_new_length": round(statistics.median(new), 2) if new else None,
                "median_ms_seen_length": round(statistics.median(again), 2) if again else None,
                "x_stock_fp32_speed": round(stock_median / statistics.median(values), 2),
            }
        report["distinct_lengths"] = len(seen)
        report["results"] = results
        report["stock_p90_ms"] = results["stock-fp32"]["p90_ms"]
        # every path an "auto" may pick: the gte-st torch precisions and the verified artifacts
        report["p90_at_or_below_stock_p90"] = {
            name: r["p90_ms"] <= report["stock_p90_ms"] for name, r in results.items() if not name.startswith("stock")
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["loadavg_at_end"] = load_average()
    print(f"\n{args.calls} queries ({report['distinct_lengths']} distinct token lengths), ISA {args.isa}; load average "
          f"{report['loadavg_at_start'][0]} at start, {report['loadavg_at_end'][0]} at end")  # fmt: skip
    print(f"{'path':<26} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8} {'new len':>8} {'seen len':>9} {'x stock':>8}")
    for name, r in results.items():
        print(f"{name:<26} {r['median_ms']:>8.1f} {r['p90_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} "
              f"{r['median_ms_new_length'] or 0:>8.1f} {r['median_ms_seen_length'] or 0:>9.1f} "
              f"{r['x_stock_fp32_speed']:>8.2f}")  # fmt: skip
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
