"""Recipe parsing, loss factory, stage chaining, NaN stop, checkpoints and the atomic final save."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import stsb_rows
from safetensors.torch import load_file
from sentence_transformers.sentence_transformer import losses as st_losses

import gte_st
from gte_st import losses as gte_losses
from gte_st.checkpoints import latest_checkpoint
from gte_st.cli import main as cli_main
from gte_st.training import (
    GTE_DIRECTIONS,
    build_loss,
    describe_loss,
    mixed_precision_flags,
    parse_stages,
)
from gte_st.training.checkpoints import save_atomically
from gte_st.training.recipe import replay_objectives


def main(argv: list[str]) -> int:
    """`gte-st train ARGV` through the dispatcher (errors become exit codes and one-line messages)."""
    return cli_main(["train", *argv])


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = stsb_rows("train")[:96]
    path.write_text("".join(json.dumps({"anchor": a, "positive": b}) + "\n" for _, a, b in rows), encoding="utf8")
    return path


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(next(model_dir.rglob("model.safetensors")))


def test_yaml_recipe_stages_and_cli_overrides(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "base_model: some/encoder\nloss: mse\nlearning_rate: 1.0e-4\nprecision: fp32\noutput_dir: "
        f"{tmp_path / 'model'}\n"
        "stages:\n  - name: pretrain\n    max_seq_length: 32\n    mini_batch_size: 16\n"
        "  - name: finetune\n    loss: gte\n    learning_rate: 2.0e-5\n    mine_hard_negatives: true\n"
    )
    stages = parse_stages(["--config", str(recipe), "--max_steps", "7", "--alpha", "0.3"])
    assert [s.name for s in stages] == ["pretrain", "finetune"]
    pretrain, finetune = stages
    assert (pretrain.recipe.max_seq_length, pretrain.recipe.mini_batch_size, pretrain.recipe.loss) == (32, 16, "mse")
    assert pretrain.args.learning_rate == 1e-4 and finetune.args.learning_rate == 2e-5
    assert (
        finetune.recipe.loss == "gte" and finetune.recipe.mine_hard_negatives and finetune.recipe.max_seq_length == 128
    )
    assert all(s.args.max_steps == 7 and s.recipe.alpha == 0.3 and not s.args.bf16 for s in stages)
    assert pretrain.final_dir == tmp_path / "model"
    assert Path(finetune.args.output_dir) == tmp_path / "model" / "checkpoints" / "finetune"

    (default,) = parse_stages([])
    assert default.final_dir == Path("gte") and default.recipe.data is None
    assert (default.recipe.loss, default.args.learning_rate, default.recipe.max_seq_length) == ("mse", 1e-4, 64)
    assert default.loss_kwargs == {} and default.recipe.wise_ft == "0.3"
    (other_loss,) = parse_stages(["--loss", "gte"])  # the default job's loss options stay with its own loss
    assert (other_loss.recipe.loss, other_loss.loss_kwargs) == ("gte", {})
    (own_kwargs,) = parse_stages(["--loss_kwargs", '{"distillation_weight": 5}'])
    assert own_kwargs.loss_kwargs == {"distillation_weight": 5}
    (own_data,) = parse_stages(["--data", "x.jsonl", "--learning_rate", "3e-5"])
    assert (own_data.recipe.loss, own_data.args.learning_rate, own_data.recipe.max_seq_length) == ("mse", 3e-5, 128)
    assert default.args.batch_sampler == "no_duplicates"

    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - name: a\n    learning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml \(stage 0\): unknown option\(s\) \['learning_rat'\]"):
        parse_stages(["--config", str(bad)])


def test_help_documents_every_option(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--data", "--alpha", "--loss", "--mini_batch_size", "--gather_across_devices", "--resume",
                   "--push-to-hub", "--hub-checkpoints", "--resume-from-hub", "--eval_beir", "--learning_rate",
                   "--save_steps", "--gradient_checkpointing", "--bf16", "--mine_hard_negatives"):  # fmt: skip
        assert option in text, option


def test_precision_auto_follows_hardware():
    flags = mixed_precision_flags("auto")
    if torch.cuda.is_available():
        assert flags["bf16"] or flags["fp16"]
    elif "amx_bf16" in Path("/proc/cpuinfo").read_text():
        assert flags == {"bf16": True, "fp16": False, "use_cpu": True}
    assert mixed_precision_flags("fp32")["bf16"] is False and mixed_precision_flags("fp32")["fp16"] is False


@pytest.mark.parametrize(
    ("name", "mini_batch_size", "expected"),
    [
        ("mse", None, gte_losses.NormalizedMSELoss),
        ("mse", 4, gte_losses.CachedLoss),
        ("gte", None, st_losses.MultipleNegativesRankingLoss),
        ("gte", 4, st_losses.CachedMultipleNegativesRankingLoss),
        ("mnrl", None, st_losses.MultipleNegativesRankingLoss),
        ("mnrl", 4, st_losses.CachedMultipleNegativesRankingLoss),
    ],
)
def test_loss_factory(tiny_bert_dir, name, mini_batch_size, expected):
    model = gte_st.build_model(str(tiny_bert_dir))
    loss = build_loss(model, name, mini_batch_size=mini_batch_size, gather_across_devices=True)
    assert type(loss) is expected
    config = describe_loss(loss)["config"]
    assert config["gather_across_devices"] is True
    if mini_batch_size:
        assert config["mini_batch_size"] == 4
    if name == "gte":
        assert tuple(loss.directions) == GTE_DIRECTIONS and loss.partition_mode == "joint"
    if name == "mnrl":
        assert tuple(loss.directions) == ("query_to_doc",)
    with pytest.raises(ValueError, match="unknown loss 'triplet'"):
        build_loss(model, "triplet")


def test_stage_chaining_starts_from_previous_weights(tiny_bert_dir, pairs_file, tmp_path):
    common = ["--base_model", str(tiny_bert_dir), "--data", str(pairs_file), "--precision", "fp32",
              "--per_device_train_batch_size", "8", "--max_steps", "3", "--save_steps", "100"]  # fmt: skip
    assert main([*common, "--output_dir", str(tmp_path / "one"), "--learning_rate", "1e-3"]) == 0
    one = _weights(tmp_path / "one")

    recipe = tmp_path / "two.yaml"
    recipe.write_text(
        "stages:\n  - name: pretrain\n    learning_rate: 1.0e-3\n    max_seq_length: 128\n"
        "  - name: finetune\n    learning_rate: 0.0\n    max_seq_length: 64\n    loss: gte\n    mini_batch_size: 4\n"
    )
    assert main([*common, "--config", str(recipe), "--output_dir", str(tmp_path / "two")]) == 0
    two = _weights(tmp_path / "two")
    base = _weights(tiny_bert_dir)
    # stage 2 (learning rate 0) ends exactly where stage 1 ended, which moved away from the base model
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert any(not torch.equal(base[k.removeprefix("0.").removeprefix("auto_model.")], two[k]) for k in two)

    summary = json.loads((tmp_path / "two" / "training_summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["pretrain", "finetune"]
    pretrain, finetune = summary["stages"]
    assert pretrain["loss"]["name"] == "NormalizedMSELoss"
    assert finetune["loss"]["name"] == "CachedMultipleNegativesRankingLoss" and finetune["mini_batch_size"] == 4
    assert finetune["max_seq_length"] == 64 and summary["max_seq_length"] == 64
    assert pretrain["steps"] == 3 and pretrain["data"][0]["rows"] == 96 and pretrain["pairs_per_second"] > 0
    assert summary["precision"] == "fp32" and summary["world_size"] == 1
    assert pretrain["attention_kernel"] == finetune["attention_kernel"] == "eager", "training_attention auto, CPU"
    assert pretrain["dropout_masks"] == finetune["dropout_masks"] == "fast", "training_dropout auto, CPU"
    assert not (tmp_path / "two" / "checkpoints").exists()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_bert_dir, pairs_file, tmp_path, capsys):
    out = tmp_path / "nan"
    code = main(["--base_model", str(tiny_bert_dir), "--data", str(pairs_file), "--precision", "fp32",
                 "--per_device_train_batch_size", "8", "--max_steps", "10", "--save_steps", "1",
                 "--save_total_limit", "20", "--learning_rate", "1e30", "--warmup_steps", "0",
                 "--max_grad_norm", "0", "--output_dir", str(out)])  # fmt: skip
    assert code == 1
    message = capsys.readouterr().err
    assert "the training loss became nan" in message and "stopped before applying this update" in message
    good = latest_checkpoint(out / "checkpoints" / "train")
    assert good is not None and f"the last good checkpoint is {good}" in message
    assert all(torch.isfinite(t).all() for t in _weights(good).values())
    assert not (out / "modules.json").exists(), "no final model after a failed run"


def test_save_atomically_replaces_old_model(tiny_bert_dir, tmp_path):
    model = gte_st.build_model(str(tiny_bert_dir))
    final = tmp_path / "gte"
    (final / "checkpoints" / "train" / "checkpoint-1").mkdir(parents=True)
    (final / "stale.txt").write_text("old")
    summary = {"ok": True, "losses": [0.5, float("nan")], "eval": {"score": float("inf")}}
    save_atomically(model, final, {"training_summary.json": summary}, keep=final / "checkpoints")
    assert (final / "modules.json").is_file() and not (final / "stale.txt").exists()
    assert (final / "checkpoints" / "train" / "checkpoint-1").is_dir()
    strict = json.loads(
        (final / "training_summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-standard {c}")
    )
    assert strict == {"ok": True, "losses": [0.5, None], "eval": {"score": None}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gte"], "no temporary directories left behind"


@pytest.mark.parametrize("recipe", ["gte-small.yaml", "gte-base.yaml"])
def test_shipped_recipes_parse(recipe):
    path = Path(__file__).resolve().parent.parent / "scripts" / "recipes" / recipe
    pretrain, finetune = parse_stages(["--config", str(path)])
    assert (pretrain.name, finetune.name) == ("pretrain", "finetune")
    assert pretrain.recipe.mini_batch_size and pretrain.recipe.gather_across_devices
    assert finetune.recipe.max_seq_length > pretrain.recipe.max_seq_length


def test_teacher_scores_reach_the_loss_through_the_pipeline(tiny_bert_dir, tmp_path):
    """A FlagEmbedding distillation file trains end to end; the score term changes the weights (same seed, same
    data), so its labels reached the loss through the collator and the batch sampler."""
    rows = stsb_rows("train")[:48]
    path = tmp_path / "distill.jsonl"
    path.write_text(
        "".join(
            json.dumps({"query": a, "pos": [b], "neg": [rows[(i + 7) % 48][2]], "pos_scores": [0.9],
                        "neg_scores": [-0.5 + 0.02 * i]}) + "\n"
            for i, (_, a, b) in enumerate(rows)
        ),
        encoding="utf8",
    )  # fmt: skip
    common = ["--base_model", str(tiny_bert_dir), "--data", str(path), "--precision", "fp32",
              "--per_device_train_batch_size", "8", "--max_steps", "3", "--save_steps", "100",
              "--learning_rate", "1e-3"]  # fmt: skip
    assert main([*common, "--output_dir", str(tmp_path / "plain")]) == 0
    assert main([*common, "--output_dir", str(tmp_path / "scores"),
                 "--loss_kwargs", '{"score_distillation_weight": 50}']) == 0  # fmt: skip
    plain, scores = _weights(tmp_path / "plain"), _weights(tmp_path / "scores")
    assert any(not torch.allclose(plain[k], scores[k]) for k in plain)
    summary = json.loads((tmp_path / "scores" / "training_summary.json").read_text())
    assert summary["stages"][0]["loss"]["config"]["score_distillation_weight"] == 50


def test_scifact_recipe_parses():
    path = Path(__file__).resolve().parent.parent / "scripts" / "recipes" / "scifact-hybrid.yaml"
    claims, sts = parse_stages(["--config", str(path)])
    assert claims.recipe.loss == "mse" and claims.recipe.data == ["claims=scifact-hybrid/data/claims.jsonl"]
    assert sts.recipe.loss == "cosent" and sts.args.max_steps == 45 and sts.recipe.max_seq_length == 128
    assert (
        claims.recipe.replay_objective == "distillation" and claims.recipe.replay_distillation_target == "embeddings"
    )
    assert replay_objectives(claims.recipe) == {
        "snli": "distillation", "wikiqa": "loss", "stsb": "distillation", "mrpc": "distillation", "docstrings": "loss",
    }  # fmt: skip
    assert claims.recipe.alpha == 0  # the five replay sources in equal shares
    assert claims.recipe.wise_ft is None  # 0.8 (dev's choice) cost SciFact test 0.9: docs/benchmarks.md


def test_cosent_stage_learns_the_order_of_gold_scores(tiny_bert_dir, tmp_path):
    """``--loss cosent`` on scored pairs (STS-B's sentence1/sentence2/score) trains end to end, and the cosines of
    the trained model follow the gold scores of its training pairs better than before: the scores reached the
    loss as labels."""
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    rows = stsb_rows("train")[:64]
    path = tmp_path / "sts.jsonl"
    path.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for s, a, b in rows))

    def spearman(model_dir: Path) -> float:
        model = SentenceTransformer(str(model_dir), device="cpu")
        a, b = (model.encode([r[i] for r in rows], convert_to_tensor=True) for i in (1, 2))
        return spearmanr(torch.nn.functional.cosine_similarity(a, b).tolist(), [r[0] for r in rows]).statistic

    out = tmp_path / "cosent"
    assert main(["--base_model", str(tiny_bert_dir), "--data", str(path), "--loss", "cosent", "--precision", "fp32",
                 "--per_device_train_batch_size", "16", "--max_steps", "24", "--save_steps", "100",
                 "--learning_rate", "1e-3", "--output_dir", str(out)]) == 0  # fmt: skip
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["stages"][0]["loss"]["name"] == "CoSENTLoss"
    assert summary["stages"][0]["data"][0]["columns"] == ["anchor", "positive", "label"]
    assert spearman(out) > spearman(tiny_bert_dir) + 0.2


@pytest.mark.parametrize("bf16", [True, False])
def test_a_loss_teacher_runs_in_the_run_precision(tiny_bert_dir, tmp_path, bf16):
    """Self-distillation's frozen teacher inside the loss runs under the run's autocast like the student (accelerate
    wraps only the student's forward), and hands the loss fp32 embeddings: the step trains without a dtype error."""
    from datasets import Dataset

    from gte_st.training import GTETrainer, GTETrainingArguments

    model = gte_st.build_model(str(tiny_bert_dir), max_seq_length=32)
    loss = build_loss(model, "mse", distillation_weight=1.0)
    seen: list[torch.dtype] = []
    linear = next(m for m in loss.teacher.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    rows = stsb_rows("train")[:16]
    data = Dataset.from_dict({"anchor": [r[1] for r in rows], "positive": [r[2] for r in rows]})
    args = GTETrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=1, bf16=bf16,
                                use_cpu=True, save_strategy="no", report_to=[])  # fmt: skip
    GTETrainer(model=model, args=args, train_dataset=data, loss=loss).train()
    assert seen and set(seen) == {torch.bfloat16 if bf16 else torch.float32}


def test_a_teacher_shared_by_two_losses_runs_in_bf16_and_is_wrapped_once(tiny_bert_dir, tmp_path, monkeypatch):
    """A stage that distills and replays by distillation has one loss per source sharing one frozen teacher: under
    bf16 the teacher runs in bf16 for both sources' batches, and its forward is wrapped in the run's autocast once,
    not once per loss."""
    from datasets import Dataset, DatasetDict

    from gte_st.training import GTETrainer, GTETrainingArguments
    from gte_st.training import trainer as trainer_module
    from gte_st.training.loss import build_replay_loss

    model = gte_st.build_model(str(tiny_bert_dir), max_seq_length=32)
    stage_loss = build_loss(model, "mse", distillation_weight=1.0)
    replay = build_replay_loss(model, stage_loss, "distillation", distillation_weight=3.0)
    assert replay.teacher is stage_loss.teacher
    wrapped: list[object] = []
    under_autocast = trainer_module._under_autocast
    monkeypatch.setattr(trainer_module, "_under_autocast", lambda f, a: wrapped.append(f) or under_autocast(f, a))
    seen: list[torch.dtype] = []
    linear = next(m for m in stage_loss.teacher.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    rows = stsb_rows("train")[:64]
    data = DatasetDict({
        source: Dataset.from_dict({"anchor": [r[1] for r in part], "positive": [r[2] for r in part]})
        for source, part in (("own", rows[:32]), ("general", rows[32:]))
    })  # fmt: skip
    args = GTETrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4, bf16=True,
                                use_cpu=True, save_strategy="no", report_to=[])  # fmt: skip
    GTETrainer(model=model, args=args, train_dataset=data, loss={"own": stage_loss, "general": replay}).train()
    assert len(wrapped) == 1
    assert seen and set(seen) == {torch.bfloat16}


def test_only_the_writer_rank_saves_a_checkpoint(tiny_bert_dir, tmp_path, monkeypatch):
    """transformers 5 calls ``_save`` on every rank; a rank that is not the writer (``should_save`` False, as rank 1
    of a two-process run) writes nothing, the writer writes the whole model."""
    from datasets import Dataset

    from gte_st.training import GTETrainer, GTETrainingArguments

    model = gte_st.build_model(str(tiny_bert_dir), max_seq_length=32)
    rows = stsb_rows("train")[:8]
    data = Dataset.from_dict({"anchor": [r[1] for r in rows], "positive": [r[2] for r in rows]})
    args = GTETrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=1,
                                use_cpu=True, save_strategy="no", report_to=[])  # fmt: skip
    trainer = GTETrainer(model=model, args=args, train_dataset=data, loss=gte_losses.NormalizedMSELoss(model))
    monkeypatch.setattr(type(args), "should_save", property(lambda self: False))
    trainer.save_model(str(tmp_path / "rank1"))
    assert not (tmp_path / "rank1").exists()
    monkeypatch.undo()
    trainer.save_model(str(tmp_path / "rank0"))
    assert (tmp_path / "rank0" / "modules.json").is_file()


def test_matryoshka_prompts_and_false_negatives_train_and_serve(tiny_bert_dir, pairs_file, tmp_path):
    """One run with the three options: trained at every Matryoshka dimension, with prompts given to every text
    column, without likely false negatives (guided by the frozen initial model); the saved model records its
    dimensions and prompts, and stock sentence-transformers serves it with them (encode_query, truncate_dim)."""
    from sentence_transformers import SentenceTransformer
    from transformers import TrainerCallback

    seen = {}

    class Prompts(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen["prompts"] = dict(args.prompts)

    guide = tmp_path / "guide"
    gte_st.build_model(str(tiny_bert_dir)).save(str(guide))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "matryoshka_dims: [32, 16, 8]\n"
        "prompts: {anchor: 'query: ', positive: 'passage: '}\n"
        f"loss_kwargs: {{false_negative_margin: 0.0, guide: '{guide}', distillation_weight: 2.0}}\n"
    )
    out = tmp_path / "out"
    from gte_st.commands.train import main as train_main

    code = train_main(
        ["--config", str(recipe), "--base_model", str(tiny_bert_dir), "--data", str(pairs_file), "--precision", "fp32",
         "--per_device_train_batch_size", "8", "--max_steps", "2", "--save_steps", "100", "--output_dir", str(out)],
        callbacks=[Prompts()],
    )  # fmt: skip
    assert code == 0
    assert seen["prompts"] == {"anchor": "query: ", "positive": "passage: "}
    config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert config["prompts"]["query"] == "query: " and config["prompts"]["document"] == "passage: "
    assert config["matryoshka_dims"] == [32, 16, 8]
    (stage,) = json.loads((out / "training_summary.json").read_text())["stages"]
    assert stage["loss"]["name"] == "MatryoshkaLoss(SelfDistillationLoss(FalseNegativeFilterLoss(NormalizedMSELoss)))"
    assert stage["loss"]["config"]["guide"] == str(guide) and stage["matryoshka_dims"] == [32, 16, 8]
    assert stage["prompts"] == {"query": "query: ", "document": "passage: "}

    stock = SentenceTransformer(str(out), device="cpu")
    texts = ["A man is playing a guitar.", "The cat sleeps on the sofa."]
    query = stock.encode_query(texts)
    assert np.allclose(query, stock.encode(["query: " + t for t in texts]), atol=1e-6)
    assert not np.allclose(query, stock.encode(texts), atol=1e-3)
    assert np.allclose(stock.encode_document(texts), stock.encode(["passage: " + t for t in texts]), atol=1e-6)
    small = SentenceTransformer(str(out), device="cpu", truncate_dim=8).encode(texts)
    assert small.shape == (2, 8)
    from gte_st.model_card import render_model_card

    card = render_model_card(out)
    assert "32, 16, 8" in card and "truncate_dim=8" in card and "query: " in card and "false_negative_margin" in card


def test_one_loss_registry_drives_the_cli(tiny_bert_dir, monkeypatch, capsys):
    """A loss registered in gte_st.training.loss.LOSSES is a --loss choice, checked and built like the others; a
    name that is not registered is refused with the registered ones."""
    from gte_st.training.loss import LOSSES, LossEntry
    from gte_st.training.recipe import make_parser

    monkeypatch.setitem(
        LOSSES, "symmetric", LossEntry(help="InfoNCE both ways", build=st_losses.MultipleNegativesRankingLoss,
                                       defaults={"directions": ("query_to_doc", "doc_to_query")}),
    )  # fmt: skip
    (stage,) = parse_stages(["--data", "x.jsonl", "--loss", "symmetric", "--loss_kwargs", '{"scale": 30}'])
    assert (stage.recipe.loss, stage.loss_kwargs) == ("symmetric", {"scale": 30})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['margin'\]"):
        parse_stages(["--data", "x.jsonl", "--loss", "symmetric", "--loss_kwargs", '{"margin": 0.1}'])
    model = gte_st.build_model(str(tiny_bert_dir))
    loss = build_loss(model, "symmetric", scale=30, distillation_weight=1.0)  # a term composes with it too
    assert describe_loss(loss)["name"] == "SelfDistillationLoss(MultipleNegativesRankingLoss)"
    assert tuple(loss.loss.directions) == ("query_to_doc", "doc_to_query") and loss.loss.scale == 30
    make_parser().print_help()
    assert "{mse,gte,mnrl,cosent,symmetric}" in capsys.readouterr().out
    assert main(["--data", "x.jsonl", "--loss", "nope"]) != 0
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_replay_sources_join_a_stage_with_their_share(tiny_bert_dir, pairs_file, tmp_path):
    """`--replay` adds general sources to a stage: they get `--replay_share` of the batches whatever their size, and
    an epoch stays one pass over the stage's own data plus the replay batches on top."""
    general = tmp_path / "general.jsonl"
    rows = stsb_rows("train")[1000:1400]
    general.write_text("".join(json.dumps({"anchor": a, "positive": b}) + "\n" for _, a, b in rows), encoding="utf8")
    out = tmp_path / "out"
    assert main(["--base_model", str(tiny_bert_dir), "--data", str(pairs_file), "--replay", f"general={general}",
                 "--replay_share", "0.25", "--precision", "fp32", "--per_device_train_batch_size", "8",
                 "--num_train_epochs", "1", "--save_steps", "100", "--output_dir", str(out)]) == 0  # fmt: skip
    (stage,) = json.loads((out / "training_summary.json").read_text())["stages"]
    own, replay = stage["data"]
    assert (own["name"], own["rows"], own["sampling_probability"]) == ("pairs", 96, 0.75) and "replay" not in own
    assert (replay["name"], replay["rows"], replay["sampling_probability"], replay["replay"]) == (
        "general",
        400,
        0.25,
        True,
    )
    assert stage["replay_share"] == 0.25
    assert stage["steps"] == round((96 // 8) / 0.75) == 16


def test_replay_batches_can_train_by_distillation_alone(tiny_bert_dir, pairs_file, tmp_path, monkeypatch):
    """`--replay_objective distillation`: the replay sources' batches train only the similarity MSE to a frozen copy
    of the starting model (sentence-transformers' loss per source routes them), the stage's own batches its loss;
    the summary records both."""
    general = tmp_path / "general.jsonl"
    rows = stsb_rows("train")[1000:1400]
    general.write_text("".join(json.dumps({"anchor": a, "positive": b}) + "\n" for _, a, b in rows), encoding="utf8")
    calls = {"own": 0, "replay": 0}
    own_rows, zero_rows = gte_losses.NormalizedMSELoss.loss_for_rows, gte_losses.ZeroLoss.loss_for_rows

    def counting(kind, method):
        def wrapped(self, *args, **kwargs):
            calls[kind] += 1
            return method(self, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(gte_losses.NormalizedMSELoss, "loss_for_rows", counting("own", own_rows))
    monkeypatch.setattr(gte_losses.ZeroLoss, "loss_for_rows", counting("replay", zero_rows))
    out = tmp_path / "out"
    assert main(["--base_model", str(tiny_bert_dir), "--data", str(pairs_file), "--replay", f"general={general}",
                 "--replay_share", "0.5", "--replay_objective", "distillation", "--replay_distillation_weight", "4",
                 "--precision", "fp32", "--per_device_train_batch_size", "8", "--max_steps", "12",
                 "--save_steps", "100", "--output_dir", str(out)]) == 0  # fmt: skip
    (stage,) = json.loads((out / "training_summary.json").read_text())["stages"]
    assert stage["loss"]["name"] == "NormalizedMSELoss"
    assert stage["replay_loss"]["name"] == "SelfDistillationLoss(ZeroLoss)"
    assert stage["replay_loss"]["config"]["distillation_weight"] == 4
    # every step is one source's batch: its own loss or the replay objective, both used
    assert calls["own"] + calls["replay"] == 12 and calls["own"] > 0 and calls["replay"] > 0


def test_replay_objectives_set_the_objective_per_replay_source(tiny_bert_dir, pairs_file, tmp_path, monkeypatch):
    """`--replay_objectives NAME=OBJECTIVE` overrides `--replay_objective` for one replay source: with distillation
    as the default and `code=loss`, the `code` batches train the stage's loss and only the `general` batches the
    distillation term. The sources are told apart by their padded length: `code` texts are long, the rest short."""
    general, code = tmp_path / "general.jsonl", tmp_path / "code.jsonl"
    rows = stsb_rows("train")[1000:1400]
    general.write_text("".join(json.dumps({"anchor": a, "positive": b}) + "\n" for _, a, b in rows), encoding="utf8")
    long_text = " ".join(["return the value of the function"] * 12)
    code.write_text(
        "".join(json.dumps({"anchor": f"{long_text} {i}", "positive": f"def f{i}(): {long_text}"}) + "\n"
                for i in range(400)),
        encoding="utf8",
    )  # fmt: skip
    calls: dict[str, list[int]] = {"own": [], "replay": []}

    def recording(kind, method):
        def forward(self, sentence_features, labels=None):
            features = list(sentence_features)
            calls[kind].append(int(features[0]["input_ids"].shape[1]))
            return method(self, features, labels)

        return forward

    monkeypatch.setattr(
        gte_losses.NormalizedMSELoss, "forward", recording("own", gte_losses.NormalizedMSELoss.forward)
    )
    monkeypatch.setattr(
        gte_losses.SelfDistillationLoss, "forward", recording("replay", gte_losses.SelfDistillationLoss.forward)
    )
    out = tmp_path / "out"
    assert main(["--base_model", str(tiny_bert_dir), "--data", str(pairs_file), "--replay", f"general={general}",
                 f"code={code}", "--replay_share", "0.6", "--replay_objective", "distillation",
                 "--replay_objectives", "code=loss", "--precision", "fp32", "--per_device_train_batch_size", "8",
                 "--max_steps", "30", "--save_steps", "100", "--output_dir", str(out)]) == 0  # fmt: skip
    (stage,) = json.loads((out / "training_summary.json").read_text())["stages"]
    assert [(d["name"], d.get("replay_objective")) for d in stage["data"]] == [
        ("pairs", None), ("general", "distillation"), ("code", "loss")
    ]  # fmt: skip
    assert stage["replay_loss"]["name"] == "SelfDistillationLoss(ZeroLoss)"
    long_batch = min(calls["own"] + calls["replay"]) + 40  # a code batch pads past 60 tokens, the others stay short
    assert len(calls["own"]) + len(calls["replay"]) == 30
    assert calls["replay"] and max(calls["replay"]) < long_batch  # the distilled batches: general only
    assert any(length >= long_batch for length in calls["own"])  # the code batches train the stage's loss


def test_replay_distillation_is_zero_at_the_start_and_shares_the_stage_teacher(tiny_bert_dir):
    """The replay objective is only the distance to the teacher: 0 with its gradient while the model is the teacher,
    > 0 once the model moves; it reuses the teacher of a stage that distills already, and ``"loss"`` is the loss."""
    from gte_st.training.loss import build_replay_loss

    model = gte_st.build_model(str(tiny_bert_dir))
    texts = [r[1] for r in stsb_rows("train")[:8]], [r[2] for r in stsb_rows("train")[:8]]
    features = [model.tokenize(list(column)) for column in texts]
    replay = build_replay_loss(model, build_loss(model, "mse"), "distillation", distillation_weight=3.0)
    value = replay(features)
    value.backward()
    assert value.item() == 0.0
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())
    with torch.no_grad():
        next(iter(model.parameters())).add_(0.05)  # the word embeddings move; the teacher does not
    assert replay(features).item() > 0
    stage_loss = build_loss(model, "mse", distillation_weight=1.0)
    shared = build_replay_loss(model, stage_loss, "distillation", distillation_weight=3.0)
    assert shared.teacher is stage_loss.teacher and shared.teacher_label == stage_loss.teacher_label
    assert build_replay_loss(model, stage_loss, "loss", distillation_weight=3.0) is stage_loss
    with pytest.raises(ValueError, match="replay objective must be one of"):
        build_replay_loss(model, stage_loss, "kd", distillation_weight=3.0)


def test_replay_distillation_of_embeddings_is_the_mean_squared_distance_to_the_teacher(tiny_bert_dir):
    """``distillation_target="embeddings"``: the replay loss is weight x the mean over texts of
    ``||e - e_T||^2`` of the normalised embeddings (each column's rows), 0 while the model is the teacher."""
    from gte_st.training.loss import build_replay_loss

    model = gte_st.build_model(str(tiny_bert_dir))
    columns = [r[1] for r in stsb_rows("train")[:6]], [r[2] for r in stsb_rows("train")[:6]]
    features = [model.tokenize(list(column)) for column in columns]
    replay = build_replay_loss(
        model, build_loss(model, "mse"), "distillation", distillation_weight=3.0, distillation_target="embeddings"
    )
    assert replay.config.distillation_target == "embeddings" and replay(features).item() == 0.0
    teacher = [model.encode(list(column), convert_to_tensor=True, normalize_embeddings=True) for column in columns]
    with torch.no_grad():
        next(iter(model.parameters())).add_(0.05)
    student = [model.encode(list(column), convert_to_tensor=True, normalize_embeddings=True) for column in columns]
    expected = 3.0 * sum(((s - t) ** 2).sum(-1).mean() for s, t in zip(student, teacher)) / len(columns)
    assert expected > 0
    assert replay(features).item() == pytest.approx(expected.item(), rel=1e-4)
    similarities = build_replay_loss(model, build_loss(model, "mse"), "distillation", distillation_weight=3.0)
    assert similarities.config.distillation_target == "similarities"
