"""Benchmark 1: training quality on the same data and budget, gte-st vs sentence-transformers losses, several seeds.

From the offline all-MiniLM-L6-v2, each arm trains with the same steps, batch size, max length and learning rate on
the same sources (SciFact *train* claims -> cited abstracts, weak SciFact title -> abstract pairs, SNLI-derived
triplets), through the same `gte-st train` pipeline (one source per batch, p ~ n^0.5), once per seed:

  base     the untouched base model (no training; deterministic, evaluated once)
  mse      gte-st NormalizedMSELoss with the defaults of the code base the run uses
  mse-new  gte-st NormalizedMSELoss with ``--mse-new-kwargs`` (JSON loss arguments)
  mnrl     sentence-transformers MultipleNegativesRankingLoss
  gte      sentence-transformers MultipleNegativesRankingLoss, four GTE directions, joint partition
  matryoshka  ``mse`` trained at every ``--matryoshka-dims`` dimension too (sentence-transformers' MatryoshkaLoss)
  fn-margin   ``mse`` without likely false negatives by the student's own cosines (``--fn-margin-kwargs``)
  fn-guide    ``mse`` without likely false negatives by the frozen base model's cosines (GISTEmbed's guide,
              ``false_negative_margin`` 0)
  recipe   gte-st's full recipe: stage 1 weak title -> abstract pairs, stage 2 claims + SNLI triplets with hard
           negatives mined from the stage-1 model, NormalizedMSELoss (``--mse-new-kwargs``); same total budget

Keeping what the base model knew (issue 29): arms of the SciFact recipe (scripts/recipes/scifact-hybrid.yaml: a
claims stage on hybrid-mined negatives, then a short CoSENT stage on STS-B train; budget label ``scifact-hybrid``),
its data built once by the recipe's builders (build_scifact_distillation.py, build_general_pairs.py):

  sf-plain    the recipe without any option for keeping general quality (the recipe before issue 29)
  sf-replay   sf-plain, the claims stage with ``--replay`` general sources (``--replay-sources``, ``--replay-share``)
  sf-lora     sf-plain, the claims stage as a LoRA adapter (``--lora-r``, ``--lora-lr``), merged
  sf-distill  sf-plain, the claims stage with self-distillation to the base (``--distillation-weight``)
  sf-keep     sf-replay whose replay batches train only to keep the base model's similarities on them
              (``--replay_objective distillation``, weight ``--replay-distillation-weight``, target
              ``--replay-distillation-target``; ``--replay-objectives`` overrides the objective per source)
  sf-recipe   the shipped recipe as it is
  ARM@wA      ARM's saved models (same seeds, same --out-dir) interpolated with the base model at A, which is what
              ``gte-st train --wise_ft A`` does after training; evaluation only

``--eval-only`` trains nothing and scores the models an earlier run saved in ``--out-dir`` again, e.g. at
``--eval-precision fp32`` under another ``--budget`` label, or (``--models-of scifact-hybrid --split dev``) the models
trained on all train data on the dev measures they never trained on: STS-B dev, SICK train, the WikiQA dev split and
the held-out docstring dev queries (not the SciFact dev claims, which they trained on).

Every model is scored (encoded in ``--eval-precision``) on STS-B test, SICK-R test, SciFact test nDCG@10 (full
corpus), WikiQA test reranking MAP and nDCG@10 on the default job's held-out docstring split, all with
gte_st.evaluation; with ``--split dev`` instead on dev data only, for choosing settings: STS-B dev, SICK train, a
WikiQA split of train questions (build_general_pairs.py; no replay source holds it), the held-out docstring pairs
that are not among the 200 reported queries (same held-out corpus) and 200 held-out SciFact train claims (the sf arms
then train without them). Results are merged into ``--results`` as ``{arm: {budget: {metric:
[per-seed values]}}}`` (plus ``seed`` and ``train_s`` lists, and an ``_about`` entry with the settings of each run);
a mean +- std table is printed and a plot written.

To keep a concurrent edit of the working tree from changing a run, run it from a snapshot, e.g.::

    git worktree add --detach ../gte-snap HEAD      # beside the checkout, so ../shared/data stays the data folder
    PYTHONPATH=../gte-snap python ../gte-snap/scripts/bench_train_quality.py --arms base,mnrl,mse --seeds 0,1,2 \
        --results docs/results/train_quality.json
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
SF_ARMS = ("sf-plain", "sf-replay", "sf-lora", "sf-distill", "sf-keep", "sf-recipe")
ARMS = ("base", "mse", "mse-new", "mnrl", "gte", "recipe", "matryoshka", "fn-margin", "fn-guide", *SF_ARMS)
METRICS = ("stsb_test", "sickr_test", "scifact_test_ndcg@10", "wikiqa_test_map", "docstrings_ndcg@10")
# SICK's dev measure is its train split (4,500 pairs; no arm trains on SICK): the 500 trial pairs are too few for the
# 0.3 that issue 29 allows (docs/results/scifact_retention_dev.json: the same models move differently on the two).
DEV_METRICS = ("stsb_dev", "sick_train", "scifact_dev_ndcg@10", "wikiqa_dev_map", "docstrings_dev_ndcg@10")
# Options of the recipe that keep general quality: sf-plain drops them from every level of the recipe.
RETENTION_OPTIONS = ("replay", "replay_share", "replay_objective", "replay_objectives", "replay_distillation_weight",
                     "replay_distillation_target", "lora_r",
                     "lora_alpha", "lora_dropout", "lora_target_modules", "lora_save", "wise_ft", "wise_ft_grid",
                     "wise_ft_tolerance")  # fmt: skip


def training_module() -> str:
    """The training CLI module of the gte_st that is imported (``gte_st.training`` once it is a package)."""
    import gte_st

    package = Path(gte_st.__file__).parent
    return "gte_st.training" if (package / "training" / "__main__.py").exists() else "gte_st.train"


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", encoding="utf8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def prepare_data(data: Path, work: Path) -> dict[str, Path]:
    """Training files from the shared data (train-side data only; no test qrels)."""
    from gte_st.corpus import read_corpus

    work.mkdir(parents=True, exist_ok=True)
    ids, titles = read_corpus(data / "beir_scifact", text_field="title", title_field=None)
    _, texts = read_corpus(data / "beir_scifact", title_field=None)
    corpus = {doc_id: (title.strip(), text.strip()) for doc_id, title, text in zip(ids, titles, texts)}
    queries = {}
    with open(data / "beir_scifact" / "queries.jsonl", encoding="utf8") as f:
        for line in f:
            query = json.loads(line)
            queries[query["_id"]] = query["text"]
    claims = []
    with open(data / "beir_scifact" / "qrels" / "train.tsv", encoding="utf8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            title, text = corpus[row["corpus-id"]]
            claims.append({"anchor": queries[row["query-id"]], "positive": f"{title} {text}"})
    titles = [{"anchor": title, "positive": text} for title, text in corpus.values() if title and text]
    triplets = []
    with open(data / "snli_devtest" / "triplets_from_devtest.tsv", encoding="utf8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            triplets.append({"anchor": row["anchor"], "positive": row["positive"], "negative": row["negative"]})
    return {
        "claims": write_jsonl(work / "scifact_claims.jsonl", claims),
        "titles": write_jsonl(work / "scifact_titles.jsonl", titles),
        "snli": write_jsonl(work / "snli_triplets.jsonl", triplets),
    }


def docstrings_beir(work: Path) -> Path:
    """The default job's held-out docstring files as a BEIR folder over every held-out body: ``qrels/test.tsv`` holds
    the 200 queries the default job reports (``docstrings_ndcg@10``), ``qrels/dev.tsv`` the held-out pairs not among
    them (``docstrings_dev_ndcg@10``), so that a choice made on dev data does not look at the reported queries."""
    from gte_st.default_data import HELD_OUT_QUERIES, default_datasets

    folder = work / "docstrings_held_out"
    if all((folder / "qrels" / f"{split}.tsv").exists() for split in ("test", "dev")):
        return folder
    _, held_out = default_datasets(max_train=0, max_test=HELD_OUT_QUERIES)  # "test": the reported queries
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    corpus = held_out["test"]["corpus"]
    queries = {**held_out["test"]["queries"], **held_out["dev"]["queries"]}
    write_jsonl(folder / "corpus.jsonl", [{"_id": d, "title": "", "text": t} for d, t in corpus.items()])
    write_jsonl(folder / "queries.jsonl", [{"_id": q, "text": t} for q, t in queries.items()])
    for split in ("test", "dev"):
        with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid, docs in held_out[split]["relevant_docs"].items():
                f.writelines(f"{qid}\t{doc}\t1\n" for doc in sorted(docs))
    return folder


def build_recipe_data(data: Path, work: Path, dev: bool) -> tuple[Path, Path]:
    """The SciFact recipe's training files (with ``dev``: 200 train claims held out as ``dev-claims/``) and the
    general replay sources, each built once by the recipe's own builders."""
    scifact = work / ("scifact-dev" if dev else "scifact")
    general = work / "general"
    if not (scifact / "claims.jsonl").exists():
        command = [sys.executable, str(REPO / "scripts" / "recipes" / "build_scifact_distillation.py"),
                   "--data", str(data / "beir_scifact"), "--stsb", str(data / "stsb" / "sts-train.csv"),
                   "--out-dir", str(scifact), *(["--holdout", "200"] if dev else [])]  # fmt: skip
        subprocess.run(command, check=True)
    if not (general / "wikiqa-dev.txt").exists():
        command = [sys.executable, str(REPO / "scripts" / "recipes" / "build_general_pairs.py"),
                   "--data", str(data), "--out-dir", str(general)]  # fmt: skip
        subprocess.run(command, check=True)
    return scifact, general


