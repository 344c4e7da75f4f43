"""gte_st.training.dropout: fast dropout masks (four per 64-bit random word) are dropout with the asked probability,
unbiased, with the right gradients; the trainer uses them on a CPU and puts the model's own modules back."""

from __future__ import annotations

import pytest
import torch
from conftest import stsb_rows
from datasets import Dataset
from transformers import TrainerCallback
from transformers.models.bert.modeling_bert import eager_attention_forward

import gte_st
from gte_st.training import GTETrainer, GTETrainingArguments, build_loss
from gte_st.training.dropout import (
    FAST_DROPOUT_ATTENTION,
    FastDropout,
    drop_threshold,
    eager_attention_fast_dropout,
    fast_dropout,
    keep_mask,
    resolve_training_dropout,
    training_dropout,
)


def _kernel(model) -> str:
    return model[0].auto_model.config._attn_implementation


def _dropout_types(model) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, torch.nn.Dropout)}


def test_auto_is_fast_on_a_cpu_and_torch_elsewhere():
    assert resolve_training_dropout("auto", "cpu") == "fast"
    assert resolve_training_dropout("auto", "cuda") == "torch"
    assert resolve_training_dropout("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="training_dropout must be one of auto, fast, torch, got 'none'"):
        resolve_training_dropout("none", "cpu")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.02])
def test_masks_drop_with_the_asked_probability_independently(p):
    torch.manual_seed(0)
    keep = keep_mask((1000, 1001), p)  # an odd count: the last word is cut
    assert keep.dtype == torch.bool and keep.shape == (1000, 1001)
    dropped = (~keep).float()
    assert drop_threshold(p) / 32768 == pytest.approx(p, abs=1 / 65536)
    assert dropped.mean().item() == pytest.approx(p, abs=5 * (p * (1 - p) / keep.numel()) ** 0.5)
    # each of the four lanes of a word, and neighbours, are independent: the rate of two drops in a row is p^2
    flat = dropped.flatten()[: 1000 * 1000].view(-1, 4)
    for lane in range(4):
        assert flat[:, lane].mean().item() == pytest.approx(p, abs=0.01)
    both = (flat[:, :-1] * flat[:, 1:]).mean().item()
    assert both == pytest.approx(p * p, abs=0.01 * p)
    torch.manual_seed(0)
    assert torch.equal(keep_mask((1000, 1001), p), keep), "the masks come from the seeded default generator"
    assert not torch.equal(keep_mask((1000, 1001), p), keep)


def test_fast_dropout_is_unbiased_with_the_masks_gradient():
    torch.manual_seed(1)
    x = torch.rand(400, 500, dtype=torch.float64) + 0.5
    x.requires_grad_(True)
    y = fast_dropout(x, 0.1)
    scale = 1 / (1 - drop_threshold(0.1) / 32768)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * scale)
    assert y.mean().item() == pytest.approx(x.mean().item(), rel=0.005), "E[y] = x"
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.double() * scale)
    assert fast_dropout(x, 0.1, training=False) is x and fast_dropout(x, 0.0) is x
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\), got 1.0"):
        fast_dropout(x, 1.0)


