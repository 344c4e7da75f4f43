"""The `gte-st train` entry point as processes: kill -9 + --resume, `SentenceTransformer("gte")`, 2-process DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import stsb_rows
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from gte_st.commands.train import main

# A resumed run replays the same batches, dropout masks and optimizer state; the only differences are float
# summation-order effects, so weights must agree to within this absolute tolerance.
RESUME_ATOL = 1e-6

KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from transformers import TrainerCallback
    from gte_st.commands.train import main

    class KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == int(os.environ["KILL_AT_STEP"]):
                os.kill(os.getpid(), signal.SIGKILL)

    sys.exit(main(sys.argv[1:], callbacks=[KillAt()]))
    """
)

DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from accelerate import PartialState
    from gte_st.training import GTETrainer, parse_stages
    from gte_st.data import load_training_data
    import gte_st
    from gte_st.commands.train import main

    argv = sys.argv[1:]
    (stage,) = parse_stages(argv)
    state = PartialState()
    data = load_training_data(stage.recipe.data, min_rows=16)
    model = gte_st.build_model(stage.recipe.base_model)
    trainer = GTETrainer(model=model, args=stage.args, train_dataset=data, loss=gte_st.losses.NormalizedMSELoss(model))
    batches = [list(map(int, b)) for b in trainer.get_train_dataloader().batch_sampler]
    with open(os.path.join(os.environ["RECORD_DIR"], f"rank{state.process_index}.json"), "w") as f:
        json.dump({"world_size": state.num_processes, "batches": batches, "sizes": [len(d) for d in data.values()]}, f)
    sys.exit(main(argv))
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _write_pairs(path: Path, start: int, count: int, prefix: str = "") -> Path:
    rows, seen = [], set()  # distinct texts: a source pass then fills every batch without resampling
    for _, a, b in stsb_rows("train")[start:]:
        if len(rows) < count and a not in seen and b not in seen and a != b:
            rows.append((0.0, a, b))
            seen.update((a, b))
    path.write_text(
        "".join(json.dumps({"anchor": prefix + a, "positive": prefix + b}) + "\n" for _, a, b in rows), encoding="utf8"
    )
    return path


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def test_sigkill_and_resume_matches_uninterrupted_run(tiny_bert_dir, tmp_path, monkeypatch):
    a = _write_pairs(tmp_path / "a.jsonl", 0, 96)
    b = _write_pairs(tmp_path / "b.jsonl", 200, 48)
    args = ["--base_model", str(tiny_bert_dir), "--data", str(a), str(b), "--precision", "fp32",
            "--per_device_train_batch_size", "8", "--max_steps", "9", "--save_steps", "3",
            "--learning_rate", "1e-3", "--seed", "123"]  # fmt: skip

    # the uninterrupted run, in the default output directory of a fresh working directory
    monkeypatch.chdir(tmp_path)
    assert main(args) == 0
    reference = _weights(tmp_path / "gte")
    loaded = SentenceTransformer("gte")  # plain sentence-transformers loads the model just trained
    assert [type(m).__name__ for m in loaded] == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((tmp_path / "gte" / "training_summary.json").read_text())["stages"][0]["steps"] == 9

    # the same run killed with SIGKILL right after step 5 (last checkpoint: step 3), then resumed
    out = tmp_path / "killed"
    script = tmp_path / "kill_run.py"
    script.write_text(KILL_SCRIPT)
    process = subprocess.run(
        [sys.executable, str(script), *args, "--output_dir", str(out)],
        env={**_env(), "KILL_AT_STEP": "5"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    assert not (out / "modules.json").exists()
    assert sorted(p.name for p in (out / "checkpoints" / "train").iterdir()) == ["checkpoint-3"]

    assert main([*args, "--output_dir", str(out), "--resume"]) == 0
    resumed = _weights(out)
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], atol=RESUME_ATOL, rtol=0)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["stages"][0]["steps"] == 9


@pytest.mark.distributed
def test_two_process_ddp_batches_share_one_source_per_step(tiny_bert_dir, tmp_path):
    a = _write_pairs(tmp_path / "a.jsonl", 0, 160)
    b = _write_pairs(tmp_path / "b.jsonl", 400, 64)
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    record = tmp_path / "record"
    record.mkdir()
    out = tmp_path / "ddp-model"
    # On a machine without GPUs, accelerate's --multi_gpu launcher (torchrun) + use_cpu gives gloo MULTI_CPU DDP
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533", str(script),
               "--base_model", str(tiny_bert_dir), "--data", str(a), str(b), "--precision", "fp32",
               "--per_device_train_batch_size", "8", "--max_steps", "4", "--save_steps", "100",
               "--alpha", "0.5", "--gather_across_devices", "--output_dir", str(out)]  # fmt: skip
    process = subprocess.run(
        command, env={**_env(), "RECORD_DIR": str(record)}, capture_output=True, text=True, timeout=400
    )
    # every rank's own traceback lines, then the tails: torchrun's summary alone hides which rank failed and why
    rank_lines = "\n".join(line for line in process.stderr.splitlines() if line.startswith("[rank"))[-6000:]
    assert process.returncode == 0, rank_lines + "\n" + process.stdout[-2000:] + process.stderr[-3000:]

    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(rank["world_size"] == 2 for rank in ranks)
    sizes = ranks[0]["sizes"]

    def source(batch: list[int]) -> int:
        owners = {0 if index < sizes[0] else 1 for index in batch}
        assert len(owners) == 1, "a batch mixes sources"
        return owners.pop()

    steps = list(zip(ranks[0]["batches"], ranks[1]["batches"]))
    assert len(steps) == (160 + 64) // 8 // 2
    assert all(source(b0) == source(b1) for b0, b1 in steps), "ranks trained on different sources at one step"
    assert {source(b0) for b0, _ in steps} == {0, 1}
    assert all(not set(b0) & set(b1) for b0, b1 in steps), "ranks got overlapping rows"

    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["stages"][0]["global_batch_size"] == 16
    assert SentenceTransformer(str(out)).encode(["a test"]).shape == (1, 32)