def recipe_config(arm: str, scifact: Path, general: Path, args: argparse.Namespace, out: Path) -> dict:
    """The SciFact recipe of ``arm``: the shipped recipe with its data paths pointed at the built files and, except
    for sf-recipe, its retention options replaced by the arm's own (on the stage named ``claims``)."""
    from gte_st.training.recipe import load_config

    recipe = load_config(str(REPO / "scripts" / "recipes" / "scifact-hybrid.yaml"))

    def local(value):
        if isinstance(value, list):
            return [local(v) for v in value]
        if isinstance(value, str):
            return value.replace("scifact-hybrid/data/", f"{scifact}/").replace(
                "scifact-hybrid/general/", f"{general}/"
            )
        return value

    levels = [recipe, *recipe.get("stages", [])]
    for level in levels:
        for key in ("data", "replay"):
            if key in level:
                level[key] = local(level[key])
    if arm != "sf-recipe":
        for level in levels:
            for key in RETENTION_OPTIONS:
                level.pop(key, None)
            if isinstance(level.get("loss_kwargs"), dict):
                level["loss_kwargs"].pop("distillation_weight", None)
        (claims,) = [stage for stage in recipe["stages"] if stage.get("name") == "claims"]
        if arm in ("sf-replay", "sf-keep"):
            claims["replay"] = [f"{name}={general}/{name}.jsonl" for name in args.replay_sources.split(",")]
            claims["replay_share"] = args.replay_share
        if arm == "sf-keep":
            claims.update(
                replay_objective="distillation",
                replay_distillation_weight=args.replay_distillation_weight,
                replay_distillation_target=args.replay_distillation_target,
                **({"replay_objectives": args.replay_objectives.split(",")} if args.replay_objectives else {}),
            )
        elif arm == "sf-lora":
            claims.update(lora_r=args.lora_r, lora_alpha=2 * args.lora_r, learning_rate=args.lora_lr)
        elif arm == "sf-distill":
            claims["loss_kwargs"] = {**claims.get("loss_kwargs", {}), "distillation_weight": args.distillation_weight}
    recipe["output_dir"] = str(out)
    return recipe


