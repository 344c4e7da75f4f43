"""The composed losses compute what the flag-based NormalizedMSELoss computed.

``loss_reference.json`` holds the value and the gradients (w.r.t. every input embedding column) of the loss with 13
option sets on fixed batches, recorded with the flag-based loss at commit 8fb18c9 by ``tests/record_loss_reference.py``
(committed in 03bba58, removed once the loss was refactored). Here the same old ``--loss_kwargs`` go through the
pipeline's mapping (:func:`plan_loss`: core options to :class:`NormalizedMSELoss`, the term options to the pieces that
wrap it) and must give the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gte_st.losses import CachedLoss, NormalizedMSELoss
from gte_st.losses.self_distillation import TEACHER_CONTEXT
from gte_st.training.loss import plan_loss

REFERENCE = json.loads((Path(__file__).parent / "loss_reference.json").read_text())
ROWS, DIM = 6, 8


def column(index: int) -> torch.Tensor:
    """The recorder's deterministic inputs (tests/record_loss_reference.py in 03bba58)."""
    i = torch.arange(ROWS, dtype=torch.float64).view(-1, 1)
    j = torch.arange(DIM, dtype=torch.float64).view(1, -1)
    base = torch.sin(1.3 * i + 0.7 * j) + 0.5 * torch.cos(0.4 * i * j)
    own = torch.sin(2.1 * (index + 1) * i - 0.9 * j + index)
    return (base + 0.6 * own).float()


FINGERPRINTS = [
    torch.tensor([10, 11, 12, 13, 10, 15]),
    torch.tensor([20, 21, 22, 11, 24, 25]),
    torch.tensor([30, 21, 32, 33, 34, 35]),
]
SCORES = torch.tensor([[0.9, 0.1], [0.8, 0.3], [0.7, -0.2], [0.95, 0.4], [0.6, 0.0], [0.85, 0.2]])


def composed(options: dict) -> torch.nn.Module:
    """The loss the pipeline composes from the old flat options (no model: a stand-in frozen teacher whose
    embeddings are given through the batch context)."""
    plan = plan_loss("mse", options)
    loss = NormalizedMSELoss(None, **plan.options)
    for piece, piece_options in plan.pieces:
        extra = {"teacher": torch.nn.Identity()} if piece.switch == "distillation_weight" else {}
        loss = piece.cls(None, loss, **piece_options, **extra)
    return loss


@pytest.mark.parametrize("name", sorted(REFERENCE["cases"]))
def test_composition_reproduces_the_flag_based_loss(name):
    case = REFERENCE["cases"][name]
    options = dict(case["options"])
    num_columns = options.pop("__columns")
    loss = composed(options)
    columns = [column(k).requires_grad_() for k in range(num_columns)]
    context = {TEACHER_CONTEXT: [column(k + 7) for k in range(num_columns)]}
    if loss.mask_duplicates:
        context["fingerprints"] = FINGERPRINTS[:num_columns]
    labels = SCORES[:, : num_columns - 1] if options.get("score_distillation_weight") else None
    value = loss.compute_loss_from_embeddings(columns, labels, context)
    gradients = torch.autograd.grad(value, columns)
    assert value.item() == pytest.approx(case["value"], rel=1e-6, abs=1e-7)
    for gradient, expected in zip(gradients, case["gradients"]):
        torch.testing.assert_close(gradient, torch.tensor(expected), rtol=1e-5, atol=1e-7)


def test_the_reference_has_every_piece_and_distinct_values():
    """The fixture exercises the core and every term (so the test above can fail for each)."""
    cases = REFERENCE["cases"]
    keys = {key for case in cases.values() for key in case["options"]}
    assert {"uniformity_weight", "distillation_weight", "score_distillation_weight", "symmetric"} <= keys
    values = [case["value"] for case in cases.values()]
    assert len(set(values)) == len(values)


def test_the_cached_composition_reproduces_it_too():
    """The chunked path of CachedLoss (rows in chunks of 4 on detached leaves) gives the reference value and
    embedding gradients, through the same calculate_loss the GradCache forward uses."""
    from gte_st.losses.cached import CachedBatch

    case = REFERENCE["cases"]["everything"]
    options = dict(case["options"])
    options.pop("__columns")
    inner = composed(options)
    cached = CachedLoss.__new__(CachedLoss)  # no model to embed with: calculate_loss only
    torch.nn.Module.__init__(cached)
    cached.loss, cached.mini_batch_size = inner, 4
    reps = [[column(k)[:4].clone().requires_grad_(), column(k)[4:].clone().requires_grad_()] for k in range(3)]
    context = {TEACHER_CONTEXT: [column(k + 7) for k in range(3)], "fingerprints": FINGERPRINTS}
    value = cached.calculate_loss(reps, CachedBatch(SCORES, context), with_backward=True)
    assert value.item() == pytest.approx(case["value"], rel=1e-6, abs=1e-7)
    for parts, expected in zip(reps, case["gradients"]):
        torch.testing.assert_close(torch.cat([p.grad for p in parts]), torch.tensor(expected), rtol=1e-5, atol=1e-7)
