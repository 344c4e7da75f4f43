#!/usr/bin/env python
"""Chinese (and English) figures through `gte-st eval`, with each model's [UNK] share, and the Chinese recipe timed.

    python scripts/bench_chinese.py --output docs/results/chinese.json                 # the base model only
    python scripts/bench_chinese.py --train-seeds 1 2 3 --output docs/results/chinese.json

For every model: ``gte-st eval --task sts`` on STS-B-zh test, LCQMC test, BQ test (Spearman of cosine; LCQMC/BQ's 0/1
labels are the gold scores, as C-MTEB scores them), English STS-B test and SICK-R test, and ``gte-st eval --task
pair-classification`` on LCQMC and BQ test (average precision of cosine); the share of [UNK] among each set's tokens
(:func:`gte_st.vocabulary.unknown_token_shares`, on all its sentences). With ``--train-seeds`` each seed first runs
the Chinese recipe (scripts/recipes/chinese.sh, train splits only), timed: wall time, the CPU time of the run (user +
system, children included) and the load average, since the machine may be shared. Test splits are reported only; the
recipe's choices were made on STS-B-zh valid and English STS-B dev.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "recipes"))
from build_chinese_pairs import SOURCES as TRAIN_SETS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ZH = DATA / "zh_pairs"
STS_SETS = {
    "STS-B-zh": ZH / "stsb_zh" / "STS-B.test.data",
    "LCQMC": ZH / "lcqmc" / "test.txt",
    "BQ": ZH / "bq" / "test.csv",
    "STS-B": DATA / "stsb" / "sts-test.csv",
    "SICK-R": DATA / "sick" / "SICK_test_annotated.txt",
}
PAIR_SETS = {"LCQMC": STS_SETS["LCQMC"], "BQ": STS_SETS["BQ"]}
# The choice sets: the recipe's settings were chosen on these, never on a test split.
DEV_SETS = {"STS-B-zh valid": ZH / "stsb_zh" / "STS-B.valid.data", "STS-B dev": DATA / "stsb" / "sts-dev.csv"}


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # the recipe's `python`
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _gte_st(args: list[str], log: Path) -> None:
    with open(log, "a", encoding="utf8") as f:
        f.write(f"$ gte-st {' '.join(args)}\n")
        f.flush()
        subprocess.run([sys.executable, "-m", "gte_st.cli", *args], check=True, env=_env(), stdout=f, stderr=f)


def evaluate(model: str, work: Path, log: Path) -> dict:
    """Every set's scores and [UNK] share for ``model`` (a directory)."""
    from gte_st.evaluation.readers import read_sts
    from gte_st.loading import load
    from gte_st.vocabulary import unknown_token_shares

    results: dict[str, dict] = {}
    for task, sets in (("sts", STS_SETS), ("pair-classification", PAIR_SETS)):
        out = work / f"eval-{task}.json"
        _gte_st(["eval", model, "--task", task, "--data", *map(str, sets.values()), "--output", str(out)], log)
        for name, result in zip(sets, json.loads(out.read_text())["results"]):
            results.setdefault(name, {})[task] = {k: round(100 * v, 2) for k, v in result["metrics"].items()}
    tokenizer = load(model, device="cpu").tokenizer
    for name, path in STS_SETS.items():
        pairs = read_sts(path, split="test")
        shares = unknown_token_shares(tokenizer, {"all": pairs.sentences1 + pairs.sentences2}, sample_size=10**9)
        results[name]["unk_share"] = round(100 * shares["all"], 2)
    return results


def init_study(min_count: int, seed: int) -> dict:
    """STS-B-zh valid and English STS-B dev Spearman before any training: the base model, and the base model extended
    with the recipe's pieces (``--extend_vocab auto`` on its training texts) under each ``--extend_vocab_init``."""
    from gte_st.evaluation import evaluate_sts
    from gte_st.evaluation.readers import read_sts
    from gte_st.model import build_model, default_base_model
    from gte_st.vocabulary import INIT_METHODS, extend_vocabulary, unknown_pieces

    texts = [
        t for path in TRAIN_SETS.values() for pairs in [read_sts(path)] for t in pairs.sentences1 + pairs.sentences2
    ]
    results: dict[str, dict] = {}
    for init in ("base", *INIT_METHODS):
        model = build_model(default_base_model())
        if init != "base":
            counts = unknown_pieces(model.tokenizer, texts)
            tokens = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
            extension = extend_vocabulary(model, tokens, init=init, seed=seed)
            results.setdefault("added", len(extension.tokens))
        results[init] = {name: round(100 * evaluate_sts(model, path).score, 2) for name, path in DEV_SETS.items()}
        print(init, results[init], flush=True)
    return results


