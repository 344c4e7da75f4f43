"""WiSE-FT: the interpolation formula (gte_st.interpolation), the rule that chooses its weight on dev tasks
(gte_st.training.wise_ft), and ``gte-st train --wise_ft`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import stsb_rows
from safetensors.torch import load_file

from gte_st.commands.train import main
from gte_st.interpolation import interpolate_state_dicts
from gte_st.training.wise_ft import DEFAULT_GRID, choose_alpha, parse_wise_ft


def _state(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "dense.weight": torch.randn(8, 4, generator=generator),
        "norm.bias": torch.randn(4, generator=generator).to(torch.bfloat16),
        "position_ids": torch.arange(6),
    }


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_weights_equal_the_formula(alpha):
    base, tuned = _state(0), _state(1)
    tuned["position_ids"] = base["position_ids"].clone()
    mixed = interpolate_state_dicts(base, tuned, alpha)
    assert mixed.keys() == tuned.keys()
    torch.testing.assert_close(mixed["dense.weight"], (1 - alpha) * base["dense.weight"] + alpha * tuned["dense.weight"],
                               atol=1e-7, rtol=0)  # fmt: skip
    expected = ((1 - alpha) * base["norm.bias"].float() + alpha * tuned["norm.bias"].float()).to(torch.bfloat16)
    assert mixed["norm.bias"].dtype == torch.bfloat16 and torch.equal(mixed["norm.bias"], expected)
    assert torch.equal(mixed["position_ids"], base["position_ids"])
    if alpha in (0.0, 1.0):
        end = base if alpha == 0 else tuned
        assert all(torch.equal(mixed[k], end[k]) for k in end)


def test_interpolation_refuses_models_that_do_not_match():
    base, tuned = _state(0), _state(1)
    with pytest.raises(ValueError, match="a non-float tensor differs"):
        interpolate_state_dicts(base, {**tuned, "position_ids": torch.arange(1, 7)}, 0.5)
    with pytest.raises(ValueError, match="do not have the same weights"):
        interpolate_state_dicts(base, {**tuned, "lora_A.weight": torch.zeros(2)}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate_state_dicts(base, {**tuned, "dense.weight": torch.zeros(4, 8)}, 0.5)
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
            interpolate_state_dicts(base, tuned, alpha)


def test_the_auto_rule_keeps_every_task_within_tolerance_then_maximises_the_mean_gain():
    base = {"domain": 0.60, "sts": 0.80}
    scores = {
        0.4: {"domain": 0.63, "sts": 0.800},
        0.6: {"domain": 0.66, "sts": 0.798},  # best mean gain within 0.003
        0.8: {"domain": 0.68, "sts": 0.790},  # larger gain, but sts drops 0.010
        1.0: {"domain": 0.71, "sts": 0.785},
    }
    assert choose_alpha(base, scores, tolerance=0.003) == (0.6, True)
    assert choose_alpha(base, scores, tolerance=0.02) == (1.0, True)
    # nothing within the tolerance: the smallest worst drop
    worse = {0.5: {"domain": 0.62, "sts": 0.70}, 1.0: {"domain": 0.7, "sts": 0.6}}
    assert choose_alpha(base, worse, tolerance=0.003) == (0.5, False)


def test_parse_wise_ft():
    assert parse_wise_ft(None) is None and parse_wise_ft("auto") == "auto" and parse_wise_ft("0.7") == 0.7
    assert DEFAULT_GRID == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    for bad in ("0", "1.01", "nan", "half"):
        with pytest.raises(ValueError, match="--wise_ft must be a number in \\(0, 1\\] or 'auto'"):
            parse_wise_ft(bad)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    rows = stsb_rows("train")
    pairs, dev = tmp_path / "pairs.jsonl", tmp_path / "sts-dev.jsonl"
    pairs.write_text("".join(json.dumps({"anchor": a, "positive": b}) + "\n" for _, a, b in rows[:48]))
    dev.write_text(
        "".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for s, a, b in rows[300:364])
    )
    return pairs, dev


def _assert_interpolated(out: Path, base_dir, tuned_dir: Path, alpha: float) -> None:
    """The weights saved in ``out`` are (1 - alpha) x base + alpha x the ``tuned_dir`` checkpoint's (to 1e-6), and
    differ from the checkpoint's: an interpolation happened."""
    base = load_file(next(Path(base_dir).rglob("model.safetensors")))
    tuned = load_file(tuned_dir / "model.safetensors")
    saved = load_file(out / "model.safetensors")
    assert saved.keys() == tuned.keys()
    moved = 0
    for key, value in saved.items():
        original = base[key.removeprefix("0.").removeprefix("auto_model.")] if key not in base else base[key]
        expected = (1 - alpha) * original + alpha * tuned[key] if value.is_floating_point() else tuned[key]
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=0)
        moved += not torch.equal(value, tuned[key])
    assert moved, "the saved weights are the trained ones: no interpolation happened"


