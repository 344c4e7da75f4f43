#!/usr/bin/env python
"""Query latency: milliseconds to embed one short query, stock ``model.encode`` (fp32) against
``gte_st.encoding.encode`` (bf16 and fp32), interleaved, on the offline all-MiniLM-L6-v2.

    python scripts/bench_query_latency.py [--calls 40]

Each call embeds one query (the first ``--queries`` SciFact test queries in turn); after 5 warm-up calls per path the
paths alternate call by call; the median per path and its ratio to stock fp32 are printed (and written as JSON with
``--output``). Results: docs/benchmarks.md (serving).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"  # the data folder beside the checkout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=Path, default=DATA / "beir_scifact" / "queries.jsonl")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    import gte_st
    from gte_st.encoding import encode

    with args.queries.open(encoding="utf8") as f:
        queries = [json.loads(line)["text"] for line, _ in zip(f, range(args.calls))]
    model = SentenceTransformer(str(gte_st.default_base_model()), device="cpu")
    paths = {
        "stock-fp32": lambda q: model.encode([q], normalize_embeddings=True),
        "gte-fp32": lambda q: encode(model, [q], precision="fp32"),
        "gte-bf16": lambda q: encode(model, [q], precision="bf16"),
    }
    for fn in paths.values():
        for query in queries[:5]:
            fn(query)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for index in range(args.calls):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn(queries[index % len(queries)])
            times[name].append((time.perf_counter() - start) * 1000)
    stock = statistics.median(times["stock-fp32"])
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "calls": args.calls,
        "median_ms": {name: round(statistics.median(t), 2) for name, t in times.items()},
        "x_stock_fp32_speed": {name: round(stock / statistics.median(t), 2) for name, t in times.items()},
    }
    print(json.dumps(report, indent=1))
    if args.output:
        args.output.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
