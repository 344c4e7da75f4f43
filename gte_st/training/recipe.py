"""Parsing a recipe into its stages, and every check that can run before a model or any data is loaded.

A recipe is a YAML/JSON file (or nothing: the embedded default job) holding any :class:`RecipeArguments` and
:class:`GTETrainingArguments` keys at top level, plus an optional ``stages:`` list whose entries override those keys
for one stage (``name:`` names it). Command-line ``--key value`` options override the file for every stage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from gte_st.errors import UsageError
from gte_st.training.arguments import GTETrainingArguments, RecipeArguments, mixed_precision_flags
from gte_st.training.loss import check_loss, check_scored_pair_options, parse_loss_kwargs

# The embedded default job's recipe (used when neither --config nor --data is given; command-line options still
# override it): the default loss, NormalizedMSELoss, with self-distillation to the frozen base model so that the
# docstring pairs do not cost general STS quality. Chosen on dev data (held-out docstrings, STS-B dev, SICK trial);
# see docs/benchmarks.md ("The embedded default job"). Its loss_kwargs apply only while the loss is its own.
DEFAULT_JOB: dict[str, Any] = {
    "loss": "mse",
    "loss_kwargs": {"distillation_weight": 30.0},
    "learning_rate": 3e-5,
    "max_seq_length": 64,
}


@dataclass
class Stage:
    """One parsed stage of a recipe: its options, its loss options as a mapping, and where the final model goes."""

    name: str
    recipe: RecipeArguments
    args: GTETrainingArguments
    final_dir: Path
    loss_kwargs: dict[str, Any] = field(default_factory=dict)


def _load_config(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--config {path}: file not found")
    try:
        text = file.read_text(encoding="utf8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"--config {path}: not UTF-8 text ({exc.reason})") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            config = yaml.safe_load(text) or {}
        else:
            config = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--config {path}: not a valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'} "
                         f"file ({first})") from None  # fmt: skip
    if not isinstance(config, dict):
        raise ValueError(f"--config {path}: a recipe must be a mapping of option names to values.")
    return config


def _config_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


class _Parser(HfArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def make_parser() -> HfArgumentParser:
    return _Parser((RecipeArguments, GTETrainingArguments), prog="gte-st train")


def check_stage(stage: Stage, where: str) -> None:
    """Checks of one stage that need no model and no data: loss options, batch size vs in-batch negatives,
    learning rate, lengths, mixture exponent."""
    recipe, args = stage.recipe, stage.args
    check_loss(recipe.loss, stage.loss_kwargs, cached=recipe.mini_batch_size is not None, where=where)
    check_scored_pair_options(
        recipe.loss,
        gather_across_devices=recipe.gather_across_devices,
        mine_hard_negatives=recipe.mine_hard_negatives,
        num_negatives=recipe.num_negatives,
        where=where,
    )
    if args.per_device_train_batch_size * (args.world_size if recipe.gather_across_devices else 1) < 2:
        raise ValueError(
            f"{where}: --per_device_train_batch_size {args.per_device_train_batch_size} leaves no in-batch negatives "
            f"for --loss {recipe.loss}; use at least 2 (GTE trains with large batches)"
        )
    if not args.learning_rate >= 0:
        raise ValueError(f"{where}: --learning_rate must be >= 0, got {args.learning_rate}")
    if recipe.max_seq_length < 1:
        raise ValueError(f"{where}: --max_seq_length must be a positive integer, got {recipe.max_seq_length}")
    from gte_st.model import POOLING_CHOICES

    if recipe.pooling not in POOLING_CHOICES:
        raise ValueError(f"{where}: --pooling must be one of {list(POOLING_CHOICES)}, got {recipe.pooling!r}")
    if recipe.alpha < 0:
        raise ValueError(f"{where}: --alpha must be >= 0, got {recipe.alpha}")
    if recipe.mini_batch_size is not None and recipe.mini_batch_size < 1:
        raise ValueError(f"{where}: --mini_batch_size must be >= 1, got {recipe.mini_batch_size}")
    if recipe.resume_from_hub:
        from gte_st.hub import split_repo_revision

        try:
            split_repo_revision(recipe.resume_from_hub)
        except ValueError as exc:
            raise ValueError(f"{where}: --resume_from_hub: {exc}") from None
    if recipe.hub_checkpoints and not args.hub_repo_id:
        raise ValueError(f"{where}: --hub_checkpoints needs --push-to-hub REPO_ID")
    from gte_st.training.vocabulary import check_vocabulary_options

    check_vocabulary_options(recipe, where)


def check_base_model_positions(base_model: str, stages: list[Stage]) -> None:
    """Fail before loading weights when a stage's ``--max_seq_length`` exceeds the base model's positions (read
    from its ``config.json``; models whose config cannot be read here are checked when they load)."""
    from transformers import AutoConfig

    local = Path(base_model).expanduser()
    if local.exists() and not (local / "config.json").is_file() and not (local / "modules.json").is_file():
        raise FileNotFoundError(f"--base_model {base_model}: not a model directory (no config.json or modules.json)")
    if not local.exists() and (base_model.startswith((".", "/", "~")) or base_model.count("/") > 1):
        raise FileNotFoundError(f"--base_model {base_model}: directory not found")
    try:
        config = AutoConfig.from_pretrained(str(local) if local.exists() else base_model)
    except Exception:  # noqa: BLE001 -- a Hub id offline, remote code, ...: checked when the model loads
        return
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return
    # RoBERTa-style position ids start after the padding index.
    usable = positions - (config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta") else 0)
    for stage in stages:
        if stage.recipe.max_seq_length > usable:
            raise ValueError(
                f"stage {stage.name}: --max_seq_length {stage.recipe.max_seq_length} exceeds the {usable} positions "
                f"of {base_model} (max_position_embeddings in its config.json)"
            )


def parse_stages(argv: Sequence[str] | None = None) -> list[Stage]:
    """Parse a recipe (``--config FILE`` + command-line overrides) into its stages and check each one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        make_parser().print_help()
        raise SystemExit(0)
    config_path = _config_path(argv)
    config = _load_config(config_path) if config_path else {}
    if not config_path and not any(a == "--data" or a.startswith("--data=") for a in argv):
        config = dict(DEFAULT_JOB)
    stage_configs = config.pop("stages", None) or [{}]
    if not isinstance(stage_configs, list) or not all(isinstance(s, dict) for s in stage_configs):
        raise ValueError(f"--config {config_path}: 'stages' must be a list of mappings")
    known = {f.name for f in fields(RecipeArguments)} | {f.name for f in fields(GTETrainingArguments)}
    for where, values in [("top level", config)] + [(f"stage {i}", s) for i, s in enumerate(stage_configs)]:
        if unknown := sorted(set(values) - known - {"name"}):
            raise ValueError(
                f"--config {config_path} ({where}): unknown option(s) {unknown}; see `gte-st train --help`"
            )
    recipe_names = {f.name for f in fields(RecipeArguments)}
    stages: list[Stage] = []
    for index, stage_config in enumerate(stage_configs):
        stage_config = dict(stage_config)
        name = str(stage_config.pop("name", "train" if len(stage_configs) == 1 else f"stage{index + 1}"))
        defaults = {**config, **stage_config}
        loss_kwargs_default = defaults.pop("loss_kwargs", None)  # a mapping in a recipe file
        # First pass: the recipe options alone, to resolve the precision flags before TrainingArguments validates.
        recipe_parser = _Parser(RecipeArguments)
        recipe_parser.set_defaults(**{k: v for k, v in defaults.items() if k in recipe_names})
        (recipe, _) = recipe_parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        parser = make_parser()
        parser.set_defaults(**{**mixed_precision_flags(recipe.precision), **defaults})
        try:
            recipe, args = parser.parse_args_into_dataclasses(args=argv)
        except (ValueError, TypeError) as exc:  # TrainingArguments' own validation
            raise ValueError(f"stage {name}: {exc}") from None
        where = f"stage {name}"
        if config_path is None and recipe.loss != DEFAULT_JOB["loss"]:
            loss_kwargs_default = None  # the default job's loss options belong to its loss, not to a --loss override
        loss_kwargs = parse_loss_kwargs(recipe.loss_kwargs if recipe.loss_kwargs else loss_kwargs_default, where)
        final_dir = Path(args.output_dir)
        args.output_dir = str(final_dir / "checkpoints" / name)
        _ = args.device  # sets up accelerate's (distributed) state with the parsed use_cpu/backend options
        stage = Stage(name=name, recipe=recipe, args=args, final_dir=final_dir, loss_kwargs=loss_kwargs)
        check_stage(stage, where)
        stages.append(stage)
    if len({s.name for s in stages}) != len(stages):
        raise ValueError(f"--config {config_path}: stage names must be unique, got {[s.name for s in stages]}")
    from gte_st.model import default_base_model

    check_base_model_positions(stages[0].recipe.base_model or default_base_model(), stages)
    return stages


__all__ = ["DEFAULT_JOB", "Stage", "check_base_model_positions", "check_stage", "make_parser", "parse_stages"]
