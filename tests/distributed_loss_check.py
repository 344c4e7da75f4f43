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
from gte_st.losses import CachedNormalizedMSELoss, NormalizedMSELoss


def run_loss(model, loss, columns) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad()
    value = loss([model.preprocess(column) for column in columns], None)
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

    report = {}
    for name, make in {
        "plain": lambda gather: NormalizedMSELoss(
            model, margin=0.0, negative_weight=1.0, symmetric=True, gather_across_devices=gather
        ),
        "cached": lambda gather: CachedNormalizedMSELoss(
            model, margin=0.0, negative_weight=1.0, symmetric=True, gather_across_devices=gather, mini_batch_size=4
        ),
    }.items():
        loss, grads = run_loss(model, make(True), local)
        dist.all_reduce(loss)
        dist.all_reduce(grads)
        loss, grads = loss / world, grads / world  # what DDP's gradient averaging computes
        reference_loss, reference_grads = run_loss(model, make(False), columns)
        local_only_loss, _ = run_loss(model, make(False), local)
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
