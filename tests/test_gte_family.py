"""The GTE family on CPU: BERT (gte-small/base/large), native GTE (gte-v1.5 / gte-multilingual, ``model_type: gte``)
and ModernBERT (gte-modernbert-base) bases, each with the attention implementations it supports. Build, train a few
steps with NormalizedMSELoss through sentence-transformers' Trainer, save, load with stock sentence-transformers,
evaluate, index and search -- on tiny models built from configs with a local tokenizer.

Pooling follows the checkpoint (``build_model(pooling="auto")``) and stays portable whatever it is.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, stsb_rows
from datasets import Dataset
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.modules import Normalize
from sentence_transformers.sentence_transformer.modules import Pooling
from test_model import SENTENCES, load_in_clean_interpreter

import gte_st
from gte_st import GTEMeanPooling
from gte_st.losses import NormalizedMSELoss

ARCHITECTURES = {"bert": "tiny_bert_dir", "gte": "tiny_gte_native_dir", "modernbert": "tiny_modernbert_dir"}
MODEL_TYPES = {"bert": "bert", "gte": "gte", "modernbert": "modernbert"}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """Tiny models on a busy shared CPU: this module runs on one torch thread (see conftest)."""


@pytest.fixture(params=list(ARCHITECTURES))
def base_dir(request):
    return request.param, request.getfixturevalue(ARCHITECTURES[request.param])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_build_train_save_and_load_with_stock_sentence_transformers(base_dir, attn, tmp_path):
    arch, path = base_dir
    model = gte_st.build_model(str(path), max_seq_length=32, model_kwargs={"attn_implementation": attn})
    hf_model = model[0].auto_model
    assert hf_model.config.model_type == MODEL_TYPES[arch] and hf_model.config._attn_implementation == attn
    assert isinstance(model[1], GTEMeanPooling)  # a bare encoder gets GTE mean pooling

    rows = stsb_rows("train")[:16]
    dataset = Dataset.from_dict({"anchor": [r[1] for r in rows], "positive": [r[2] for r in rows]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        max_steps=2,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    before = [p.detach().clone() for p in model.parameters()]
    loss = NormalizedMSELoss(model)
    result = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss).train()
    assert np.isfinite(result.training_loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))

    model.save(str(tmp_path / "final"))
    reloaded = SentenceTransformer(str(tmp_path / "final"), device="cpu")
    assert [type(m).__name__ for m in reloaded] == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((tmp_path / "final" / "config.json").read_text())["model_type"] == MODEL_TYPES[arch]
    assert np.abs(reloaded.encode(SENTENCES) - model.encode(SENTENCES)).max() <= 1e-6


def test_eager_and_sdpa_give_the_same_embeddings(base_dir):
    _, path = base_dir
    eager = gte_st.build_model(str(path), model_kwargs={"attn_implementation": "eager"})
    sdpa = gte_st.build_model(str(path), model_kwargs={"attn_implementation": "sdpa"})
    texts = SENTENCES + ["a much longer sentence " * 6]  # padding in the batch
    assert np.abs(eager.encode(texts, batch_size=5) - sdpa.encode(texts, batch_size=5)).max() <= 1e-5


def test_evaluate_index_and_search(base_dir, tmp_path):
    from gte_st.evaluation.sts import evaluate_sts
    from gte_st.search import build_index, retrieve

    _, path = base_dir
    model = gte_st.build_model(str(path), max_seq_length=32)
    result = evaluate_sts(model, SHARED_DATA / "stsb" / "sts-dev.csv", max_samples=32, batch_size=16)
    rows = stsb_rows("dev")[:32]
    a, b = model.encode([r[1] for r in rows]), model.encode([r[2] for r in rows])
    expected = spearmanr((a * b).sum(axis=1), [r[0] for r in rows]).statistic
    assert result.metrics[result.main_score] == pytest.approx(expected, abs=1e-4)
    texts = sorted({r[1] for r in stsb_rows("dev")[:40]})[:12]
    ids = [f"d{i}" for i in range(len(texts))]
    index = build_index((ids, texts), model, tmp_path / "index", show_progress_bar=False, encode_precision="fp32")
    # a document is its own nearest neighbour (embeddings are unit length: its score is 1)
    for doc_id, text in list(zip(ids, texts, strict=True))[:3]:
        hit = retrieve(index, text, k=1)[0]
        assert hit.id == doc_id and hit.score == pytest.approx(1.0, abs=1e-4)


@pytest.fixture(scope="module")
def cls_checkpoint(tiny_gte_native_dir, tmp_path_factory):
    """A trained-style sentence-transformers checkpoint with CLS pooling + Normalize (like gte-base-en-v1.5 after
    ``gte-st convert``), saved by gte-st."""
    out = tmp_path_factory.mktemp("gte-cls") / "model"
    gte_st.build_model(str(tiny_gte_native_dir), pooling="cls").save(str(out))
    return out


def test_auto_pooling_keeps_the_checkpoints_cls_pooling(cls_checkpoint, caplog):
    stock = SentenceTransformer(str(cls_checkpoint), device="cpu")
    with caplog.at_level(logging.WARNING, logger="gte_st.model"):
        model = gte_st.build_model(str(cls_checkpoint))
    assert not caplog.records
    assert [type(m) for m in model] == [type(model[0]), Pooling, Normalize] and model[1].pooling_mode == "cls"
    np.testing.assert_array_equal(model.encode(SENTENCES), stock.encode(SENTENCES))
    # CLS: the embedding is the normalised first-token state
    batch = model.tokenize(SENTENCES)
    with torch.no_grad():
        first = model[0].auto_model(**batch).last_hidden_state[:, 0]
    expected = torch.nn.functional.normalize(first, dim=-1).numpy()
    assert np.abs(model.encode(SENTENCES) - expected).max() <= 1e-6


def test_overriding_a_trained_pooling_warns_and_a_bare_encoder_does_not(cls_checkpoint, tiny_gte_native_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="gte_st.model"):
        mean = gte_st.build_model(str(cls_checkpoint), pooling="mean")
    assert isinstance(mean[1], GTEMeanPooling)
    assert any("'cls' pooling" in r.getMessage() and "'mean'" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gte_st.model"):
        cls = gte_st.build_model(str(tiny_gte_native_dir), pooling="cls")
    assert not caplog.records and cls[1].pooling_mode == "cls"
    with pytest.raises(ValueError, match="pooling must be one of"):
        gte_st.build_model(str(tiny_gte_native_dir), pooling="first")


def test_cls_model_saves_a_portable_layout(cls_checkpoint, tmp_path):
    pooling = json.loads((cls_checkpoint / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode"] == "cls" and pooling["pooling_mode_cls_token"] is True
    assert pooling["pooling_mode_mean_tokens"] is False  # TEI picks CLS from this flag
    modules = [m["type"] for m in json.loads((cls_checkpoint / "modules.json").read_text())]
    assert modules == [f"sentence_transformers.models.{n}" for n in ("Transformer", "Pooling", "Normalize")]
    expected = gte_st.build_model(str(cls_checkpoint)).encode(SENTENCES, batch_size=2)
    assert load_in_clean_interpreter(cls_checkpoint, tmp_path / "emb.npy") == ["Transformer", "Pooling", "Normalize"]
    assert np.abs(np.load(tmp_path / "emb.npy") - expected).max() <= 1e-6


def test_unnormalized_cls_pooling(tiny_modernbert_dir, tmp_path):
    model = gte_st.build_model(str(tiny_modernbert_dir), pooling="cls", normalize=False)
    assert [type(m) for m in model][1:] == [Pooling]
    model.save(str(tmp_path / "m"))
    reloaded = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert [type(m).__name__ for m in reloaded] == ["Transformer", "Pooling"]
    assert np.abs(reloaded.encode(SENTENCES) - model.encode(SENTENCES)).max() <= 1e-6
    assert not np.allclose(np.linalg.norm(model.encode(SENTENCES), axis=1), 1.0)


def test_converted_original_checkpoint_fine_tunes_with_gte_st_train(tiny_gte_original_dir, tmp_path):
    """The README recipe for gte-base-en-v1.5: gte-st convert, then gte-st train keeps its CLS pooling."""
    from gte_st.cli import main as cli_main

    native = tmp_path / "native"
    assert cli_main(["convert", str(tiny_gte_original_dir), str(native)]) == 0
    assert gte_st.build_model(str(native))[1].pooling_mode == "cls"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"anchor": r[1], "positive": r[2]}) + "\n" for r in stsb_rows("train")[:32]))
    argv = ["train", "--base_model", str(native), "--data", str(pairs), "--output_dir", str(tmp_path / "out"),
            "--max_steps", "2", "--per_device_train_batch_size", "8", "--max_seq_length", "32", "--report_to", "none",
            "--use_cpu", "--precision", "fp32"]  # fmt: skip
    assert cli_main(argv) == 0
    tuned = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    assert [type(m).__name__ for m in tuned] == ["Transformer", "Pooling", "Normalize"]
    assert tuned[1].pooling_mode == "cls"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "gte"
    before = SentenceTransformer(str(native), device="cpu").encode(SENTENCES)
    assert np.abs(tuned.encode(SENTENCES) - before).max() > 1e-4  # it trained


def test_model_card_states_cls_pooling_and_native_architecture(cls_checkpoint):
    from gte_st.model_card import render_model_card

    card = render_model_card(cls_checkpoint, repo_id="me/gte-cls")
    assert "| Pooling | cls: the final hidden state of the first token" in card
    assert "GteModel (`model_type: gte`: the native transformers GTE architecture" in card
    assert "### transformers (cls pooling by hand)" in card and "token_embeddings[:, 0]" in card
    assert "(token_embeddings * mask).sum(1)" not in card and "PoolingType.CLS" in card
    assert "--model-id" not in card  # TEI does not read the native gte layout: no TEI command is offered
