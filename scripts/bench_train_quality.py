"""Benchmark 1: training quality on the same data and budget, gte-st vs sentence-transformers losses.

From the offline all-MiniLM-L6-v2, each arm trains with the same steps, batch size, max length and learning rate on
the same sources (SciFact *train* claims -> cited abstracts, weak SciFact title -> abstract pairs, SNLI-derived
triplets), through the same `gte-st train` pipeline (one source per batch, p ~ n^0.5):

  mse     gte-st NormalizedMSELoss (defaults)
  mnrl    sentence-transformers MultipleNegativesRankingLoss
  gte     sentence-transformers MultipleNegativesRankingLoss, four GTE directions, joint partition
  recipe  gte-st's full recipe: stage 1 weak title -> abstract pairs, stage 2 claims + SNLI triplets with hard
          negatives mined from the stage-1 model, NormalizedMSELoss; the two stages share the same total budget

Every model (and the base model) is scored on STS-B test, SICK-R test and SciFact test nDCG@10 (full corpus) with
gte_st.evaluation. Writes a JSON file, a Markdown table and a PNG plot.

    python scripts/bench_train_quality.py --steps 60 --batch-size 32 --max-seq-length 128 --out-dir bench-quality
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", encoding="utf8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def prepare_data(work: Path) -> dict[str, Path]:
    """Training files from ../shared/data (train-side data only; no test qrels)."""
    work.mkdir(parents=True, exist_ok=True)
    corpus = {}
    with gzip.open(DATA / "beir_scifact" / "corpus.jsonl.gz", "rt", encoding="utf8") as f:
        for line in f:
            doc = json.loads(line)
            corpus[doc["_id"]] = (doc["title"].strip(), doc["text"].strip())
    queries = {}
    with open(DATA / "beir_scifact" / "queries.jsonl", encoding="utf8") as f:
        for line in f:
            query = json.loads(line)
            queries[query["_id"]] = query["text"]
    claims = []
    with open(DATA / "beir_scifact" / "qrels" / "train.tsv", encoding="utf8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            title, text = corpus[row["corpus-id"]]
            claims.append({"anchor": queries[row["query-id"]], "positive": f"{title} {text}"})
    titles = [{"anchor": title, "positive": text} for title, text in corpus.values() if title and text]
    triplets = []
    with open(DATA / "snli_devtest" / "triplets_from_devtest.tsv", encoding="utf8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            triplets.append({"anchor": row["anchor"], "positive": row["positive"], "negative": row["negative"]})
    return {
        "claims": write_jsonl(work / "scifact_claims.jsonl", claims),
        "titles": write_jsonl(work / "scifact_titles.jsonl", titles),
        "snli": write_jsonl(work / "snli_triplets.jsonl", triplets),
    }


def train(arm: str, files: dict[str, Path], args: argparse.Namespace, out: Path) -> tuple[Path, float]:
    out.parent.mkdir(parents=True, exist_ok=True)
    common = [
        "--per_device_train_batch_size", str(args.batch_size), "--max_seq_length", str(args.max_seq_length),
        "--learning_rate", str(args.lr), "--seed", "42", "--save_steps", "100000", "--logging_steps", "10",
        "--precision", args.precision, *(["--base_model", args.base_model] if args.base_model else []),
    ]  # fmt: skip
    all_sources = [f"claims={files['claims']}", f"titles={files['titles']}", f"snli={files['snli']}"]
    if arm == "recipe":
        pretrain_steps = max(1, round(args.steps * 0.3))
        recipe = {
            "output_dir": str(out),
            "stages": [
                {
                    "name": "pretrain",
                    "data": [f"titles={files['titles']}"],
                    "loss": "mse",
                    "max_steps": pretrain_steps,
                },
                {
                    "name": "finetune",
                    "data": [f"claims={files['claims']}", f"snli={files['snli']}"],
                    "loss": "mse",
                    "mine_hard_negatives": True,
                    "max_steps": args.steps - pretrain_steps,
                },
            ],
        }
        config = out.parent / "recipe.json"
        config.write_text(json.dumps(recipe, indent=2))
        command = ["--config", str(config), *common]
    else:
        command = ["--data", *all_sources, "--loss", arm, "--max_steps", str(args.steps), "--output_dir", str(out),
                   *common]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "gte_st.train", *command], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    (out.parent / f"{arm}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"arm {arm} failed:\n{result.stderr[-3000:]}")
    return out, elapsed


def evaluate(model_path: str, args: argparse.Namespace) -> dict[str, float]:
    from sentence_transformers import SentenceTransformer

    from gte_st.evaluation import evaluate_retrieval, evaluate_sts

    model = SentenceTransformer(model_path)
    model.max_seq_length = args.eval_max_seq_length
    sts = evaluate_sts(model, DATA / "stsb" / "sts-test.csv", precision=args.eval_precision)
    sick = evaluate_sts(model, DATA / "sick" / "SICK_test_annotated.txt", precision=args.eval_precision)
    scifact = evaluate_retrieval(
        model, DATA / "beir_scifact", split="test", precision=args.eval_precision, max_corpus=args.eval_max_corpus
    )
    return {
        "stsb_test_spearman": round(100 * sts.metrics["spearman"], 2),
        "sickr_test_spearman": round(100 * sick.metrics["spearman"], 2),
        "scifact_test_ndcg@10": round(100 * scifact.metrics["ndcg_at_10"], 2),
    }


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install gte-st[plot])")
        return
    names = list(results["scores"])
    metrics = list(results["scores"][names[0]])
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [results["scores"][name][m] for m in metrics]
        ax.bar([x + i * width for x in range(len(metrics))], values, width, label=name)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(metrics))], metrics)
    ax.set_ylim(min(min(s.values()) for s in results["scores"].values()) - 5, 100)
    ax.legend()
    ax.set_title(f"MiniLM-L6 fine-tuned, {results['settings']['steps']} steps x {results['settings']['batch_size']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--precision", default="auto", help="training precision")
    parser.add_argument("--eval-max-seq-length", type=int, default=256, help="all-MiniLM-L6-v2's own setting")
    parser.add_argument("--eval-precision", default="bf16", help="evaluation encode precision (fp32 for anchors)")
    parser.add_argument("--arms", default="mse,mnrl,gte,recipe")
    parser.add_argument("--base-model", default=None, help="default: the offline all-MiniLM-L6-v2 copy")
    parser.add_argument("--eval-max-corpus", type=int, default=None, help="smoke tests only: SciFact sub-corpus")
    parser.add_argument("--out-dir", default="bench-quality")
    args = parser.parse_args()

    out_dir = Path(args.out_dir).resolve()
    files = prepare_data(out_dir / "data")
    import gte_st

    results: dict = {
        "settings": vars(args),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_at_start": os.getloadavg()[0],
        "sources": {name: sum(1 for _ in open(path, encoding="utf8")) for name, path in files.items()},
        "scores": {},
        "train_seconds": {},
    }
    results_file = out_dir / "results.json"
    results["scores"]["base"] = evaluate(args.base_model or gte_st.default_base_model(), args)
    print("base", results["scores"]["base"], flush=True)
    for arm in args.arms.split(","):
        model_dir, seconds = train(arm, files, args, out_dir / "models" / arm)
        results["scores"][arm] = evaluate(str(model_dir), args)
        results["train_seconds"][arm] = round(seconds, 1)
        print(arm, results["scores"][arm], f"{seconds:.0f}s", flush=True)
        results_file.write_text(json.dumps(results, indent=2))

    metrics = list(results["scores"]["base"])
    lines = ["| model | " + " | ".join(metrics) + " | train s |", "|---" * (len(metrics) + 2) + "|"]
    for name, scores in results["scores"].items():
        seconds = results["train_seconds"].get(name, "")
        lines.append(f"| {name} | " + " | ".join(f"{scores[m]:.2f}" for m in metrics) + f" | {seconds} |")
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, out_dir / "quality.png")


if __name__ == "__main__":
    main()
