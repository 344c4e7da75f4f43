#!/usr/bin/env python
"""Benchmark 2: training throughput at equal settings -- sentence-transformers' stock Trainer against gte-st's
training path, same model, data, batch, length, precision and loss family.

    python scripts/bench_train_throughput.py --output docs/results/train_throughput.json

Every arm trains the offline all-MiniLM-L6-v2 for ``--warmup`` + ``--steps`` steps through a Trainer, in a fresh
process (so peak RSS is its own), on one of two data shapes built from the shared data:

- ``short``: SNLI dev premise -> entailed hypothesis pairs (../shared/data/snli_devtest; a dozen tokens each);
- ``long``: long-tailed pairs: the embedded docstring pairs (``gte_st.default_data``: a summary line -> a body of
  text and code) and SciFact title -> abstract pairs, shuffled together (short anchors, positives up to and past
  the length).

Arms (``--arms``; all at batch ``--batch-size``, length ``--max-seq-length``, bf16 autocast, AdamW, lr 2e-5):

===================  ===========================================================================================
st-mnrl              stock: ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss``, ``bf16=True``,
                     ``batch_sampler="no_duplicates"`` (the baseline)
gte-mnrl-plain       gte-st's Trainer (``gte_st.training.GTETrainer``) + the same loss, new options off
                     (``length_grouping=0``, ``pretokenize=False``, ``training_attention="sdpa"``,
                     ``training_dropout="torch"``): the pipeline as it was
gte-mnrl             the same with gte-st's training defaults (length-grouped batches, texts tokenised once)
gte-mse              gte-st's defaults with its default loss (``NormalizedMSELoss``)
gte-mnrl-pretok      only ``pretokenize`` on; ``gte-mnrl-group`` only ``length_grouping`` on (which pays)
gte-mnrl-sdpa        gte-st's defaults but training with SDPA attention (``training_attention="sdpa"``), not the
                     eager attention that ``"auto"`` picks on a CPU
gte-mnrl-torchdrop   gte-st's defaults but with PyTorch's dropout masks (``training_dropout="torch"``), not the
                     fast masks that ``"auto"`` picks on a CPU
st-cached-mnrl       stock ``CachedMultipleNegativesRankingLoss`` (mini-batch 32, ``mini_batch_num_tokens`` =
                     32 x length: mini-batches packed by real tokens), batch ``--cached-batch-size``
gte-cached-mse       gte-st's ``CachedLoss(NormalizedMSELoss)`` (mini-batch 32) with gte-st's defaults, same batch
===================  ===========================================================================================

Reported per arm and data shape: pairs/s and real (non-padding) tokens/s over the timed steps, the padding fraction
of the batches (1 - real / padded tokens), seconds per step, peak RSS; ``--repeats`` runs of every arm, interleaved
(A B C A B C: each arm sees the same mix of machine load), medians kept; ratios against ``st-mnrl`` (cached arms:
against ``st-cached-mnrl``) of the same data shape.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
ARMS = {
    "st-mnrl": {"trainer": "st", "loss": "mnrl"},
    "gte-mnrl-plain": {
        "trainer": "gte",
        "loss": "mnrl",
        "length_grouping": 0,
        "pretokenize": False,
        "training_attention": "sdpa",
        "training_dropout": "torch",
    },
    "gte-mnrl": {"trainer": "gte", "loss": "mnrl"},
    "gte-mse": {"trainer": "gte", "loss": "mse"},
    "gte-mnrl-pretok": {"trainer": "gte", "loss": "mnrl", "length_grouping": 0, "pretokenize": True},
    "gte-mnrl-group": {"trainer": "gte", "loss": "mnrl", "pretokenize": False},
    "gte-mnrl-sdpa": {"trainer": "gte", "loss": "mnrl", "training_attention": "sdpa"},
    "gte-mnrl-torchdrop": {"trainer": "gte", "loss": "mnrl", "training_dropout": "torch"},
    "st-cached-mnrl": {"trainer": "st", "loss": "cached-mnrl", "cached": True},
    "gte-cached-mse": {"trainer": "gte", "loss": "mse", "cached": True},
}
DEFAULT_ARMS = ["st-mnrl", "gte-mnrl-plain", "gte-mnrl", "gte-mse", "st-cached-mnrl", "gte-cached-mse"]


def build_data(data_dir: Path, out: Path) -> dict[str, Path]:
    """The two data shapes as jsonl files of ``anchor`` / ``positive`` pairs (shuffled with a fixed seed)."""
    import random

    from gte_st.corpus import read_corpus
    from gte_st.default_data import default_datasets

    snli = data_dir / "snli_devtest"
    premises = (snli / "s1.dev").read_text(encoding="utf8").splitlines()
    hypotheses = (snli / "s2.dev").read_text(encoding="utf8").splitlines()
    labels = (snli / "labels.dev").read_text(encoding="utf8").splitlines()
    short = [
        {"anchor": p.strip(), "positive": h.strip()}
        for p, h, label in zip(premises, hypotheses, labels)
        if label.strip() == "entailment"
    ]
    train, _ = default_datasets(max_test=0)
    long = [{"anchor": a, "positive": p} for d in train.values() for a, p in zip(d["anchor"], d["positive"])]
    _, titles = read_corpus(data_dir / "beir_scifact", text_field="title", title_field=None)
    _, texts = read_corpus(data_dir / "beir_scifact", title_field=None)
    long += [
        {"anchor": title.strip(), "positive": text.strip()} for title, text in zip(titles, texts) if title and text
    ]
    files = {}
    for name, rows in (("short", short), ("long", long)):
        random.Random(0).shuffle(rows)
        files[name] = out / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf8")
    return files


def worker(config: dict) -> dict:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer import losses
    from transformers import TrainerCallback

    import gte_st
    from gte_st.training import GTETrainer, GTETrainingArguments, build_loss, mixed_precision_flags

    batch, steps = config["batch"], config["warmup"] + config["steps"]
    pairs = Dataset.from_json(config["pairs_file"])
    pairs = pairs.select(range(min(len(pairs), batch * (steps + 2))))
    stamps: list[float] = []
    counts: list[tuple[int, int]] = []
    sync = torch.cuda.synchronize if config.get("device", "cpu").startswith("cuda") else (lambda: None)

    profiler = None
    if config.get("profile"):
        from torch.profiler import ProfilerActivity, profile

        profiler = profile(activities=[ProfilerActivity.CPU])

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if profiler is not None and state.global_step == config["warmup"]:
                profiler.start()  # the timed steps only

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            stamps.append(time.perf_counter())
            if profiler is not None and state.global_step == steps:
                profiler.stop()

    class Counting:
        """The Trainer's collator, counting real (mask) and padded tokens of every batch it builds."""

        def __init__(self, collator):
            self.collator = collator

        def __getattr__(self, name):  # the Trainer reads the collator's settings (valid_label_columns, ...)
            return getattr(self.collator, name)

        def __call__(self, features):
            out = self.collator(features)
            masks = [v for k, v in out.items() if k.endswith("attention_mask")]
            counts.append((sum(int(m.sum()) for m in masks), sum(int(m.numel()) for m in masks)))
            return out

    precision = mixed_precision_flags("bf16")
    common = dict(
        output_dir=os.path.join(os.path.dirname(config["pairs_file"]), "trainer"), per_device_train_batch_size=batch,
        max_steps=steps, save_strategy="no", logging_steps=1000, report_to="none", learning_rate=2e-5, seed=0,
        disable_tqdm=True, dataloader_drop_last=True, batch_sampler="no_duplicates",
    )  # fmt: skip
    cached = config.get("cached", False)
    base, device = config.get("model") or gte_st.default_base_model(), config.get("device", "cpu")
    if config["trainer"] == "st":
        from sentence_transformers import SentenceTransformerTrainingArguments

        model = SentenceTransformer(base, device=device)
        model.max_seq_length = config["max_len"]
        if cached:
            loss = losses.CachedMultipleNegativesRankingLoss(
                model, mini_batch_size=32, mini_batch_num_tokens=32 * config["max_len"]
            )
        else:
            loss = losses.MultipleNegativesRankingLoss(model)
        args = SentenceTransformerTrainingArguments(**common, **precision)
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=pairs, loss=loss, callbacks=[Clock()]
        )
    else:
        model = gte_st.build_model(base, max_seq_length=config["max_len"], device=device)
        loss = build_loss(model, config["loss"], mini_batch_size=32 if cached else None)
        args = GTETrainingArguments(**common, **precision)
        options = {
            k: config[k]
            for k in ("length_grouping", "pretokenize", "training_attention", "training_dropout")
            if k in config
        }
        trainer = GTETrainer(
            model=model, args=args, train_dataset=pairs, loss=loss, callbacks=[Clock()], **options
        )  # fmt: skip
    trainer.data_collator = Counting(trainer.data_collator)
    start = time.perf_counter()
    trainer.train()
    total_s = time.perf_counter() - start
    warmup = config["warmup"]
    elapsed = stamps[-1] - stamps[warmup - 1]
    timed = counts[warmup:steps]
    real, padded = sum(c[0] for c in timed), sum(c[1] for c in timed)
    return {
        **{k: v for k, v in config.items() if k != "pairs_file"},
        "pairs_per_s": round(config["steps"] * batch / elapsed, 3),
        "real_tokens_per_s": round(real / elapsed, 1),
        "padding_fraction": round(1 - real / padded, 4),
        "padded_tokens_per_s": round(padded / elapsed, 1),
        "mean_padded_length": round(padded / (config["steps"] * batch * 2), 2),
        "s_per_step": round(elapsed / config["steps"], 3),
        "train_s_with_setup": round(total_s, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch_threads": torch.get_num_threads(),
        "peak_gpu_memory_gib": (
            round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None
        ),
        **({"profile": where_the_time_goes(profiler, config["steps"], elapsed)} if profiler is not None else {}),
    }


# Operator groups of a training step (first match wins; names as torch.profiler reports aten operators).
OPERATOR_GROUPS = (
    ("attention", ("scaled_dot_product", "softmax", "_efficient_attention", "_flash_attention", "baddbmm", "bmm")),
    ("matmul", ("addmm", "aten::mm", "matmul", "linear", "mkldnn")),
    ("optimizer", ("_foreach", "adam", "optimizer", "zero_grad")),
    ("casts and copies", ("aten::to", "_to_copy", "copy_", "contiguous", "clone")),
    ("dropout masks", ("bernoulli", "random_", "bitwise_and")),
    ("layer norm, GELU, dropout", ("layer_norm", "gelu", "dropout", "native_dropout")),
    ("embedding", ("embedding",)),
    ("loss and pooling", ("norm", "cross_entropy", "log_softmax", "nll", "mse", "sum", "mean", "div", "clamp")),
)


def where_the_time_goes(profiler, steps: int, elapsed: float) -> dict:
    """Self CPU time of the timed steps by operator group (:data:`OPERATOR_GROUPS`), in ms per step and as a share
    of the steps' wall time; what no operator accounts for (Python, data loading, the Trainer) is ``outside ops``.
    Self times of operators on the main thread, so the groups add up to at most the wall time."""
    groups: dict[str, float] = {}
    top = []
    for event in profiler.key_averages():
        ms = event.self_cpu_time_total / 1000 / steps
        name = event.key.lower()
        group = next((g for g, keys in OPERATOR_GROUPS if any(k in name for k in keys)), "other operators")
        groups[group] = groups.get(group, 0.0) + ms
        top.append((event.key, ms))
    step_ms = 1000 * elapsed / steps
    groups["outside ops"] = max(0.0, step_ms - sum(groups.values()))
    return {
        "step_ms": round(step_ms, 1),
        "groups_ms_per_step": {g: round(ms, 1) for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])},
        "groups_share": {g: round(ms / step_ms, 3) for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_operators_ms_per_step": [[k, round(ms, 1)] for k, ms in sorted(top, key=lambda kv: -kv[1])[:15]],
    }