def test_eager_attention_equals_transformers_eager_without_dropout():
    torch.manual_seed(2)
    query, key, value = (torch.randn(2, 4, 6, 8) for _ in range(3))
    mask = torch.zeros(2, 1, 6, 6)
    mask[1, :, :, 4:] = torch.finfo(torch.float32).min  # padding of the second row
    module = torch.nn.Module().eval()
    ours = eager_attention_fast_dropout(module, query, key, value, mask, scaling=0.3, dropout=0.1)
    theirs = eager_attention_forward(module, query, key, value, mask, scaling=0.3, dropout=0.1)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # keys and values with fewer heads (grouped queries) are repeated per group
    grouped = eager_attention_fast_dropout(module, query, key[:, :2], value[:, :2], None)[0]
    repeated = eager_attention_forward(
        module, query, key[:, :2].repeat_interleave(2, 1), value[:, :2].repeat_interleave(2, 1), None
    )[0]
    torch.testing.assert_close(grouped, repeated)
    module.train()
    torch.manual_seed(3)
    probabilities = eager_attention_fast_dropout(module, query, key, value, mask, dropout=0.5)[1]
    assert 0.4 < (probabilities == 0).float().mean().item() < 0.6, "dropout on the attention probabilities"


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_gte_native_dir", "tiny_modernbert_dir"])
def test_the_models_own_modules_and_kernel_come_back(fixture, request):
    model = gte_st.build_model(str(request.getfixturevalue(fixture)), max_seq_length=32, device="cpu")
    texts = [a for _, a, _ in stsb_rows("train")[:8]]
    model.eval()
    before = model.encode(texts, convert_to_tensor=True)
    own_types, own_kernel = _dropout_types(model), _kernel(model)
    model[0].auto_model.set_attn_implementation("eager")
    with training_dropout(model, "auto") as masks:
        assert masks == "fast"
        if any(m.p > 0 for m in model.modules() if isinstance(m, torch.nn.Dropout)):
            assert FastDropout in _dropout_types(model)
        assert _kernel(model) == FAST_DROPOUT_ATTENTION
        torch.testing.assert_close(model.encode(texts, convert_to_tensor=True), before, atol=1e-5, rtol=1e-5)
    assert _dropout_types(model) == own_types and _kernel(model) == "eager"
    model[0].auto_model.set_attn_implementation(own_kernel)
    with pytest.raises(RuntimeError, match="boom"), training_dropout(model, "fast"):
        raise RuntimeError("boom")
    assert _dropout_types(model) == own_types and _kernel(model) == own_kernel, "SDPA kept, nothing to switch"
    with training_dropout(model, "torch") as masks:
        assert masks == "torch" and _dropout_types(model) == own_types


@pytest.mark.parametrize(("choice", "expected"), [(None, "fast"), ("torch", "torch")], ids=["default", "torch"])
def test_the_trainer_trains_with_the_chosen_masks(tiny_bert_dir, tmp_path, choice, expected):
    rows = stsb_rows("train")[:64]
    pairs = Dataset.from_dict({"anchor": [a for _, a, _ in rows], "positive": [b for _, _, b in rows]})
    model = gte_st.build_model(str(tiny_bert_dir), max_seq_length=32, device="cpu")
    seen: list[tuple[set[type], str]] = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            seen.append((_dropout_types(model), _kernel(model)))

    args = GTETrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=16, max_steps=2, use_cpu=True,
        report_to="none", save_strategy="no",
    )  # fmt: skip
    options = {} if choice is None else {"training_dropout": choice}
    trainer = GTETrainer(
        model=model, args=args, train_dataset=pairs, loss=build_loss(model, "mse"), callbacks=[Record()], **options
    )
    trainer.train()
    assert trainer.dropout_masks == expected and len(seen) == 2
    if expected == "fast":
        assert all(types == {FastDropout} and kernel == FAST_DROPOUT_ATTENTION for types, kernel in seen)
    else:
        assert all(types == {torch.nn.Dropout} and kernel == "eager" for types, kernel in seen)
    assert _dropout_types(model) == {torch.nn.Dropout} and _kernel(model) == "sdpa"
    with pytest.raises(ValueError, match="training_dropout must be one of"):
        GTETrainer(model=model, args=args, train_dataset=pairs, loss=build_loss(model, "mse"), training_dropout="x")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_inputs_keep_their_dtype_and_match_the_fp32_path(dtype):
    torch.manual_seed(4)
    x = (torch.rand(300, 200) + 0.5).to(dtype).requires_grad_(True)
    torch.manual_seed(5)
    y = fast_dropout(x, 0.1)
    y.float().sum().backward()
    reference = x.detach().float().requires_grad_(True)
    torch.manual_seed(5)
    expected = fast_dropout(reference, 0.1)  # the same draws
    expected.sum().backward()
    assert y.dtype == x.grad.dtype == dtype
    torch.testing.assert_close(y.float(), expected, atol=0.02, rtol=0.01)
    torch.testing.assert_close(x.grad.float(), reference.grad, atol=0.01, rtol=0.01)