def interpolated(arm: str, seed: int, args: argparse.Namespace, models: Path) -> tuple[Path, float]:
    """``ARM@wA``: the saved model of ARM (this seed) interpolated with the base model at A (gte_st.interpolation,
    what ``--wise_ft A`` does after training), written beside it."""
    from sentence_transformers import SentenceTransformer

    import gte_st
    from gte_st.interpolation import interpolate_state_dicts

    source, _, alpha = arm.rpartition("@w")
    tuned_dir, seconds = saved(source, seed, models)
    out = models / f"{arm}-seed{seed}"
    base = SentenceTransformer(args.base_model or gte_st.default_base_model(), device="cpu").state_dict()
    model = SentenceTransformer(str(tuned_dir), device="cpu")
    model.load_state_dict(interpolate_state_dicts(base, model.state_dict(), float(alpha)))
    model.save(str(out))
    return out, seconds


def saved(arm: str, seed: int, models: Path) -> tuple[Path, float]:
    """The model an earlier run of ARM (this seed) saved under ``models``, and its training time (0 when the run
    wrote no summary: interpolated models)."""
    path = models / f"{arm}-seed{seed}"
    if not (path / "modules.json").exists():
        raise SystemExit(f"arm {arm}: no saved model {path}; train it (seed {seed}) into this --out-dir first")
    source = models / f"{arm.rpartition('@w')[0] or arm}-seed{seed}" / "training_summary.json"
    return path, json.loads(source.read_text())["total_runtime_s"] if source.exists() else 0.0


