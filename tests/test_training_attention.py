"""gte_st.training.attention: the encoder trains with eager attention on a CPU (``training_attention="auto"``), which
computes what SDPA computes, and gets its own kernel back after training."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import stsb_rows
from datasets import Dataset
from transformers import TrainerCallback

import gte_st
from gte_st.training import GTETrainer, GTETrainingArguments, build_loss
from gte_st.training.attention import resolve_training_attention, training_attention

ARCHITECTURES = ["tiny_bert_dir", "tiny_gte_native_dir", "tiny_modernbert_dir"]


def _kernel(model) -> str:
    return model[0].auto_model.config._attn_implementation


@pytest.fixture(scope="module")
def pairs() -> Dataset:
    rows = stsb_rows("train")[:64]
    return Dataset.from_dict({"anchor": [a for _, a, _ in rows], "positive": [b for _, _, b in rows]})


def test_auto_is_eager_on_a_cpu_and_the_models_own_elsewhere():
    assert resolve_training_attention("auto", "cpu") == "eager"
    assert resolve_training_attention("auto", "cuda") is None
    assert resolve_training_attention("sdpa", "cpu") == "sdpa"
    with pytest.raises(ValueError, match="training_attention must be one of auto, eager, sdpa, got 'flash'"):
        resolve_training_attention("flash", "cpu")


@pytest.mark.parametrize("fixture", ARCHITECTURES)
def test_eager_attention_computes_what_sdpa_computes(fixture, request):
    """Same loss and gradients (fp32, dropout off so both paths see the same function) with either kernel."""
    model = gte_st.build_model(str(request.getfixturevalue(fixture)), max_seq_length=32, device="cpu")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name in ("attention_dropout", "attention_probs_dropout_prob"):
        if hasattr(model[0].auto_model.config, name):
            setattr(model[0].auto_model.config, name, 0.0)
    texts = [a for _, a, _ in stsb_rows("train")[:12]]
    model.train()

    def loss_and_grads():
        model.zero_grad()
        features = model.preprocess(texts)
        embeddings = model(features)["sentence_embedding"]
        loss = (embeddings @ embeddings.T).logsumexp(dim=1).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    assert _kernel(model) == "sdpa"
    sdpa_loss, sdpa_grads = loss_and_grads()
    with training_attention(model, "auto") as kernel:
        assert kernel == "eager" and _kernel(model) == "eager"
        eager_loss, eager_grads = loss_and_grads()
    assert _kernel(model) == "sdpa"
    torch.testing.assert_close(eager_loss, sdpa_loss, atol=1e-5, rtol=1e-5)
    assert len(eager_grads) == len(sdpa_grads) > 0
    for eager, sdpa in zip(eager_grads, sdpa_grads):
        torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-4)


def test_the_kernel_comes_back_after_an_error(tiny_model):
    with pytest.raises(RuntimeError, match="boom"), training_attention(tiny_model, "eager"):
        assert _kernel(tiny_model) == "eager"
        raise RuntimeError("boom")
    assert _kernel(tiny_model) == "sdpa"


@pytest.mark.parametrize(("choice", "expected"), [(None, "eager"), ("sdpa", "sdpa")], ids=["default", "sdpa"])
def test_the_trainer_trains_with_the_chosen_kernel_and_saves_none(tiny_bert_dir, pairs, tmp_path, choice, expected):
    model = gte_st.build_model(str(tiny_bert_dir), max_seq_length=32, device="cpu")
    seen: list[str] = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            seen.append(_kernel(model))

    args = GTETrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=16, max_steps=2, use_cpu=True,
        report_to="none", save_strategy="no",
    )  # fmt: skip
    options = {"training_dropout": "torch"}  # the fast masks' eager attention has its own name (test_training_dropout)
    if choice is not None:
        options["training_attention"] = choice
    trainer = GTETrainer(
        model=model, args=args, train_dataset=pairs, loss=build_loss(model, "mse"), callbacks=[Record()], **options
    )
    trainer.train()
    assert seen == [expected, expected] and trainer.attention_kernel == expected
    assert _kernel(model) == "sdpa", "evaluation and serving after training use the model's own kernel"
    model.save(str(tmp_path / "saved"))
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "eager" not in json.dumps(config), "the training kernel is not saved"


def test_a_bad_kernel_is_refused_before_training(tiny_model, pairs, tmp_path):
    args = GTETrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="training_attention must be one of"):
        GTETrainer(
            model=tiny_model, args=args, train_dataset=pairs, loss=build_loss(tiny_model, "mse"),
            training_attention="flash",
        )  # fmt: skip
