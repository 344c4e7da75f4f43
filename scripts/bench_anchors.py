#!/usr/bin/env python
"""Correctness anchors: `gte-st eval` with the offline all-MiniLM-L6-v2 copy must reproduce the published
STS-B test Spearman (82.03 +- 0.1) and SciFact test nDCG@10 (64.51 +- 0.2).

    python scripts/bench_anchors.py [--output anchors.json] [--cache-dir DIR]

Runs the two evaluations through the CLI entry point (fp32, the evaluation default), prints the table and exits
non-zero when a figure falls outside its tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ANCHORS = {  # (task, data, expected main score in %, tolerance)
    "STS-B test spearman": ("sts", "stsb/sts-test.csv", 82.03, 0.1),
    "SciFact test ndcg@10": ("retrieval", "beir_scifact", 64.51, 0.2),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--output", default=None)
    parser.add_argument("--cache-dir", default=None, help="corpus-embedding cache (default: a fresh temp dir)")
    args = parser.parse_args()

    import gte_st
    from gte_st import cli
    from gte_st.hardware import describe_cpu, run_record

    model = gte_st.default_base_model()
    run = run_record()
    print(f"# {run['date']}  load average at start: {run['loadavg_at_start']}  ({run['command']})")
    print(f"# {run['machine']}, {describe_cpu()}, {run['torch_threads']} torch threads; "
          + ", ".join(f"{name} {version}" for name, version in run["versions"].items()))  # fmt: skip
    report, ok = {}, True
    with tempfile.TemporaryDirectory() as tmp:
        for name, (task, data, expected, tolerance) in ANCHORS.items():
            out = Path(tmp) / f"{task}.json"
            argv = [model, "--task", task, "--data", str(Path(args.data_root) / data), "--output", str(out)]
            if task == "retrieval":
                argv += ["--cache-dir", args.cache_dir or str(Path(tmp) / "cache")]
            start = time.perf_counter()
            if cli.main(["eval", *argv]) != 0:
                return 1
            result = json.loads(out.read_text())["results"][0]
            got = 100 * result["metrics"][result["main_score"]]
            passed = abs(got - expected) <= tolerance
            ok &= passed
            report[name] = {
                "expected": expected,
                "tolerance": tolerance,
                "measured": round(got, 2),
                "passed": passed,
                "runtime_s": round(time.perf_counter() - start, 1),
                "result": result,
            }
            print(f"{name}: {got:.2f} (expected {expected} +- {tolerance}) {'OK' if passed else 'FAIL'}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
