"""Bad input, as a new user would give it, across every command: each case exits non-zero with one line that names
the file, row, column or option at fault, prints no traceback, changes nothing that already existed, and -- where
the input can be checked without the model -- fails before any model is loaded."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from bad_input import Case, check_bad_input
from conftest import stsb_rows


def _train(w: dict[str, Path], *extra: str) -> list[str]:
    return ["train", "--data", str(w["pairs"]), "--output_dir", str(w["existing_out"]), "--max_steps", "1", *extra]


# fmt: off
CASES = [
    # ---- train
    Case("train-loss-option-typo", lambda w: _train(w, "--loss", "mse", "--loss_kwargs", '{"margn": 0.2}'), "margn"),
    Case("train-score-distillation-without-scores",
         lambda w: _train(w, "--loss_kwargs", '{"score_distillation_weight": 5}'), "no source has teacher scores"),
    Case("train-cosent-without-scores", lambda w: _train(w, "--loss", "cosent"), "needs a score column"),
    Case("train-cosent-has-no-cached-variant", lambda w: _train(w, "--loss", "cosent", "--mini_batch_size", "4"),
         "no cached (GradCache) variant"),
    Case("train-cosent-with-mining", lambda w: _train(w, "--loss", "cosent", "--mine_hard_negatives", "true"),
         "--mine_hard_negatives does not apply"),
    Case("train-loss-kwargs-not-json", lambda w: _train(w, "--loss_kwargs", "{margin: 0.2"), "not valid JSON"),
    Case("train-margin-out-of-range", lambda w: _train(w, "--loss", "mse", "--loss_kwargs", '{"margin": 5}'),
         "margin"),
    Case("train-max-seq-length-beyond-positions", lambda w: _train(w, "--max_seq_length", "100000"),
         "--max_seq_length 100000 exceeds the 512 positions"),
    Case("train-batch-of-one-has-no-negatives", lambda w: _train(w, "--per_device_train_batch_size", "1"),
         "--per_device_train_batch_size 1"),
    Case("train-negative-learning-rate", lambda w: _train(w, "--learning_rate=-1e-5"), "--learning_rate must be >= 0"),
    Case("train-missing-data-file", lambda w: ["train", "--data", str(w["tmp"] / "nope.jsonl"),
                                               "--output_dir", str(w["existing_out"])], "nope.jsonl"),
    Case("train-empty-data-file", lambda w: ["train", "--data", str(w["empty_jsonl"]),
                                             "--output_dir", str(w["existing_out"])], "empty"),
    Case("train-headerless-tab-separated-csv", lambda w: ["train", "--data", str(w["stsb_like_csv"]),
                                                          "--output_dir", str(w["existing_out"])],
         "found tab-separated fields"),
    Case("train-not-utf8", lambda w: ["train", "--data", str(w["latin1_csv"]),
                                      "--output_dir", str(w["existing_out"])], "not UTF-8"),
    Case("train-non-string-cell", lambda w: ["train", "--data", str(w["non_string_jsonl"]),
                                             "--output_dir", str(w["existing_out"])],
         "numbers.jsonl:2: column 'anchor': expected a string"),
    Case("train-unknown-column", lambda w: _train(w, "--columns", "question", "answer"), "unknown column"),
    Case("train-invalid-yaml-recipe", lambda w: ["train", "--config", str(w["bad_yaml"])], "bad.yaml"),
    Case("train-unknown-recipe-option", lambda w: ["train", "--config", str(w["typo_yaml"])], "learning_rat"),
    Case("train-recipe-option-twice", lambda w: ["train", "--config", str(w["twice_yaml"])],
         "twice.yaml: not a valid YAML file (line 3: option 'learning_rate' is given twice (first on line 1))"),
    Case("train-json-recipe-option-twice", lambda w: ["train", "--config", str(w["twice_json"])],
         "option 'max_steps' is given twice"),
    Case("train-base-model-not-a-model", lambda w: _train(w, "--base_model", str(w["not_a_model"])),
         "not a model directory"),
    Case("train-resume-from-hub-without-revision", lambda w: _train(w, "--resume_from_hub", "me/gte@"),
         "--resume_from_hub"),
    Case("train-unknown-option", lambda w: _train(w, "--lerning_rate", "1"), "--lerning_rate"),
    # ---- eval
    Case("eval-missing-data", lambda w: ["eval", str(w["model"]), "--task", "sts", "--data", str(w["tmp"] / "x.csv")],
         "x.csv does not exist"),
    Case("eval-model-dir-not-a-model", lambda w: ["eval", str(w["not_a_model"]), "--task", "sts", "--data",
                                                  str(w["sts_csv"])], "not a model directory"),
    Case("eval-bm25-weight-out-of-range", lambda w: ["eval", str(w["model"]), "--task", "retrieval", "--data",
                                                     str(w["tmp"]), "--bm25-rerank", "10", "--bm25-weight", "2"],
         "--bm25-weight"),
    Case("eval-unrecognised-sts-row", lambda w: ["eval", str(w["model"]), "--task", "sts", "--data",
                                                 str(w["bad_sts"])], "bad_sts.tsv:1", before_model=False),
    Case("eval-compile-with-an-exported-artifact", lambda w: ["eval", str(w["model"]), "--task", "sts", "--data",
                                                              str(w["sts_csv"]), "--backend", "openvino", "--compile"],
         "--compile applies to the torch backend"),
    Case("eval-compile-with-mteb", lambda w: ["eval", str(w["model"]), "--task", "mteb", "--compile"],
         "--compile is not supported with --task mteb"),
    # ---- index / search
    Case("index-duplicate-ids", lambda w: ["index", str(w["dup_jsonl"]), "--model", str(w["model"]), "--out",
                                           str(w["tmp"] / "new-index")], "duplicate id 'a' in rows 1 and 3"),
    Case("index-non-string-text", lambda w: ["index", str(w["non_string_text"]), "--model", str(w["model"]),
                                             "--out", str(w["tmp"] / "new-index")],
         "row 2: text field 'text' is a int"),
    Case("index-missing-model", lambda w: ["index", str(w["corpus"]), "--model", str(w["tmp"] / "no-model"),
                                           "--out", str(w["tmp"] / "new-index")], "no-model does not exist"),
    Case("index-existing-index-without-overwrite", lambda w: ["index", str(w["corpus"]), "--model", str(w["model"]),
                                                              "--out", str(w["index"])],
         "already holds an index"),
    Case("index-compile-with-an-exported-artifact", lambda w: ["index", str(w["corpus"]), "--model", str(w["model"]),
                                                               "--out", str(w["tmp"] / "new-index"), "--backend",
                                                               "onnx", "--compile"],
         "--compile applies to the torch backend"),
    Case("search-not-an-index", lambda w: ["search", str(w["tmp"]), "a query"], "not an index directory"),
    Case("search-bm25-weight-without-rerank", lambda w: ["search", str(w["index"]), "q", "--bm25-weight", "0.5"],
         "--bm25-weight"),
    Case("search-corrupted-index", lambda w: ["search", str(w["corrupt_index"]), "q"], "corrupted"),
    Case("search-index-built-by-another-model", lambda w: ["search", str(w["index"]), "q", "--model",
                                                           str(w["other_model"])],
         "embeds the probe texts differently", before_model=False),
    # ---- dedup / cluster
    Case("dedup-empty-file", lambda w: ["dedup", str(w["empty_txt"]), "--model", str(w["model"])], "empty corpus"),
    Case("dedup-compile-with-an-exported-artifact", lambda w: ["dedup", str(w["corpus"]), "--model", str(w["model"]),
                                                               "--file-name", "onnx/model.onnx", "--compile"],
         "--compile applies to the torch backend"),
    Case("dedup-threshold-out-of-range", lambda w: ["dedup", str(w["corpus"]), "--threshold", "2"], "--threshold"),
    Case("cluster-k-zero", lambda w: ["cluster", str(w["corpus"]), "--k", "0"], "--k"),
    Case("cluster-more-clusters-than-texts", lambda w: ["cluster", str(w["corpus"]), "--k", "50", "--model",
                                                        str(w["model"])], "more than the 6 texts"),
    # ---- export / push / pull
    Case("export-missing-model-dir", lambda w: ["export", str(w["tmp"] / "gone"), "--format", "onnx"], "gone"),
    Case("export-down-projection-search-on-onnx", lambda w: ["export", str(w["model"]), "--quantize", "int8-static",
         "--down-projections", "search"], "down_projections='search' applies to the openvino-int8-static variant only"),
    Case("push-missing-dir-before-token", lambda w: ["push", str(w["tmp"] / "gone"), "me/x"],
         "gone does not exist"),
    Case("push-not-a-sentence-transformers-dir", lambda w: ["push", str(w["not_a_model"]), "me/x"],
         "no modules.json"),
    Case("pull-repo-with-empty-revision", lambda w: ["pull", "me/gte@"], "REPO_ID@REVISION"),
    Case("pull-revision-never-pulled-offline", lambda w: ["pull", "me/gte-never", "--revision", "nope"],
         "me/gte-never@nope"),
    # ---- a command owns its output and never its inputs (#26 items 2, 7 and the class they belong to)
    Case("convert-into-its-own-source", lambda w: ["convert", str(w["original"]), str(w["original"]), "--overwrite"],
         "DST " + "{original}" + " is the same path as the source checkpoint"),
    Case("convert-into-the-folder-holding-its-source", lambda w: ["convert", str(w["original"]),
                                                                  str(w["original"].parent), "--overwrite"],
         "contains the source checkpoint"),
    Case("convert-into-a-folder-inside-its-source", lambda w: ["convert", str(w["original"]),
                                                               str(w["original"] / "native")], "lies inside"),
    Case("dedup-out-is-its-input", lambda w: ["dedup", str(w["corpus"]), "--out", str(w["corpus"])],
         "--out {corpus} is the same path as the input file"),
    Case("cluster-out-is-its-input", lambda w: ["cluster", str(w["corpus"]), "--k", "2", "--out", str(w["corpus"])],
         "is the same path as the input file"),
    Case("eval-output-is-its-data", lambda w: ["eval", str(w["model"]), "--task", "sts", "--data", str(w["sts_csv"]),
                                               "--output", str(w["sts_csv"])], "--output"),
    Case("eval-output-inside-the-model", lambda w: ["eval", str(w["model"]), "--task", "sts", "--data",
                                                    str(w["sts_csv"]), "--output", str(w["model"] / "r.json")],
         "lies inside the model"),
    Case("index-out-contains-its-corpus", lambda w: ["index", str(w["nested_corpus"]), "--model", str(w["model"]),
                                                     "--out", str(w["nested_corpus"].parent)],
         "contains the corpus"),
    Case("export-report-over-the-model-config", lambda w: ["export", str(w["model"]), "--report",
                                                           str(w["model"] / "config.json")], "--report"),
    Case("train-output-dir-is-the-base-model", lambda w: ["train", "--data", str(w["pairs"]), "--base_model",
                                                          str(w["model"]), "--output_dir", str(w["model"])],
         "--output_dir {model} is the same path as the --base_model"),
    Case("train-output-dir-contains-its-data", lambda w: ["train", "--data", str(w["pairs"]), "--output_dir",
                                                          str(w["tmp"]), "--max_steps", "1"], "contains"),
    # ---- training options that would lose data or fail late (#26 items 5, 6, 8, 13, 16)
    Case("train-zero-steps", lambda w: _train(w, "--max_steps", "0"), "--max_steps must be a positive"),
    Case("train-negative-steps", lambda w: _train(w, "--max_steps", "-5"), "--max_steps must be a positive"),
    Case("train-zero-epochs", lambda w: ["train", "--data", str(w["pairs"]), "--output_dir", str(w["existing_out"]),
                                         "--num_train_epochs", "0"], "--num_train_epochs must be > 0"),
    Case("train-alpha-inf", lambda w: _train(w, "--alpha", "inf"), "--alpha must be a finite number"),
    Case("train-alpha-nan", lambda w: _train(w, "--alpha", "nan"), "--alpha must be a finite number"),
    Case("train-serving-length-beyond-positions", lambda w: _train(w, "--serving_max_seq_length", "100000"),
         "--serving_max_seq_length 100000 exceeds"),
    # ---- keeping what the base model knew (#29): replay, LoRA, WiSE-FT
    Case("train-replay-share-one", lambda w: _train(w, "--replay", str(w["pairs"]), "--replay_share", "1"),
         "--replay_share must lie strictly between 0 and 1"),
    Case("train-replay-missing-file", lambda w: _train(w, "--replay", str(w["tmp"] / "general.jsonl")),
         "general.jsonl"),
    Case("train-replay-name-clash", lambda w: _train(w, "--replay", f"pairs={w['pairs']}"),
         "--replay source name(s) ['pairs'] also name --data sources"),
    Case("train-replay-objective-unknown", lambda w: _train(w, "--replay", f"general={w['pairs']}",
                                                            "--replay_objective", "kd"),
         "--replay_objective must be one of ['loss', 'distillation'], got 'kd'"),
    Case("train-replay-objective-without-replay", lambda w: _train(w, "--replay_objective", "distillation"),
         "--replay_objective distillation needs --replay sources"),
    Case("train-replay-objectives-unknown-source", lambda w: _train(w, "--replay", f"general={w['pairs']}",
                                                                    "--replay_objectives", "genral=loss"),
         "--replay_objectives genral=loss: 'genral' is not a --replay source (['general'])"),
    Case("train-replay-objectives-unknown-objective", lambda w: _train(w, "--replay", f"general={w['pairs']}",
                                                                       "--replay_objectives", "general=kd"),
         "--replay_objectives general=kd: the objective must be one of ['loss', 'distillation']"),
    Case("train-replay-objectives-malformed", lambda w: _train(w, "--replay", f"general={w['pairs']}",
                                                               "--replay_objectives", "general"),
         "--replay_objectives expects NAME=OBJECTIVE, got 'general'"),
    Case("train-replay-distillation-weight-zero", lambda w: _train(w, "--replay", f"general={w['pairs']}",
                                                                   "--replay_distillation_weight", "0"),
         "--replay_distillation_weight must be a finite number > 0"),
    Case("train-replay-distillation-target-unknown", lambda w: _train(w, "--replay", f"general={w['pairs']}",
                                                                      "--replay_distillation_target", "logits"),
         "--replay_distillation_target must be one of ['similarities', 'embeddings'], got 'logits'"),
    Case("train-lora-rank-zero", lambda w: _train(w, "--lora_r", "0"), "the LoRA rank must be an integer >= 1"),
    Case("train-lora-dropout-one", lambda w: _train(w, "--lora_r", "4", "--lora_dropout", "1"),
         "lora_dropout must lie in [0, 1)"),
    Case("train-lora-adapter-save-without-lora", lambda w: _train(w, "--lora_save", "adapter"),
         "--lora_save adapter keeps the adapter of a single --lora_r stage"),
    Case("train-wise-ft-out-of-range", lambda w: _train(w, "--wise_ft", "1.5"),
         "--wise_ft must be a number in (0, 1] or 'auto', got '1.5'"),
    Case("train-wise-ft-word", lambda w: _train(w, "--wise_ft", "half"), "--wise_ft must be a number in (0, 1]"),
    Case("train-wise-ft-auto-without-dev-data", lambda w: _train(w, "--wise_ft", "auto"),
         "--wise_ft auto chooses the weight on the evaluation tasks"),
    Case("train-wise-ft-grid-out-of-range", lambda w: _train(w, "--wise_ft", "auto", "--wise_ft_grid", "0.5", "2"),
         "--wise_ft_grid: every value must lie in (0, 1], got [2.0]"),
    Case("recipe-stage-name-escapes-the-output", lambda w: ["train", "--config", str(w["escape_yaml"])],
         "stage name '../../escaped' is not a plain folder name"),
    Case("recipe-empty-stages-list", lambda w: ["train", "--config", str(w["empty_stages_list"])],
         "'stages' is empty"),
    Case("recipe-empty-stages-mapping", lambda w: ["train", "--config", str(w["empty_stages_map"])],
         "'stages' must be a list"),
    Case("recipe-string-data-is-one-source", lambda w: ["train", "--config", str(w["string_data_yaml"])],
         "missing-dir/pairs.jsonl: file not found"),
    Case("recipe-alpha-null", lambda w: ["train", "--config", str(w["alpha_null_yaml"])],
         "(stage s1): alpha must be a finite number, got None"),
    Case("recipe-max-seq-length-float", lambda w: ["train", "--config", str(w["length_float_yaml"])],
         "max_seq_length must be an integer, got 1.5"),
    Case("recipe-max-steps-list", lambda w: ["train", "--config", str(w["steps_list_yaml"])],
         "max_steps must be an integer, got [1, 2]"),
    Case("recipe-training-attention-unknown", lambda w: ["train", "--config", str(w["attention_yaml"])],
         "training_attention must be one of 'auto', 'eager', 'sdpa', got 'flash'"),
    Case("recipe-training-dropout-unknown", lambda w: ["train", "--config", str(w["dropout_yaml"])],
         "training_dropout must be one of 'auto', 'fast', 'torch', got 'none'"),
    # ---- models that would load wrong or fail late (#26 items 10, 18)
    Case("eval-model-without-tokenizer", lambda w: ["eval", str(w["no_tokenizer"]), "--task", "sts", "--data",
                                                    str(w["sts_csv"])], "has no tokenizer files"),
    Case("train-base-model-without-tokenizer", lambda w: _train(w, "--base_model", str(w["no_tokenizer"])),
         "--base_model {no_tokenizer} has no tokenizer files"),
    Case("eval-half-written-safetensors", lambda w: ["eval", str(w["half_written"]), "--task", "sts", "--data",
                                                     str(w["sts_csv"])],
         "half-written/model.safetensors: not a complete safetensors file"),
    Case("index-half-written-safetensors", lambda w: ["index", str(w["corpus"]), "--model", str(w["half_written"]),
                                                      "--out", str(w["tmp"] / "new-index")],
         "not a complete safetensors file"),
]
# fmt: on


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_gte_dir, tiny_bert_dir, tiny_gte_original_dir) -> dict[str, Path]:
    """Every file the cases need, built once: good ones (a model, an index, a corpus) and bad ones."""
    import gte_st
    from gte_st.search import build_index

    tmp = tmp_path_factory.mktemp("bad-input")
    w: dict[str, Path] = {"tmp": tmp, "model": tiny_gte_dir}
    rows = stsb_rows("train")[:64]
    w["pairs"] = tmp / "pairs.jsonl"
    w["pairs"].write_text("".join(json.dumps({"anchor": a, "positive": b}) + "\n" for _, a, b in rows))
    w["existing_out"] = tmp / "existing-out"
    w["existing_out"].mkdir()
    (w["existing_out"] / "keep.txt").write_text("an earlier run's output")
    w["empty_jsonl"] = tmp / "empty.jsonl"
    w["empty_jsonl"].write_text("")
    w["stsb_like_csv"] = tmp / "sts-train.csv"
    w["stsb_like_csv"].write_text("".join(f"main-captions\tMSRvid\t2012\t{i}\t{s}\t{a}\t{b}\n"
                                          for i, (s, a, b) in enumerate(rows)))  # fmt: skip
    w["latin1_csv"] = tmp / "latin1.csv"
    w["latin1_csv"].write_bytes("anchor,positive\ncaf\xe9 au lait,un caf\xe9\n".encode("latin-1"))
    w["non_string_jsonl"] = tmp / "numbers.jsonl"
    w["non_string_jsonl"].write_text('{"anchor": "a text", "positive": "b text"}\n{"anchor": 5, "positive": "x"}\n')
    w["bad_yaml"] = tmp / "bad.yaml"
    w["bad_yaml"].write_text("stages:\n  - name: a\n   loss: mse\n")
    w["typo_yaml"] = tmp / "typo.yaml"
    w["typo_yaml"].write_text("learning_rat: 0.1\n")
    w["twice_yaml"] = tmp / "twice.yaml"  # PyYAML alone keeps the last value silently
    w["twice_yaml"].write_text("learning_rate: 1.0e-4\nmax_steps: 3\nlearning_rate: 2.0e-4\n")
    w["twice_json"] = tmp / "twice.json"
    w["twice_json"].write_text('{"max_steps": 3, "max_steps": 4}')
    w["not_a_model"] = tmp / "not-a-model"
    w["not_a_model"].mkdir()
    (w["not_a_model"] / "notes.txt").write_text("nothing to load here")
    w["sts_csv"] = tmp / "sts.jsonl"
    w["sts_csv"].write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n"
                                    for s, a, b in rows[:8]))  # fmt: skip
    w["bad_sts"] = tmp / "bad_sts.tsv"
    w["bad_sts"].write_text("only one field\n")
    w["dup_jsonl"] = tmp / "dup.jsonl"
    w["dup_jsonl"].write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n')
    w["non_string_text"] = tmp / "non-string.jsonl"
    w["non_string_text"].write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": 7}\n')
    w["empty_txt"] = tmp / "empty.txt"
    w["empty_txt"].write_text("\n\n")
    texts = [a for _, a, _ in rows[:6]]
    w["corpus"] = tmp / "corpus.jsonl"
    w["corpus"].write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    w["index"] = tmp / "index"
    build_index(w["corpus"], str(tiny_gte_dir), w["index"], show_progress_bar=False)
    w["corrupt_index"] = tmp / "corrupt-index"
    shutil.copytree(w["index"], w["corrupt_index"])
    with open(w["corrupt_index"] / "docs.jsonl", "a", encoding="utf8") as f:
        f.write('{"id": "x", "text": "tampered"}\n')
    w["other_model"] = tmp / "other-model"
    from conftest import build_tiny_bert

    gte_st.build_model(str(build_tiny_bert(tmp / "other-bert", seed=7))).save(str(w["other_model"]))
    w["original"] = tmp / "originals" / "gte-original"
    shutil.copytree(tiny_gte_original_dir, w["original"])
    w["nested_corpus"] = tmp / "corpus-folder" / "corpus.jsonl"
    w["nested_corpus"].parent.mkdir()
    shutil.copy(w["corpus"], w["nested_corpus"])
    w["no_tokenizer"] = tmp / "no-tokenizer"
    shutil.copytree(tiny_gte_dir, w["no_tokenizer"])
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (w["no_tokenizer"] / name).unlink(missing_ok=True)
    w["half_written"] = tmp / "half-written"
    shutil.copytree(tiny_gte_dir, w["half_written"])
    weights = w["half_written"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    recipes = {
        "escape_yaml": {"stages": [{"name": "../../escaped", "data": [str(w["pairs"])]}]},
        "empty_stages_list": {"data": [str(w["pairs"])], "stages": []},
        "empty_stages_map": {"data": [str(w["pairs"])], "stages": {}},
        "string_data_yaml": {"data": str(tmp / "missing-dir" / "pairs.jsonl")},
        "alpha_null_yaml": {"data": [str(w["pairs"])], "stages": [{"name": "s1", "alpha": None}]},
        "length_float_yaml": {"data": [str(w["pairs"])], "max_seq_length": 1.5},
        "steps_list_yaml": {"data": [str(w["pairs"])], "max_steps": [1, 2]},
        "attention_yaml": {"data": [str(w["pairs"])], "training_attention": "flash"},
        "dropout_yaml": {"data": [str(w["pairs"])], "training_dropout": "none"},
    }
    import yaml

    for key, recipe in recipes.items():
        w[key] = tmp / f"{key}.yaml"
        w[key].write_text(yaml.safe_dump({"output_dir": str(w["existing_out"]), **recipe}))
    return w


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_error_before_work(case: Case, world, monkeypatch, capsys):
    check_bad_input(case, world, monkeypatch, capsys)


def test_table_is_large_and_covers_every_command():
    commands = {case.argv(_AnyPath())[0] for case in CASES}
    assert len(CASES) >= 25
    assert {"train", "eval", "index", "search", "dedup", "cluster", "export", "push", "pull"} <= commands


class _AnyPath(dict):
    def __missing__(self, key: str) -> Path:
        return Path(os.sep, key)