def train(arm: str, seed: int, files: dict[str, Path], args: argparse.Namespace, out: Path) -> float:
    out.parent.mkdir(parents=True, exist_ok=True)
    common = [
        "--per_device_train_batch_size", str(args.batch_size), "--max_seq_length", str(args.max_seq_length),
        "--learning_rate", str(args.lr), "--seed", str(seed), "--save_steps", "100000", "--logging_steps", "10",
        "--precision", args.precision, *(["--base_model", args.base_model] if args.base_model else []),
        *shlex.split(args.train_args),
    ]  # fmt: skip
    all_sources = [f"claims={files['claims']}", f"titles={files['titles']}", f"snli={files['snli']}"]
    if arm in SF_ARMS:
        config = out.parent / f"{out.name}.recipe.json"
        config.write_text(json.dumps(recipe_config(arm, files["scifact"], files["general"], args, out), indent=2))
        command = ["--config", str(config), "--seed", str(seed), "--precision", args.precision,
                   *(["--base_model", args.base_model] if args.base_model else []),
                   *shlex.split(args.train_args)]  # fmt: skip
    elif arm == "recipe":
        pretrain_steps = max(1, round(args.steps * 0.3))
        stage = {"loss": "mse", "loss_kwargs": args.mse_new_kwargs}
        recipe = {
            "output_dir": str(out),
            "stages": [
                {"name": "pretrain", "data": [f"titles={files['titles']}"], "max_steps": pretrain_steps, **stage},
                {
                    "name": "finetune",
                    "data": [f"claims={files['claims']}", f"snli={files['snli']}"],
                    "mine_hard_negatives": True,
                    "max_steps": args.steps - pretrain_steps,
                    **stage,
                },
            ],
        }
        config = out.parent / f"{out.name}.recipe.json"
        config.write_text(json.dumps(recipe, indent=2))
        command = ["--config", str(config), *common]
    else:
        loss = arm if arm in ("mse", "mnrl", "gte") else "mse"
        extra = arm_arguments(arm, args)
        command = ["--data", *all_sources, "--loss", loss, *extra, "--max_steps", str(args.steps),
                   "--output_dir", str(out), *common]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", training_module(), *command], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    (out.parent / f"{out.name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"arm {arm} seed {seed} failed:\n{result.stderr[-3000:]}")
    return elapsed


def arm_arguments(arm: str, args: argparse.Namespace) -> list[str]:
    """The ``gte-st train`` options of an arm besides ``--loss``."""
    import gte_st

    if arm == "mse-new":
        return ["--loss_kwargs", args.mse_new_kwargs]
    if arm == "matryoshka":
        return ["--matryoshka_dims", *args.matryoshka_dims.split(",")]
    if arm == "fn-margin":
        return ["--loss_kwargs", args.fn_margin_kwargs]
    if arm == "fn-guide":
        guide = args.base_model or gte_st.default_base_model()
        return ["--loss_kwargs", json.dumps({"false_negative_margin": 0.0, "guide": guide})]
    return []


