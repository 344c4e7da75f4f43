"""Benchmark 2: training throughput (pairs/s) and peak memory, gte-st's default path vs sentence-transformers'.

Every configuration trains the offline all-MiniLM-L6-v2 for a few steps through a Trainer on the same real pairs (the
embedded docstring pairs of ``gte_st.default_data``), each in a fresh process so that peak RSS is its own:

- ``st-mnrl``: stock sentence-transformers: ``SentenceTransformer`` + ``MultipleNegativesRankingLoss``, batch 32,
  max length 256, fp32 (the baseline);
- ``st-cached-mnrl``: the same with ``CachedMultipleNegativesRankingLoss`` (mini-batch 32);
- ``gte-st-default``: gte-st's default training path (``gte_st.training``: GTE model, ``NormalizedMSELoss``,
  no-duplicates batches, max length 128, precision ``auto`` = bf16 autocast on this AMX CPU);
- ``gte-st-fp32``: the same in fp32 (isolates the bf16 gain);
- ``gte-st-cached-B``: ``CachedNormalizedMSELoss`` (mini-batch 32) at growing batch sizes B: memory stays flat.

pairs/s is measured between the end of the first step and the end of the last (the first step pays one-off costs).

    python scripts/bench_train_throughput.py [--steps 4] [--cached-batches 32,128,512]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

CONFIGS = {
    "st-mnrl": {"model": "st", "loss": "mnrl", "batch": 32, "max_len": 256, "precision": "fp32"},
    "st-cached-mnrl": {"model": "st", "loss": "cached-mnrl", "batch": 32, "max_len": 256, "precision": "fp32"},
    "gte-st-default": {"model": "gte", "loss": "mse", "batch": 32, "max_len": 128, "precision": "auto"},
    "gte-st-fp32": {"model": "gte", "loss": "mse", "batch": 32, "max_len": 128, "precision": "fp32"},
}


def worker(config: dict) -> dict:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer import losses
    from transformers import TrainerCallback

    import gte_st
    from gte_st.training import GTETrainer, GTETrainingArguments, build_loss, mixed_precision_flags

    pairs = Dataset.from_json(config["pairs_file"])
    batch, steps = config["batch"], config["steps"]
    pairs = pairs.select(range(min(len(pairs), batch * (steps + 1))))

    class Clock(TrainerCallback):
        times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    precision = mixed_precision_flags(config["precision"])
    common = dict(
        output_dir=os.path.join(os.path.dirname(config["pairs_file"]), "trainer"), per_device_train_batch_size=batch,
        max_steps=steps, save_strategy="no", logging_steps=1000, report_to="none", learning_rate=2e-5, seed=0,
        disable_tqdm=True, dataloader_drop_last=True,
    )  # fmt: skip
    clock = Clock()
    if config["model"] == "st":
        from sentence_transformers import SentenceTransformerTrainingArguments

        model = SentenceTransformer(gte_st.default_base_model())
        model.max_seq_length = config["max_len"]
        loss = (
            losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=32)
            if config["loss"] == "cached-mnrl"
            else losses.MultipleNegativesRankingLoss(model)
        )
        args = SentenceTransformerTrainingArguments(**common, batch_sampler="no_duplicates", **precision)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=loss, callbacks=[clock])
    else:
        model = gte_st.build_model(max_seq_length=config["max_len"])
        loss = build_loss(model, "mse", mini_batch_size=config.get("mini_batch_size"))
        args = GTETrainingArguments(**common, **precision)
        trainer = GTETrainer(model=model, args=args, train_dataset=pairs, loss=loss, callbacks=[clock])
    trainer.train()
    elapsed = clock.times[-1] - clock.times[0]
    return {
        **config,
        "precision": "bf16" if precision["bf16"] else "fp32",
        "pairs_per_s": round((len(clock.times) - 1) * batch / elapsed, 3),
        "s_per_step": round(elapsed / (len(clock.times) - 1), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="training steps per configuration (>= 2)")
    parser.add_argument("--cached-batches", default="32,128,512", help="batch sizes for the cached gte-st loss")
    parser.add_argument("--only", nargs="*", help="run only these configuration names")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    configs = dict(CONFIGS)
    for batch in [int(b) for b in args.cached_batches.split(",") if b]:
        configs[f"gte-st-cached-{batch}"] = {"model": "gte", "loss": "cached-mse", "batch": batch, "max_len": 128,
                                             "precision": "auto", "mini_batch_size": 32}  # fmt: skip
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only}
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.2f}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    import tempfile

    from datasets import Dataset

    from gte_st.default_data import default_datasets

    train, _ = default_datasets(max_test=0)
    work = tempfile.mkdtemp(prefix="gte-st-bench-")
    pairs_file = os.path.join(work, "pairs.jsonl")
    columns = {k: [t for d in train.values() for t in d[k]] for k in ("anchor", "positive")}
    Dataset.from_dict(columns).shuffle(seed=0).to_json(pairs_file)
    results = {}
    for name, config in configs.items():
        config = {**config, "pairs_file": pairs_file}
        steps = args.steps if config["batch"] <= 64 else 2
        out = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps({**config, "steps": steps})],
            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        )  # fmt: skip
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{out.stderr[-3000:]}")
            continue
        results[name] = json.loads(line.removeprefix("RESULT "))
        r = results[name]
        print(f"{name:<20} batch {r['batch']:>4} len {r['max_len']:>3} {r['precision']:<4} {r['pairs_per_s']:8.2f} "
              f"pairs/s {r['s_per_step']:7.2f} s/step  peak RSS {r['peak_rss_mib']:>5} MiB", flush=True)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    base = results.get("st-mnrl")
    if base:
        for name, r in results.items():
            print(f"ratio {name} / st-mnrl: {r['pairs_per_s'] / base['pairs_per_s']:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
