"""Record NormalizedMSELoss's value and gradients on fixed tiny batches, for tests/test_loss_reference.py.

Run once at commit 8fb18c9 (the flag-based loss, before the terms became composable wrappers):

    PYTHONPATH=$PWD python tests/record_loss_reference.py tests/loss_reference.json

The inputs are deterministic functions of their indices (no random generator), so the fixture does not depend on
torch's RNG. Each case stores the loss options, the value and the gradient of the loss with respect to every input
embedding column (and, for distillation, the teacher's embeddings are inputs too, without gradient).
"""

from __future__ import annotations

import json
import sys

import torch

ROWS, DIM = 6, 8


def column(index: int, rows: int = ROWS, dim: int = DIM) -> torch.Tensor:
    """A deterministic, correlated (rows, dim) embedding column: a shared base plus a column-specific part."""
    i = torch.arange(rows, dtype=torch.float64).view(-1, 1)
    j = torch.arange(dim, dtype=torch.float64).view(1, -1)
    base = torch.sin(1.3 * i + 0.7 * j) + 0.5 * torch.cos(0.4 * i * j)
    own = torch.sin(2.1 * (index + 1) * i - 0.9 * j + index)
    return (base + 0.6 * own).float()


def fingerprints() -> list[torch.Tensor]:
    """Row 4's anchor repeats row 0's; row 3's positive repeats row 1's anchor; row 1's negative repeats its
    positive (so duplicate masking changes the result)."""
    anchors = torch.tensor([10, 11, 12, 13, 10, 15])
    positives = torch.tensor([20, 21, 22, 11, 24, 25])
    negatives = torch.tensor([30, 21, 32, 33, 34, 35])
    return [anchors, positives, negatives]


SCORES = torch.tensor([[0.9, 0.1], [0.8, 0.3], [0.7, -0.2], [0.95, 0.4], [0.6, 0.0], [0.85, 0.2]])

CASES: dict[str, dict] = {
    "defaults": {},
    "defaults-pairs": {"__columns": 2},
    "symmetric": {"symmetric": True},
    "mean-squared": {"weighting": "mean", "negative_penalty": "squared_hinge", "margin": 0.1, "negative_weight": 3.0},
    "hardness-undetached": {"weighting": "hardness", "temperature": 0.1, "detach_weights": False, "margin": 0.0,
                            "symmetric": True},
    "positive-margin": {"positive_margin": 0.8, "negative_weight": 1.5},
    "no-duplicate-masking": {"mask_duplicates": False},
    "uniformity": {"uniformity_weight": 0.5, "uniformity_t": 3.0},
    "uniformity-symmetric-mean": {"uniformity_weight": 0.2, "weighting": "mean", "symmetric": True},
    "distillation": {"distillation_weight": 30.0},
    "distillation-embeddings": {"distillation_weight": 5.0, "distillation_target": "embeddings", "symmetric": True},
    "scores": {"score_distillation_weight": 20.0},
    "everything": {"uniformity_weight": 0.3, "distillation_weight": 4.0, "score_distillation_weight": 10.0,
                   "symmetric": True, "positive_margin": 0.9},
}  # fmt: skip


def record() -> dict:
    from gte_st.losses import NormalizedMSELoss

    cases = {}
    for name, options in CASES.items():
        options = dict(options)
        num_columns = options.pop("__columns", 3)
        columns = [column(k).requires_grad_() for k in range(num_columns)]
        teacher = [column(k + 7) for k in range(num_columns)]
        loss = NormalizedMSELoss(None, **options)
        uses_teacher = options.get("distillation_weight", 0) > 0
        labels = SCORES[:, : num_columns - 1] if options.get("score_distillation_weight") else None
        fps = [fp for fp in fingerprints()[:num_columns]] if loss.mask_duplicates else None
        value = loss.compute_loss_from_embeddings(
            columns, labels, fingerprints=fps, teacher_embeddings=teacher if uses_teacher else None
        )
        grads = torch.autograd.grad(value, columns)
        cases[name] = {
            "options": {**options, "__columns": num_columns},
            "value": value.item(),
            "gradients": [g.tolist() for g in grads],
        }
    return cases


if __name__ == "__main__":
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    payload = {
        "recorded_at_commit": commit,
        "torch": torch.__version__,
        "recorder": "tests/record_loss_reference.py (removed after recording; see git history)",
        "cases": record(),
    }
    with open(sys.argv[1], "w") as f:
        json.dump(payload, f, indent=1)
