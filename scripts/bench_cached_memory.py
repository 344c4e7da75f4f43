"""Peak memory of one training step vs batch size: CachedLoss(NormalizedMSELoss) (fixed mini-batch) vs NormalizedMSELoss,
with sentence-transformers' CachedMultipleNegativesRankingLoss alongside.

Each (loss, batch size) runs in a fresh process: load the model, run one forward + backward on real STS-B/SNLI
pairs, and report the growth of the process's peak RSS over its RSS after the model was loaded.

    python scripts/bench_cached_memory.py --batches 32,256,1024,4096 --uncached-max 512 --max-seq-length 32
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_step(loss_name: str, batch_size: int, mini_batch_size: int, max_seq_length: int) -> dict:
    import torch
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    import gte_st
    from gte_st.losses import CachedLoss, NormalizedMSELoss

    torch.manual_seed(0)
    model = gte_st.build_model(max_seq_length=max_seq_length)
    pairs = []
    with open(DATA / "snli_devtest" / "triplets_from_devtest.tsv", encoding="utf8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            pairs.append((row["anchor"], row["positive"]))
    pairs = (pairs * (batch_size // len(pairs) + 1))[:batch_size]
    loss = {
        "gte-st NormalizedMSELoss": lambda: NormalizedMSELoss(model),
        "gte-st CachedLoss(NormalizedMSELoss)": lambda: CachedLoss(
            model, NormalizedMSELoss(model), mini_batch_size=mini_batch_size
        ),
        "st CachedMultipleNegativesRankingLoss": lambda: CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=mini_batch_size
        ),
    }[loss_name]()
    features = [model.preprocess([a for a, _ in pairs]), model.preprocess([p for _, p in pairs])]
    model.train()
    before = rss_mib()
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(features, None)
    value.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"loss": loss_name, "batch_size": batch_size, "step_s": round(seconds, 1),
            "rss_after_load_mib": round(before), "peak_rss_mib": round(peak), "step_growth_mib": round(peak - before)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="32,256,1024,4096")
    parser.add_argument("--uncached-max", type=int, default=512, help="largest batch for the uncached loss")
    parser.add_argument("--mini-batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=32)
    parser.add_argument(
        "--losses",
        default="gte-st CachedLoss(NormalizedMSELoss),gte-st NormalizedMSELoss,st CachedMultipleNegativesRankingLoss",
    )
    parser.add_argument("--child", nargs=2, metavar=("LOSS", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--output", default="bench_cached_memory.json")
    args = parser.parse_args()
    if args.child:
        result = one_step(args.child[0], int(args.child[1]), args.mini_batch_size, args.max_seq_length)
        print("RESULT " + json.dumps(result), flush=True)
        return

    from gte_st.hardware import describe_cpu, run_record

    # run_record imports torch here; a child's ru_maxrss starts at this process's peak RSS (Linux carries it over
    # exec), which every child passes anyway, since each imports torch itself and loads a model on top of it.
    run = run_record()
    print(f"{run['date']}, load average {run['loadavg_at_start'][0]:.2f}; {run['machine']}, {describe_cpu()}; "
          + ", ".join(f"{name} {version}" for name, version in run["versions"].items()), flush=True)  # fmt: skip
    results = []
    for loss_name in args.losses.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            if "Cached" not in loss_name and batch > args.uncached_max:
                continue
            command = [sys.executable, __file__, "--child", loss_name, str(batch),
                       "--mini-batch-size", str(args.mini_batch_size), "--max-seq-length", str(args.max_seq_length)]  # fmt: skip
            out = subprocess.run(command, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{loss_name} batch {batch}: failed\n{out.stderr[-1500:]}")
                continue
            results.append(json.loads(line[7:]))
            print(results[-1], flush=True)
            Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
