"""LoRA through peft (gte_st.lora, ``gte-st train --lora_r``): only the adapter trains, with any gte-st loss (cached
and gathered too); merged, the model is plain weights that stock sentence-transformers reloads to 1e-6; saved as an
adapter, it reloads with its base model; a LoRA stage resumes from its adapter checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import stsb_rows
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback

import gte_st
from gte_st.commands.train import main
from gte_st.lora import add_lora, has_lora, load_adapter, merge_lora
from gte_st.losses import NormalizedMSELoss

pytest.importorskip("peft")

TEXTS = ["A man is playing a guitar.", "The cat sleeps on the sofa all afternoon.", "Stocks fell sharply on Monday."]
ATOL = 1e-6


def _pairs(path: Path, start: int, count: int) -> Path:
    rows = stsb_rows("train")[start : start + count]
    path.write_text("".join(json.dumps({"anchor": a, "positive": b}) + "\n" for _, a, b in rows), encoding="utf8")
    return path


def _encode(model: SentenceTransformer) -> torch.Tensor:
    model.eval()
    return model.encode(TEXTS, convert_to_tensor=True, batch_size=8)


def _train_steps(model: SentenceTransformer, steps: int = 3) -> None:
    """A few AdamW steps of gte-st's default loss on STS-B pairs (in-batch negatives)."""
    loss = NormalizedMSELoss(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rows = stsb_rows("train")[:16]
    model.train()
    for _ in range(steps):
        features = [model.tokenize([r[1] for r in rows]), model.tokenize([r[2] for r in rows])]
        loss(features, None).backward()
        optimizer.step()
        optimizer.zero_grad()


def test_only_the_adapter_trains_and_merging_gives_plain_low_rank_updated_weights(tiny_bert_dir, tmp_path):
    torch.manual_seed(0)
    model = gte_st.build_model(str(tiny_bert_dir))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    start = _encode(model)
    add_lora(model, r=4)
    assert has_lora(model)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    torch.testing.assert_close(_encode(model), start, atol=ATOL, rtol=0)  # B = 0: the adapter starts as a no-op

    _train_steps(model)
    adapted = _encode(model)
    assert (adapted - start).abs().max() > 1e-3, "the adapter did not train"

    merge_lora(model)
    assert not has_lora(model) and all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(_encode(model), adapted, atol=ATOL, rtol=0)
    merged = model.state_dict()
    assert merged.keys() == base.keys()
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    # peft's default targets for BERT: the attention query and value projections' weights, and only those
    assert changed and all(k.endswith(("query.weight", "value.weight")) for k in changed), changed
    for key in changed:
        assert torch.linalg.matrix_rank(merged[key] - base[key]).item() <= 4

    model.save(str(tmp_path / "merged"))
    assert not list((tmp_path / "merged").rglob("adapter_*"))
    reloaded = SentenceTransformer(str(tmp_path / "merged"), device="cpu")  # stock sentence-transformers, no peft
    torch.testing.assert_close(_encode(reloaded), adapted, atol=ATOL, rtol=0)


def test_train_lora_merged_and_as_adapter_give_the_same_model(tiny_bert_dir, tmp_path):
    """`gte-st train --lora_r` with the cached loss (and gathering, a no-op in one process): the merged output is the
    portable layout that stock sentence-transformers reloads; the same run saved as an adapter (peft's layout, naming
    its base model) reloads through load_adapter; both embed alike."""
    # 80 rows for 4 steps of 16: STS-B repeats sentences, and a batch never holds one twice (one batch may go short)
    data = _pairs(tmp_path / "pairs.jsonl", 0, 80)
    args = ["--base_model", str(tiny_bert_dir), "--data", str(data), "--precision", "fp32", "--seed", "5",
            "--per_device_train_batch_size", "16", "--max_steps", "4", "--save_steps", "100",
            "--learning_rate", "1e-2", "--lora_r", "4", "--lora_alpha", "8",
            "--mini_batch_size", "8", "--gather_across_devices", "true"]  # fmt: skip
    assert main([*args, "--output_dir", str(tmp_path / "merged")]) == 0
    assert main([*args, "--output_dir", str(tmp_path / "adapter"), "--lora_save", "adapter"]) == 0

    merged_dir, adapter_dir = tmp_path / "merged", tmp_path / "adapter"
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()
    assert (adapter_dir / "adapter_model.safetensors").is_file() and not (adapter_dir / "model.safetensors").exists()
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8
    assert Path(adapter_config["base_model_name_or_path"]) == Path(tiny_bert_dir)

    summary = json.loads((merged_dir / "training_summary.json").read_text())
    stage = summary["stages"][0]
    assert stage["loss"]["name"] == "CachedLoss(NormalizedMSELoss)" and stage["steps"] == 4
    assert stage["lora"] == {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "peft's default",
                             "saved": "merged"}  # fmt: skip
    assert json.loads((adapter_dir / "training_summary.json").read_text())["stages"][0]["lora"]["saved"] == "adapter"

    merged = SentenceTransformer(str(merged_dir), device="cpu")
    base = SentenceTransformer(str(tiny_bert_dir), device="cpu")
    assert (_encode(merged) - _encode(base)).abs().max() > 1e-3, "training changed nothing"
    with_adapter = load_adapter(adapter_dir)
    assert has_lora(with_adapter) and with_adapter.max_seq_length == merged.max_seq_length
    torch.testing.assert_close(_encode(with_adapter), _encode(merged), atol=ATOL, rtol=0)


class _CrashAfter(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("crash for the test")


def test_a_lora_stage_resumes_from_its_adapter_checkpoint(tiny_bert_dir, tmp_path):
    data = _pairs(tmp_path / "pairs.jsonl", 100, 64)
    args = ["--base_model", str(tiny_bert_dir), "--data", str(data), "--precision", "fp32", "--seed", "9",
            "--per_device_train_batch_size", "16", "--max_steps", "5", "--save_steps", "2",
            "--learning_rate", "1e-2", "--lora_r", "4"]  # fmt: skip
    assert main([*args, "--output_dir", str(tmp_path / "whole")]) == 0
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="crash for the test"):
        main([*args, "--output_dir", str(out)], callbacks=[_CrashAfter(3)])
    checkpoint = out / "checkpoints" / "train" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert main([*args, "--output_dir", str(out), "--resume"]) == 0
    reference, resumed = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], atol=ATOL, rtol=0)
