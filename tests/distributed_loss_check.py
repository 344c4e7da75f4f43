"""Run under `accelerate launch --cpu --num_processes 2` by tests/test_losses.py.

Each rank embeds its half of a global batch and computes the loss with ``gather_across_devices=True``; gradients are
averaged over ranks as DDP does. Rank 0 compares the rank-averaged loss and gradients with one process computing the
loss on the concatenated batch, and writes the gaps to the JSON file given as the second argument.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from accelerate import Accelerator
from conftest import stsb_rows

import gte_st
from gte_st.training.loss import build_loss


def run_loss(model, loss, columns, labels=None) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad()
    value = loss([model.preprocess(column) for column in columns], labels)
    value.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return value.detach(), grads


def main() -> None:
    model_dir, out_file = sys.argv[1], sys.argv[2]
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == 2, world
    model = gte_st.build_model(model_dir)
    model.eval()  # no dropout: every process computes the same embeddings for the same text

    rows = stsb_rows("train")[:12]
    anchors, positives = [r[1] for r in rows], [r[2] for r in rows]
    negatives = [r[2] for r in rows[4:] + rows[:4]]
    anchors[9] = anchors[1]  # a duplicate anchor text on the other rank
    positives[8] = positives[2]
    columns = [anchors, positives, negatives]
    local = [column[rank * 6 : (rank + 1) * 6] for column in columns]
    scores = torch.linspace(-0.4, 0.9, 24).view(12, 2)  # teacher scores of (positive, negative) per row
    local_scores = scores[rank * 6 : (rank + 1) * 6]

    report = {}
    options = {
        "mean": {"weighting": "mean", "negative_penalty": "squared_hinge", "margin": 0.0, "negative_weight": 1.0},
        "hardness": {"weighting": "hardness", "temperature": 0.1, "margin": 0.0, "negative_weight": 4.0},
        "infonce": {"weighting": "infonce", "temperature": 0.1, "negative_penalty": "hinge", "margin": -1.0,
                    "negative_weight": 2.0, "positive_margin": 0.9, "uniformity_weight": 0.5},
        "distill": {"distillation_weight": 5.0},
        "scores": {"score_distillation_weight": 20.0},
        "filter": {"false_negative_margin": 0.05, "false_negative_strategy": "relative"},
        "guide": {"false_negative_margin": 0.0, "guide": "teacher", "uniformity_weight": 0.3},
        "matryoshka": {"matryoshka_dims": [32, 16, 8], "distillation_weight": 2.0, "false_negative_margin": 0.1},
    }  # fmt: skip
    teacher = gte_st.build_model(model_dir)  # the same weights: the student is moved away from it below
    teacher.eval()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)  # the same perturbation on every rank
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    makers = {}
    for option_name, kwargs in options.items():
        extra = {"teacher": teacher} if kwargs.get("distillation_weight") else {}
        if kwargs.get("guide") == "teacher":
            extra["guide"] = teacher  # the frozen guide: the unperturbed weights
        makers[f"plain-{option_name}"] = lambda gather, kw={**kwargs, **extra}: build_loss(
            model, "mse", symmetric=True, gather_across_devices=gather, **kw
        )
        makers[f"cached-{option_name}"] = lambda gather, kw={**kwargs, **extra}: build_loss(
            model, "mse", symmetric=True, gather_across_devices=gather, mini_batch_size=4, **kw
        )
    for name, make in makers.items():
        labels, local_labels = (scores, local_scores) if name.endswith("-scores") else (None, None)
        loss, grads = run_loss(model, make(True), local, local_labels)
        dist.all_reduce(loss)
        dist.all_reduce(grads)
        loss, grads = loss / world, grads / world  # what DDP's gradient averaging computes
        reference_loss, reference_grads = run_loss(model, make(False), columns, labels)
        local_only_loss, _ = run_loss(model, make(False), local, local_labels)
        dist.all_reduce(local_only_loss)
        report[name] = {
            "loss": loss.item(),
            "reference_loss": reference_loss.item(),
            "loss_gap": abs(loss.item() - reference_loss.item()),
            "grad_gap": (grads - reference_grads).abs().max().item(),
            "loss_gap_without_gather": abs(local_only_loss.item() / world - reference_loss.item()),
        }
    if accelerator.is_main_process:
        with open(out_file, "w") as f:
            json.dump(report, f, indent=2)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