def run_arm(config: dict) -> dict | None:
    """One arm in a fresh process (``worker``); its result, or ``None`` (and its error printed) when it failed."""
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(config)], capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        print(f"{config['data']} {config['arm']}: failed\n{done.stderr[-3000:]}", flush=True)
        return None
    return json.loads(line.removeprefix("RESULT "))


def summarize(runs: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, dict]]:
    """Per data shape and arm, the medians over its runs, and its ratio to the stock arm of its kind
    (``st-mnrl``; cached arms: ``st-cached-mnrl``)."""
    medians = ("pairs_per_s", "real_tokens_per_s", "padded_tokens_per_s", "padding_fraction", "s_per_step")
    results: dict[str, dict[str, dict]] = {}
    for shape, arms in runs.items():
        results[shape] = {}
        for arm, rs in arms.items():
            if not rs:
                continue
            results[shape][arm] = {
                "batch": rs[0]["batch"],
                **{key: round(statistics.median(r[key] for r in rs), 4) for key in medians},
                "mean_padded_length": rs[0]["mean_padded_length"],
                "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                "peak_gpu_memory_gib": rs[0].get("peak_gpu_memory_gib"),
                "runs_pairs_per_s": [r["pairs_per_s"] for r in rs],
                **({"profile": rs[-1]["profile"]} if rs[-1].get("profile") else {}),
            }
        for arm, r in results[shape].items():
            base = results[shape].get("st-cached-mnrl" if ARMS[arm].get("cached") else "st-mnrl")
            if base:
                r["x_stock"] = round(r["pairs_per_s"] / base["pairs_per_s"], 3)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    parser.add_argument("--data", nargs="+", default=["short", "long"], choices=["short", "long"])
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (one-off costs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cached-batch-size", type=int, default=128, help="batch of the cached-loss arms")
    parser.add_argument("--max-seq-length", type=int, default=128, help="gte-st's training length")
    parser.add_argument("--repeats", type=int, default=2, help="runs of every arm, interleaved; medians kept")
    parser.add_argument("--data-dir", default=str(DATA), help="the shared data folder")
    parser.add_argument("--output", default=None, help="JSON results (e.g. docs/results/train_throughput.json)")
    parser.add_argument(
        "--profile", action="store_true",
        help="also record where the timed steps' time goes (torch.profiler, self CPU time by operator group); "
        "the profiler's own overhead lowers the pairs/s of such a run: profile and time in separate runs",
    )  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")

    from gte_st.hardware import load_average, run_record

    header = {
        **run_record(["accelerate", "datasets"]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "worker")},
    }
    print(json.dumps(header, indent=1), flush=True)
    runs: dict[str, dict[str, list[dict]]] = {shape: {arm: [] for arm in args.arms} for shape in args.data}
    with tempfile.TemporaryDirectory(prefix="gte-st-bench-train-") as work:
        files = build_data(Path(args.data_dir), Path(work))
        for repeat in range(args.repeats):
            for shape in args.data:
                for arm in args.arms:
                    config = {
                        **ARMS[arm], "arm": arm, "data": shape, "pairs_file": str(files[shape]),
                        "batch": args.cached_batch_size if ARMS[arm].get("cached") else args.batch_size,
                        "max_len": args.max_seq_length, "steps": args.steps, "warmup": args.warmup,
                        "profile": args.profile,
                    }  # fmt: skip
                    r = run_arm(config)
                    if r is None:
                        continue
                    runs[shape][arm].append(r)
                    print(f"[{repeat + 1}/{args.repeats}] {shape:<5} {arm:<16} batch {r['batch']:>4} "
                          f"{r['pairs_per_s']:8.2f} pairs/s {r['real_tokens_per_s']:9.0f} real tok/s "
                          f"padding {r['padding_fraction']:.2f} {r['s_per_step']:6.2f} s/step "
                          f"RSS {r['peak_rss_mib']} MiB", flush=True)  # fmt: skip
                    if r.get("profile"):
                        shares = r["profile"]["groups_share"]
                        print("    " + ", ".join(f"{g} {100 * v:.0f}%" for g, v in shares.items()), flush=True)
    results = summarize(runs)
    header["loadavg_at_end"] = load_average()
    print(f"\n{'data':<6} {'arm':<16} {'batch':>5} {'pairs/s':>8} {'real tok/s':>10} {'padding':>8} {'x stock':>8}")
    for shape, arms in results.items():
        for arm, r in arms.items():
            print(f"{shape:<6} {arm:<16} {r['batch']:>5} {r['pairs_per_s']:>8.2f} {r['real_tokens_per_s']:>10.0f} "
                  f"{r['padding_fraction']:>8.2f} {r.get('x_stock', float('nan')):>8.2f}")  # fmt: skip
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({**header, "results": results}, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
