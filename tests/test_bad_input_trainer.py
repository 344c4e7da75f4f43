"""Bad values of the trainer's Matryoshka, prompt and loss-composition options (and of --truncate-dim in the commands
that serve a model): each is one error line naming the option, before any training data is read and -- for train --
before any model is built; nothing that existed is changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input import Case, check_bad_input
from conftest import stsb_rows


def _train(w: dict[str, Path], *extra: str) -> list[str]:
    return ["train", "--base_model", str(w["bert"]), "--data", str(w["pairs"]), "--output_dir", str(w["out"]),
            "--max_steps", "1", *extra]  # fmt: skip


# fmt: off
CASES = [
    Case("matryoshka-dim-larger-than-the-model", lambda w: _train(w, "--matryoshka_dims", "64", "16"),
         "--matryoshka_dims 64 is larger than the 32-d embeddings"),
    Case("matryoshka-dims-unsorted", lambda w: _train(w, "--matryoshka_dims", "8", "16", "32"), "largest first"),
    Case("matryoshka-dims-repeated", lambda w: _train(w, "--matryoshka_dims", "32", "16", "16"), "without repeats"),
    Case("matryoshka-dim-zero", lambda w: _train(w, "--matryoshka_dims", "32", "0"), "positive integers"),
    Case("prompt-key-no-column-has", lambda w: _train(w, "--prompts", '{"query": "query: "}'),
         "--prompts key 'query' is no training column"),
    Case("prompt-per-source-mapping", lambda w: _train(w, "--prompts", '{"pairs": {"anchor": "q: "}}'),
         "per-source prompts are not supported"),
    Case("prompt-negatives-unlike-the-positive",
         lambda w: _train(w, "--prompts", '{"positive": "passage: ", "negative_1": "other: "}'),
         "negatives are documents"),
    Case("guide-model-with-another-tokenizer",
         lambda w: _train(w, "--loss_kwargs", json.dumps({"false_negative_margin": 0.0, "guide": str(w["minilm"])})),
         "--loss_kwargs guide"),
    Case("teacher-with-another-tokenizer",
         lambda w: _train(w, "--loss_kwargs", json.dumps({"distillation_weight": 1.0, "teacher": str(w["minilm"])})),
         "has another tokenizer than the base model"),
    Case("false-negative-margin-out-of-range",
         lambda w: _train(w, "--loss_kwargs", '{"false_negative_margin": 1.5, "false_negative_strategy": "relative"}'),
         "false_negative_margin (relative) must be a fraction in [0, 1]"),
    Case("false-negative-filter-on-mnrl", lambda w: _train(w, "--loss", "mnrl", "--loss_kwargs",
                                                           '{"false_negative_margin": 0.1}'), "use --loss mse"),
    Case("piece-option-without-its-switch", lambda w: _train(w, "--loss_kwargs", '{"uniformity_t": 3}'),
         "only apply with uniformity_weight set"),
    Case("term-on-a-scored-pair-loss", lambda w: _train(w, "--loss", "cosent", "--loss_kwargs",
                                                        '{"distillation_weight": 1}'), "needs an in-batch loss"),
    Case("old-loss-option-misspelt", lambda w: _train(w, "--loss_kwargs", '{"distilation_weight": 30}'),
         "unknown option(s) ['distilation_weight']"),
    Case("truncate-dim-larger-than-the-model-eval", lambda w: ["eval", str(w["model"]), "--task", "sts", "--data",
                                                               str(w["sts"]), "--truncate-dim", "64"],
         "--truncate-dim: truncate_dim 64 is larger than the model's 32-d embeddings", before_model=False),
    Case("truncate-dim-larger-than-the-model-dedup", lambda w: ["dedup", str(w["corpus"]), "--model", str(w["model"]),
                                                                "--truncate-dim", "33"],
         "--truncate-dim: truncate_dim 33 is larger", before_model=False),
    Case("truncate-dim-zero", lambda w: ["cluster", str(w["corpus"]), "--k", "2", "--truncate-dim", "0"],
         "--truncate-dim: must be a positive integer"),
    Case("search-at-another-dimension", lambda w: ["search", str(w["index16"]), "a query", "--truncate-dim", "8"],
         "holds 16-d embeddings"),
]
# fmt: on


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_bert_dir, tiny_gte_dir, minilm_dir) -> dict[str, Path]:
    from gte_st.search import build_index

    tmp = tmp_path_factory.mktemp("bad-input-trainer")
    w: dict[str, Path] = {"tmp": tmp, "bert": tiny_bert_dir, "model": tiny_gte_dir, "minilm": minilm_dir}
    rows = stsb_rows("train")[:32]
    w["pairs"] = tmp / "pairs.jsonl"
    w["pairs"].write_text("".join(json.dumps({"anchor": a, "positive": b}) + "\n" for _, a, b in rows))
    w["out"] = tmp / "existing-out"
    w["out"].mkdir()
    (w["out"] / "keep.txt").write_text("an earlier run's output")
    w["sts"] = tmp / "sts.jsonl"
    w["sts"].write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for s, a, b in rows))
    w["corpus"] = tmp / "corpus.jsonl"
    w["corpus"].write_text("".join(json.dumps({"id": f"d{i}", "text": a}) + "\n" for i, (_, a, _) in enumerate(rows)))
    w["index16"] = tmp / "index16"
    build_index(w["corpus"], str(tiny_gte_dir), w["index16"], truncate_dim=16, show_progress_bar=False)
    return w


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_trainer_value_is_one_line_error_before_data(case: Case, world, monkeypatch, capsys):
    import gte_st.training.run

    def no_data(*args, **kwargs):
        raise AssertionError(f"{case.id}: training data was read before the bad value was reported")

    monkeypatch.setattr(gte_st.training.run, "load_training_data", no_data)
    check_bad_input(case, world, monkeypatch, capsys)