def evaluate(model_path: str, data: Path, docstrings: Path, args: argparse.Namespace) -> dict[str, float]:
    """The ``--metrics`` of one model (every one of :data:`METRICS` by default)."""
    from sentence_transformers import SentenceTransformer

    from gte_st.evaluation import evaluate_reranking, evaluate_retrieval, evaluate_sts

    model = SentenceTransformer(model_path)
    model.max_seq_length = args.eval_max_seq_length
    precision = args.eval_precision
    measures = {
        "stsb_test": lambda: evaluate_sts(model, data / "stsb" / "sts-test.csv", precision=precision),
        "sickr_test": lambda: evaluate_sts(model, data / "sick" / "SICK_test_annotated.txt", precision=precision),
        "scifact_test_ndcg@10": lambda: evaluate_retrieval(
            model,
            data / "beir_scifact",
            split="test",
            precision=precision,
            max_corpus=args.eval_max_corpus,
            cache_dir=args.cache_dir,
        ),  # fmt: skip
        "wikiqa_test_map": lambda: evaluate_reranking(model, data / "wikiqa" / "WikiQA-test.txt", precision=precision),
        "docstrings_ndcg@10": lambda: evaluate_retrieval(model, docstrings, split="test", precision=precision),
    }
    metrics = args.metrics.split(",")
    if args.split == "dev":  # dev data only, for choosing settings
        scifact_dev, general = build_recipe_data(data, Path(args.out_dir).resolve() / "data", dev=True)
        measures = {
            "stsb_dev": lambda: evaluate_sts(model, data / "stsb" / "sts-dev.csv", precision=precision),
            "sick_train": lambda: evaluate_sts(model, data / "sick" / "SICK_train.txt", precision=precision),
            "scifact_dev_ndcg@10": lambda: evaluate_retrieval(
                model, scifact_dev / "dev-claims", split="dev", precision=precision, max_corpus=args.eval_max_corpus
            ),
            "wikiqa_dev_map": lambda: evaluate_reranking(model, general / "wikiqa-dev.txt", precision=precision),
            "docstrings_dev_ndcg@10": lambda: evaluate_retrieval(model, docstrings, split="dev", precision=precision),
        }
        metrics = [DEV_METRICS[METRICS.index(metric)] for metric in metrics]
    return {metric: round(100 * measures[metric]().score, 2) for metric in metrics}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(results: dict, budget: str) -> str:
    """Markdown table, mean ± sample std over seeds (``n`` seeds), of every arm measured at ``budget``."""
    metrics = DEV_METRICS if budget.endswith("-dev") else METRICS
    lines = ["| arm | n | " + " | ".join(metrics) + " | train s |", "|---" * (len(metrics) + 3) + "|"]
    for arm, budgets in results.items():
        if arm.startswith("_") or budget not in budgets:
            continue
        scores = budgets[budget]
        cells = [mean_std(scores[m]) if scores.get(m) else "" for m in metrics]
        seconds = f"{statistics.mean(scores['train_s']):.0f}" if scores.get("train_s") else ""
        runs = max((len(scores[m]) for m in metrics if scores.get(m)), default=0)  # --metrics may leave any out
        lines.append(f"| {arm} | {runs} | " + " | ".join(cells) + f" | {seconds} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install gte-st[plot])")
        return
    budgets = sorted({b for arm, v in results.items() if not arm.startswith("_") for b in v})
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], METRICS):
        labels, x = [], 0
        for budget in budgets:
            for arm, values in results.items():
                if arm.startswith("_") or budget not in values or not values[budget].get(metric):
                    continue
                seeds = values[budget][metric]
                std = statistics.stdev(seeds) if len(seeds) > 1 else 0.0
                ax.bar(x, statistics.mean(seeds), yerr=std, capsize=3)
                ax.scatter([x] * len(seeds), seeds, s=6, color="black", zorder=3)
                labels.append(f"{arm}\n{budget}")
                x += 1
        ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        values = [
            v for arm, b in results.items() if not arm.startswith("_") for s in b.values() for v in s.get(metric, [])
        ]
        if values:
            ax.set_ylim(min(values) - 3, max(values) + 2)
        ax.set_title(metric, fontsize=9)
    fig.suptitle("all-MiniLM-L6-v2 fine-tuned: mean ± std over seeds (dots: seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def drop_seeds(scores: dict[str, list], seeds: list[int] | None) -> dict[str, list]:
    """Copy of one arm's per-seed ``scores`` without the entries of ``seeds`` (``None``: drop all, for ``base``)."""
    keep = [i for i, seed in enumerate(scores.get("seed", [])) if seeds is not None and seed not in seeds]
    out = {metric: [values[i] for i in keep] for metric, values in scores.items()}
    out.setdefault("seed", [])
    out.setdefault("train_s", [])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--precision", default="auto", help="training precision")
    parser.add_argument("--eval-max-seq-length", type=int, default=256, help="all-MiniLM-L6-v2's own setting")
    parser.add_argument(
        "--eval-precision", default="fp32",
        help="evaluation encode precision: fp32 by default, as the published figures; bf16 is faster but moves "
        "WikiQA MAP by up to 0.6 (docs/benchmarks.md, SciFact recipe), more than the 0.3 the retention goals allow",
    )  # fmt: skip
    parser.add_argument("--arms", default="base,mse,mnrl,gte")
    parser.add_argument("--mse-new-kwargs", default="{}", help="JSON NormalizedMSELoss arguments of mse-new/recipe")
    parser.add_argument("--matryoshka-dims", default="384,256,128,64", help="dimensions of the matryoshka arm")
    parser.add_argument(
        "--fn-margin-kwargs", default='{"false_negative_margin": 0.05, "false_negative_strategy": "relative"}',
        help="JSON loss arguments of the fn-margin arm (NV-Retriever's 95%% of the positive's score by default)",
    )  # fmt: skip
    parser.add_argument("--metrics", default=",".join(METRICS), help=f"comma-separated subset of {METRICS}")
    parser.add_argument("--cache-dir", default=None, help="cache SciFact corpus embeddings here (keyed by model)")
    parser.add_argument(
        "--budget", default=None, help="budget label (default: STEPSxBATCH; scifact-hybrid for sf arms)"
    )
    parser.add_argument(
        "--split",
        choices=("test", "dev"),
        default="test",
        help="dev: score on dev data only (budget labels get '-dev'), for choosing settings",
    )
    parser.add_argument(
        "--replay-sources",
        default="snli,wikiqa,stsb,mrpc,docstrings",
        help="sf-replay: general sources of build_general_pairs.py",
    )
    parser.add_argument("--replay-share", type=float, default=0.2, help="sf-replay, sf-keep: share of the batches")
    parser.add_argument(
        "--replay-distillation-weight", type=float, default=10.0, help="sf-keep: weight of the replay batches' term"
    )
    parser.add_argument(
        "--replay-distillation-target",
        default="similarities",
        help="sf-keep: what the replay batches keep (similarities or embeddings)",
    )
    parser.add_argument(
        "--replay-objectives", default="",
        help="sf-keep: comma-separated NAME=OBJECTIVE overrides per replay source (e.g. docstrings=loss)",
    )  # fmt: skip
    parser.add_argument("--lora-r", type=int, default=16, help="sf-lora: rank (lora_alpha = 2 r)")
    parser.add_argument("--lora-lr", type=float, default=5e-4, help="sf-lora: learning rate of the claims stage")
    parser.add_argument("--distillation-weight", type=float, default=10.0, help="sf-distill: the term's weight")
    parser.add_argument("--base-model", default=None, help="default: the offline all-MiniLM-L6-v2 copy")
    parser.add_argument("--eval-max-corpus", type=int, default=None, help="smoke tests only: SciFact sub-corpus")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="the shared data folder")
    parser.add_argument("--out-dir", default="bench-quality", help="training data, models and logs")
    parser.add_argument("--results", default="docs/results/train_quality.json", help="JSON results file (merged)")
    parser.add_argument("--plot", default=None, help="PNG plot of every result in --results")
    parser.add_argument("--report-only", action="store_true", help="only print the tables and plot of --results")
    parser.add_argument(
        "--eval-only", action="store_true",
        help="train nothing: score the models an earlier run of these arms and seeds saved in --out-dir again (e.g. "
        "at another --eval-precision, stored under another --budget)",
    )  # fmt: skip
    parser.add_argument(
        "--models-of", default=None, metavar="BUDGET",
        help="with --eval-only: the saved models of this budget folder (e.g. --split dev --models-of scifact-hybrid "
        "scores the models trained on all train data on the dev measures none of them trained on)",
    )  # fmt: skip
    parser.add_argument(
        "--train-args", default="",
        help="more `gte-st train` options for every trained arm, e.g. '--length_grouping 0 --pretokenize false' "
        "(store the arm under another --label); for the sf arms they override every stage of the recipe",
    )  # fmt: skip
    parser.add_argument(
        "--label", action="append", default=[], metavar="ARM=NAME",
        help="store ARM's results under NAME (e.g. mse=mse-old when PYTHONPATH points at an older snapshot)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.report_only:
        results = json.loads(Path(args.results).read_text())
        for budget in sorted({b for arm, v in results.items() if not arm.startswith("_") for b in v}):
            print(f"budget {budget}\n{table(results, budget)}\n")
        if args.plot:
            plot(results, Path(args.plot))
        return
    if args.models_of and not args.eval_only:
        parser.error("--models-of reads saved models: it needs --eval-only")
    if unknown := set(args.metrics.split(",")) - set(METRICS):
        parser.error(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    arms = args.arms.split(",")
    if unknown := {arm for arm in arms if arm.rpartition("@w")[0 if "@w" in arm else 2] not in ARMS}:
        parser.error(f"unknown arms {sorted(unknown)}; choose from {ARMS}, or ARM@wA")
    json.loads(args.mse_new_kwargs)
    seeds = [int(s) for s in args.seeds.split(",")]
    if malformed := [item for item in args.label if "=" not in item]:
        parser.error(f"--label expects ARM=NAME, got {malformed}")
    labels = dict(item.split("=", 1) for item in args.label)
    if unknown := set(labels) - set(arms):
        parser.error(f"--label names arms not run: {sorted(unknown)}")
    suffix = "-dev" if args.split == "dev" else ""

    def budget_of(arm: str, label: bool = True) -> str:
        """The arm's budget label (``label=False``: the one its models are saved under, whatever ``--budget``
        says); ``base`` takes the label of the arms it is run with (when they share one)."""
        if args.budget and label:
            return args.budget
        if arm == "base" and len(others := {budget_of(a, label) for a in arms if a != "base"}) == 1:
            return others.pop()
        recipe_arm = arm.rpartition("@w")[0] or arm
        return ("scifact-hybrid" if recipe_arm in SF_ARMS else f"{args.steps}x{args.batch_size}") + suffix

    data = Path(args.data_dir).resolve()
    out_dir = Path(args.out_dir).resolve()
    files = prepare_data(data, out_dir / "data")
    if any((arm.rpartition("@w")[0] or arm) in SF_ARMS for arm in arms):
        files["scifact"], files["general"] = build_recipe_data(data, out_dir / "data", dev=args.split == "dev")
    docstrings = docstrings_beir(out_dir / "data")
    import gte_st
    from gte_st.hardware import run_record

    results_file = Path(args.results)
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    about = {
        **run_record(["accelerate", "datasets"]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("results", "plot", "out_dir")},
        "gte_st": str(Path(gte_st.__file__).parent),
        "training_module": training_module(),
        "sources": {
            name: sum(1 for _ in open(path, encoding="utf8")) for name, path in files.items() if path.is_file()
        },
        "recipe_data": {name: str(path) for name, path in files.items() if path.is_dir()},
    }
    for arm in arms:
        name, budget = labels.get(arm, arm), budget_of(arm)
        run_seeds = [seeds[0]] if arm == "base" else seeds
        # Merge with earlier runs of this arm and budget: keep their other seeds, replace the seeds run again.
        scores = drop_seeds(results.get(name, {}).get(budget, {}), None if arm == "base" else run_seeds)
        abouts = results.setdefault("_about", {}).setdefault(name, {}).get(budget, [])
        abouts = abouts if isinstance(abouts, list) else [abouts]
        results["_about"][name][budget] = [*abouts, about]
        for seed in run_seeds:
            if arm == "base":
                model, seconds = args.base_model or gte_st.default_base_model(), 0.0
            elif args.eval_only:
                model, seconds = saved(arm, seed, out_dir / "models" / (args.models_of or budget_of(arm, label=False)))
            elif "@w" in arm:
                model, seconds = interpolated(arm, seed, args, out_dir / "models" / budget)
            else:
                model = out_dir / "models" / budget / f"{arm}-seed{seed}"
                seconds = train(arm, seed, files, args, model)
            for metric, value in evaluate(str(model), data, docstrings, args).items():
                scores.setdefault(metric, []).append(value)
            scores["seed"].append(None if arm == "base" else seed)
            scores["train_s"].append(round(seconds, 1))
            print(name, budget, seed, {m: v[-1] for m, v in scores.items()}, flush=True)
            results.setdefault(name, {})[budget] = scores
            results_file.parent.mkdir(parents=True, exist_ok=True)
            results_file.write_text(json.dumps(results, indent=1) + "\n")
    for budget in dict.fromkeys(budget_of(arm) for arm in arms):
        print(table(results, budget))
    if args.plot:
        plot(results, Path(args.plot))


if __name__ == "__main__":
    main()