def choice(directory: Path) -> dict:
    """A trained variant's settings and its choice-set scores, from its ``training_summary.json``."""
    summary = json.loads((directory / "training_summary.json").read_text())
    keys = ("loss", "learning_rate", "steps", "per_device_batch_size", "max_seq_length")
    return {
        "seed": summary["seed"],
        "stages": [
            {
                **{key: stage[key] for key in keys},
                "data": {d["name"]: d["sampling_probability"] for d in stage["data"]},
            }
            for stage in summary["stages"]
        ],
        "vocabulary_extension": [
            {k: v for k, v in added.items() if k != "tokens_head"}
            for added in summary.get("vocabulary_extension") or []
        ],
        **{
            moment: {f"{r['dataset']} {r['split']}": round(100 * r["metrics"][r["main_score"]], 2) for r in results}
            for moment, results in summary["eval"].items()
        },
        "runtime_s": summary["total_runtime_s"],
    }


def train(seed: int, work: Path, log: Path) -> tuple[str, dict]:
    """Run the Chinese recipe with ``seed``; returns the model directory and the run's timing."""
    from gte_st.hardware import load_average

    out = work / f"seed{seed}"
    load_before, cpu_before, start = load_average(), _children_cpu(), time.perf_counter()
    with open(log, "a", encoding="utf8") as f:
        f.write(f"$ scripts/recipes/chinese.sh --seed {seed} --output_dir {out}\n")
        f.flush()
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "recipes" / "chinese.sh"), "--seed", str(seed), "--output_dir", str(out)],
            check=True, env=_env(), stdout=f, stderr=f,
        )  # fmt: skip
    timing = {
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(_children_cpu() - cpu_before, 1),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"),
    }
    summary = json.loads((out / "training_summary.json").read_text())
    timing["train_runtime_s"] = summary["total_runtime_s"]
    timing["steps"] = sum(stage["steps"] for stage in summary["stages"])
    timing["vocabulary_extension"] = summary.get("vocabulary_extension")
    return str(out), timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="JSON file to write (docs/results/chinese.json)")
    parser.add_argument("--work-dir", default="chinese-bench", help="trained models, eval outputs and the log")
    parser.add_argument("--base-model", default=None, help="default: the offline all-MiniLM-L6-v2")
    parser.add_argument("--train-seeds", type=int, nargs="*", default=[], help="train the recipe with these seeds")
    parser.add_argument("--skip-base", action="store_true", help="do not evaluate the base model")
    parser.add_argument(
        "--choice", nargs="*", default=[], metavar="NAME=MODEL_DIR",
        help="record a trained variant's settings and choice-set scores (from its training_summary.json)",
    )  # fmt: skip
    parser.add_argument(
        "--init-study", action="store_true", help="the choice sets before training, per --extend_vocab_init"
    )
    args = parser.parse_args()
    import gte_st
    from gte_st.hardware import load_average, run_record

    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(output.read_text()) if output.is_file() else {}
    run = run_record()
    report["protocol"] = __doc__.split("\n\n", 2)[2].strip()
    report["sets"] = {name: f"../{path.relative_to(ROOT.parent)}" for name, path in STS_SETS.items()}
    base = args.base_model or gte_st.default_base_model()
    for spec in args.choice:
        name, _, directory = spec.partition("=")
        report.setdefault("choices", {})[name] = choice(Path(directory))
    if args.init_study:
        report["init_study"] = {"min_count": 3, "seed": 42, "results": init_study(min_count=3, seed=42)}
    if not args.skip_base:
        report["base"] = {"model": "all-MiniLM-L6-v2 (offline copy)", "results": evaluate(base, work, log)}
    # runs of earlier invocations are kept (one per seed), so the seeds may be trained one invocation at a time
    by_seed = {run["seed"]: run for run in report.get("recipe", {}).get("runs", [])}
    for seed in args.train_seeds:
        model, timing = train(seed, work, log)
        by_seed[seed] = {"seed": seed, "timing": timing, "results": evaluate(model, work, log)}
        by_seed[seed]["choice_sets"] = choice(Path(model))
        report["recipe"] = {"recipe": "scripts/recipes/chinese.sh", "runs": [by_seed[k] for k in sorted(by_seed)]}
        output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf8")
    runs = report.get("recipe", {}).get("runs", [])
    if runs:
        mean: dict[str, dict] = {}
        for name in STS_SETS:
            for task in ("sts", "pair-classification"):
                if task not in runs[0]["results"][name]:
                    continue
                main_metric = "spearman" if task == "sts" else "ap"
                values = [run["results"][name][task][main_metric] for run in runs]
                mean.setdefault(name, {})[f"{task} {main_metric}"] = {
                    "mean": round(statistics.mean(values), 2),
                    "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
                }
        report["recipe"]["mean_std"] = mean
    run["loadavg_at_end"] = load_average()
    report.setdefault("runs", []).append(run)
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf8")
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