def test_train_wise_ft_saves_the_interpolation_of_the_trained_and_the_base_weights(tiny_bert_dir, tmp_path):
    """`--wise_ft 0.4`: the saved weights are 0.6 x base + 0.4 x the trained weights (kept in the stage's final
    checkpoint); `--wise_ft auto`: every weight of the grid is tried on the dev task and the rule's choice is saved."""
    pairs, dev = _files(tmp_path)
    common = ["--base_model", str(tiny_bert_dir), "--data", str(pairs), "--precision", "fp32", "--seed", "3",
              "--per_device_train_batch_size", "16", "--max_steps", "3", "--save_steps", "100",
              "--learning_rate", "1e-2", "--keep_checkpoints", "true"]  # fmt: skip
    out = tmp_path / "fixed"
    assert main([*common, "--output_dir", str(out), "--wise_ft", "0.4"]) == 0
    _assert_interpolated(out, tiny_bert_dir, out / "checkpoints" / "train" / "final", 0.4)
    assert json.loads((out / "training_summary.json").read_text())["wise_ft"] == {"alpha": 0.4, "mode": "fixed"}

    out = tmp_path / "auto"
    assert main([*common, "--output_dir", str(out), "--wise_ft", "auto", "--wise_ft_grid", "0.5", "1.0",
                 "--eval_sts", str(dev)]) == 0  # fmt: skip
    summary = json.loads((out / "training_summary.json").read_text())
    wise = summary["wise_ft"]
    assert wise["mode"] == "auto" and set(wise["trials"]) == {"0.5", "1.0"}
    trials = {float(a): scores for a, scores in wise["trials"].items()}
    assert (wise["alpha"], wise["within_tolerance"]) == choose_alpha(wise["base"], trials, wise["tolerance"])
    (after,) = summary["eval"]["after"]
    assert after["metrics"]["spearman"] == pytest.approx(trials[wise["alpha"]]["sts-dev/sts-dev"], abs=1e-6)


def test_the_default_jobs_wise_ft_auto_chooses_on_held_out_queries_it_does_not_report(
    tiny_bert_dir, tmp_path, monkeypatch
):
    """The default job reports its held-out docstring queries (``docstrings-held-out``); ``--wise_ft auto`` chooses
    on the other held-out pairs (``docstrings-dev``), never on the reported ones. A fixed weight adds no dev task."""
    import gte_st.default_data as default_data

    rows = [default_data.DocPair(s1, s2, f"pkg/m{i}.py") for i, (_, s1, s2) in enumerate(stsb_rows("dev")[:300])]
    monkeypatch.setattr(default_data, "default_pairs", lambda: {"train": rows[:64], "test": rows[64:]})
    common = ["--base_model", str(tiny_bert_dir), "--precision", "fp32", "--seed", "3", "--max_steps", "2",
              "--per_device_train_batch_size", "16", "--save_steps", "100", "--learning_rate", "1e-2"]  # fmt: skip
    auto, fixed = tmp_path / "auto", tmp_path / "fixed"
    assert main([*common, "--output_dir", str(auto), "--wise_ft", "auto", "--wise_ft_grid", "0.5", "1.0"]) == 0
    summary = json.loads((auto / "training_summary.json").read_text())
    choice = summary["wise_ft"]
    assert {key for scores in [choice["base"], *choice["trials"].values()] for key in scores} == {"docstrings-dev/dev"}
    after = {result["dataset"]: result for result in summary["eval"]["after"]}
    assert set(after) == {"docstrings-held-out", "docstrings-dev"} and after["docstrings-dev"]["split"] == "dev"

    assert main([*common, "--output_dir", str(fixed)]) == 0  # the default job's own weight: 0.3, fixed
    summary = json.loads((fixed / "training_summary.json").read_text())
    assert summary["wise_ft"]["mode"] == "fixed"
    assert [result["dataset"] for result in summary["eval"]["after"]] == ["docstrings-held-out"]


def test_a_recipe_file_wise_ft_interpolates_after_the_last_stage(tiny_bert_dir, tmp_path):
    """``wise_ft: 0.8`` at the top of a two-stage recipe file (as scripts/recipes/scifact-hybrid.yaml): the saved
    weights are 0.2 x base + 0.8 x the weights the *last* stage ended with, once, after every stage."""
    pairs, _ = _files(tmp_path)
    config = tmp_path / "recipe.yaml"
    config.write_text(
        f"base_model: {tiny_bert_dir}\noutput_dir: {tmp_path / 'out'}\nprecision: fp32\nseed: 3\n"
        "per_device_train_batch_size: 16\nsave_steps: 100\nlearning_rate: 1.0e-2\nkeep_checkpoints: true\n"
        f"wise_ft: 0.8\nstages:\n  - name: one\n    data: [{pairs}]\n    max_steps: 2\n"
        f"  - name: two\n    data: [{pairs}]\n    max_steps: 2\n    loss: mnrl\n"
    )
    assert main(["--config", str(config)]) == 0
    out = tmp_path / "out"
    _assert_interpolated(out, tiny_bert_dir, out / "checkpoints" / "two" / "final", 0.8)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["wise_ft"] == {"alpha": 0.8, "mode": "fixed"} and len(summary["stages"]) == 2
