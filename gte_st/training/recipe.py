"""Parsing a recipe into its stages, and every check that can run before a model or any data is loaded.

A recipe is a YAML/JSON file (or nothing: the embedded default job) holding any :class:`RecipeArguments` and
:class:`GTETrainingArguments` keys at top level, plus an optional ``stages:`` list whose entries override those keys
for one stage (``name:`` names it). Command-line ``--key value`` options override the file for every stage.
"""

from __future__ import annotations

import enum
import json
import math
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from transformers import HfArgumentParser

from gte_st.data import SourceSpec
from gte_st.errors import UsageError
from gte_st.files import check_output_path, check_path_component
from gte_st.losses.self_distillation import DISTILLATION_TARGETS
from gte_st.training.arguments import GTETrainingArguments, RecipeArguments, mixed_precision_flags
from gte_st.training.loss import (
    REPLAY_OBJECTIVES,
    check_frozen_models,
    check_loss,
    check_matryoshka_dims,
    check_scored_pair_options,
    parse_loss_kwargs,
)
from gte_st.training.prompts import check_prompts

# The embedded default job's recipe (used when neither --config nor --data is given; command-line options still
# override it): the default loss, NormalizedMSELoss, at a learning rate that moves the model on 23 steps of docstring
# pairs, then WiSE-FT back towards the base model (weights = 0.7 base + 0.3 tuned) so that the docstring
# pairs do not cost general STS quality. Chosen on dev data only (held-out docstrings, STS-B dev, SICK trial) by the
# rule of --wise_ft auto: the largest docstring gain with every general dev task within 0.3 points of the base model.
# It replaced self-distillation (distillation_weight 30), which gained less on the docstrings at the same general cost
# and ran a frozen teacher every step. docs/benchmarks.md ("Default job") has every trial. Its loss_kwargs apply only
# while the loss is its own.
DEFAULT_JOB: dict[str, Any] = {
    "loss": "mse",
    "loss_kwargs": {},
    "learning_rate": 1e-4,
    "max_seq_length": 64,
    "wise_ft": "0.3",
}


@dataclass
class Stage:
    """One parsed stage of a recipe: its options, its loss options as a mapping, and where the final model goes.

    ``hub_token`` is the ``--hub_token`` the user gave, taken out of ``args`` before the Trainer sees them: the
    Trainer pickles its arguments into every checkpoint (``training_args.bin``), and a token must never be written.
    """

    name: str
    recipe: RecipeArguments
    args: GTETrainingArguments
    final_dir: Path
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    hub_token: str | None = field(default=None, repr=False)


# Recipe options that are lists (of paths, NAME=VALUE entries, ...): a single string in a recipe file is one entry,
# never a sequence of characters (``data: /abs/path.jsonl`` is one source).
LIST_OPTIONS = (
    "data", "replay", "replay_objectives", "columns", "eval_sts", "eval_beir", "eval_task", "lora_target_modules",
    "wise_ft_grid",
)  # fmt: skip
# Options that are text on the command line but may be a number in a recipe file (``wise_ft: 0.5``).
NUMBER_OR_WORD_OPTIONS = ("wise_ft",)
# Options that are mappings in a recipe file and JSON text on the command line.
MAPPING_OPTIONS = ("loss_kwargs",)
_TRUE, _FALSE = ("true", "yes", "1", "t", "y"), ("false", "no", "0", "f", "n")


def _option_types() -> dict[str, Any]:
    hints = typing.get_type_hints(GTETrainingArguments)
    hints.update(typing.get_type_hints(RecipeArguments))
    return hints


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether a recipe ``value`` fits a dataclass field ``annotation``. Numbers written as strings (YAML reads
    ``1e-5`` as text) and booleans written as words are accepted where the command line would accept them; an
    annotation this check does not know (a callable, a class) is left to the parser."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(annotation)
    if annotation is bool:
        return isinstance(value, bool) or (isinstance(value, str) and value.lower() in _TRUE + _FALSE)
    if annotation in (int, float):
        if isinstance(value, str):
            try:
                value = annotation(value)
            except ValueError:
                return False
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return (annotation is float or isinstance(value, int)) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_accepts(item, v) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, (annotation, str))
    return True


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in typing.get_args(annotation)))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if origin is list:
        return f"a list of {_describe(typing.get_args(annotation)[0])}"
    return {bool: "true/false", int: "an integer", float: "a finite number", str: "text"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def check_recipe_values(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Type-check the values of one level of a recipe file against the option dataclasses, before any work: a
    one-line error names the stage (or top level) and the key. Returns the values with single strings of the list
    options made one-entry lists."""
    types_ = _option_types()
    checked = dict(values)
    for key, value in values.items():
        if key == "name":
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise ValueError(f"{where}: 'name' must be text, got {value!r}")
            continue
        if key in LIST_OPTIONS and isinstance(value, str):
            value = checked[key] = [value]
        if key in NUMBER_OR_WORD_OPTIONS and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = checked[key] = str(value)
        if key in MAPPING_OPTIONS and (value is None or isinstance(value, (dict, str))):
            continue
        annotation = types_.get(key)
        if annotation is not None and not _accepts(annotation, value):
            raise ValueError(f"{where}: {key} must be {_describe(annotation)}, got {value!r:.80}")
    return checked


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: an option given twice would otherwise silently keep the last."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"option {key!r} is given twice")
        out[key] = value
    return out


def _unique_key_loader() -> type:
    """PyYAML's safe loader, refusing a mapping that names a key twice (PyYAML keeps the last one silently: a recipe
    with two ``stages:`` or two ``learning_rate:`` would run with one of them without a word)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f"line {line}: option {key!r} is given twice (first on line {lines[key]})"
                )
            lines[key] = line
        return loader.construct_mapping(node)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return UniqueKeyLoader


def load_config(path: str) -> dict[str, Any]:
    """A recipe file (``.yaml`` / ``.yml``, else JSON) as a mapping; a missing, undecodable or malformed file, or
    an option given twice, is a one-line ``ValueError`` / ``FileNotFoundError`` naming it."""
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

            config = yaml.load(text, Loader=_unique_key_loader()) or {}
        else:
            config = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError / a key given twice
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
    check_matryoshka_dims(recipe.matryoshka_dims, where=where)
    check_prompts(args.prompts, where=where)
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
    # A stage that trains no step would replace OUTPUT_DIR with the untrained base model: refused up front. -1 is the
    # Trainer's "not set" (the epoch count decides).
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(f"{where}: --max_steps must be a positive number of steps, got {args.max_steps}")
    if args.max_steps == -1 and not (math.isfinite(args.num_train_epochs) and args.num_train_epochs > 0):
        raise ValueError(f"{where}: --num_train_epochs must be > 0 (or set --max_steps), got {args.num_train_epochs}")
    if recipe.max_seq_length < 1:
        raise ValueError(f"{where}: --max_seq_length must be a positive integer, got {recipe.max_seq_length}")
    if recipe.serving_max_seq_length is not None and recipe.serving_max_seq_length < 1:
        raise ValueError(
            f"{where}: --serving_max_seq_length must be a positive integer, got {recipe.serving_max_seq_length}"
        )
    from gte_st.model import POOLING_CHOICES

    if recipe.pooling not in POOLING_CHOICES:
        raise ValueError(f"{where}: --pooling must be one of {list(POOLING_CHOICES)}, got {recipe.pooling!r}")
    from gte_st.registry import PRECISIONS

    if recipe.eval_precision not in PRECISIONS:
        raise ValueError(f"{where}: --eval_precision must be one of {list(PRECISIONS)}, got {recipe.eval_precision!r}")
    if not (math.isfinite(recipe.alpha) and recipe.alpha >= 0):
        raise ValueError(f"{where}: --alpha must be a finite number >= 0, got {recipe.alpha}")
    if recipe.replay and not (math.isfinite(recipe.replay_share) and 0 < recipe.replay_share < 1):
        raise ValueError(f"{where}: --replay_share must lie strictly between 0 and 1, got {recipe.replay_share}")
    if recipe.replay_objective not in REPLAY_OBJECTIVES:
        raise ValueError(
            f"{where}: --replay_objective must be one of {list(REPLAY_OBJECTIVES)}, got {recipe.replay_objective!r}"
        )
    if recipe.replay_objective != "loss" and not recipe.replay:
        raise ValueError(f"{where}: --replay_objective {recipe.replay_objective} needs --replay sources")
    replay_objectives(recipe, where)
    if recipe.replay_distillation_target not in DISTILLATION_TARGETS:
        raise ValueError(
            f"{where}: --replay_distillation_target must be one of {list(DISTILLATION_TARGETS)}, "
            f"got {recipe.replay_distillation_target!r}"
        )
    if not (math.isfinite(recipe.replay_distillation_weight) and recipe.replay_distillation_weight > 0):
        raise ValueError(
            f"{where}: --replay_distillation_weight must be a finite number > 0, got {recipe.replay_distillation_weight}"
        )
    if recipe.lora_r is not None:
        from gte_st.lora import lora_config

        try:
            lora_config(recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout, recipe.lora_target_modules)
        except ValueError as exc:
            raise ValueError(f"{where}: --lora_r/--lora_alpha/--lora_dropout: {exc}") from None
        except ImportError as exc:
            raise ValueError(f"{where}: --lora_r: {exc}") from None
    from gte_st.training.wise_ft import check_grid, parse_wise_ft

    parse_wise_ft(recipe.wise_ft, f"{where}: --wise_ft")
    check_grid(recipe.wise_ft_grid, f"{where}: --wise_ft_grid")
    if not (math.isfinite(recipe.wise_ft_tolerance) and recipe.wise_ft_tolerance >= 0):
        raise ValueError(f"{where}: --wise_ft_tolerance must be a finite number >= 0, got {recipe.wise_ft_tolerance}")
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
    from gte_st.training.evaluation import parse_eval_task

    for entry in recipe.eval_task or []:  # the syntax, task and path; the data is read when the tasks are built
        parse_eval_task(entry, f"{where}: --eval_task")


def replay_objectives(recipe: RecipeArguments, where: str = "") -> dict[str, str]:
    """What the batches of each ``--replay`` source train (by source name): ``--replay_objective``, or the objective
    that ``--replay_objectives NAME=OBJECTIVE`` gives that source.

    Refuses an entry that is not NAME=OBJECTIVE, an objective not in :data:`~gte_st.training.loss.REPLAY_OBJECTIVES`,
    a name that is not one of the stage's replay sources, and a source named twice: a misspelt name would otherwise
    leave its source on the default objective without a word."""
    prefix = f"{where}: " if where else ""
    names = [SourceSpec.parse(spec).name for spec in recipe.replay or []]
    objectives = dict.fromkeys(names, recipe.replay_objective)
    overridden: set[str] = set()
    for item in recipe.replay_objectives or []:
        name, sep, objective = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{prefix}--replay_objectives expects NAME=OBJECTIVE, got {item!r}")
        if objective not in REPLAY_OBJECTIVES:
            raise ValueError(
                f"{prefix}--replay_objectives {item}: the objective must be one of {list(REPLAY_OBJECTIVES)}"
            )
        if name not in objectives:
            raise ValueError(f"{prefix}--replay_objectives {item}: {name!r} is not a --replay source ({names})")
        if name in overridden:
            raise ValueError(f"{prefix}--replay_objectives names {name!r} twice")
        overridden.add(name)
        objectives[name] = objective
    return objectives


def check_base_model_positions(base_model: str, stages: list[Stage]) -> None:
    """Fail before loading weights when a stage's ``--max_seq_length`` exceeds the base model's positions (read
    from its ``config.json``; models whose config cannot be read here are checked when they load)."""
    from transformers import AutoConfig

    from gte_st.loading import check_model_location

    check_model_location(base_model, option="--base_model")
    local = Path(base_model).expanduser()
    try:
        config = AutoConfig.from_pretrained(str(local) if local.exists() else base_model)
    except Exception:  # noqa: BLE001 -- a Hub id offline, remote code, ...: checked when the model loads
        return
    from gte_st.model import usable_positions

    usable = usable_positions(config)
    if usable is None:
        return
    for stage in stages:
        for option in ("max_seq_length", "serving_max_seq_length"):
            length = getattr(stage.recipe, option)
            if length is not None and length > usable:
                raise ValueError(
                    f"stage {stage.name}: --{option} {length} exceeds the {usable} positions of {base_model} "
                    "(max_position_embeddings in its config.json)"
                )


def parse_stages(argv: Sequence[str] | None = None) -> list[Stage]:
    """Parse a recipe (``--config FILE`` + command-line overrides) into its stages and check each one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        make_parser().print_help()
        raise SystemExit(0)
    config_path = _config_path(argv)
    config = load_config(config_path) if config_path else {}
    if not config_path and not any(a == "--data" or a.startswith("--data=") for a in argv):
        config = dict(DEFAULT_JOB)
    if "stages" in config:
        stage_configs = config.pop("stages")
        if not isinstance(stage_configs, list) or not all(isinstance(s, dict) for s in stage_configs):
            raise ValueError(f"--config {config_path}: 'stages' must be a list of mappings, got {stage_configs!r:.80}")
        if not stage_configs:
            raise ValueError(f"--config {config_path}: 'stages' is empty; list at least one stage or leave it out")
    else:
        stage_configs = [{}]
    known = {f.name for f in fields(RecipeArguments)} | {f.name for f in fields(GTETrainingArguments)}
    levels = [("top level", config)] + [(f"stage {i}", s) for i, s in enumerate(stage_configs)]
    for where, values in levels:
        if unknown := sorted(set(values) - known - {"name"}):
            raise ValueError(
                f"--config {config_path} ({where}): unknown option(s) {unknown}; see `gte-st train --help`"
            )
    config = check_recipe_values(config, f"--config {config_path} (top level)")
    stage_configs = [
        check_recipe_values(s, f"--config {config_path} (stage {s.get('name', i)})")
        for i, s in enumerate(stage_configs)
    ]
    recipe_names = {f.name for f in fields(RecipeArguments)}
    stages: list[Stage] = []
    for index, stage_config in enumerate(stage_configs):
        stage_config = dict(stage_config)
        name = str(stage_config.pop("name", "train" if len(stage_configs) == 1 else f"stage{index + 1}"))
        check_path_component(name, what=f"--config {config_path}: stage name")  # checkpoints go to OUTPUT_DIR/<name>
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
        hub_token, args.hub_token = args.hub_token, None  # never pickled into a checkpoint (see Stage)
        _ = args.device  # sets up accelerate's (distributed) state with the parsed use_cpu/backend options
        stage = Stage(
            name=name, recipe=recipe, args=args, final_dir=final_dir, loss_kwargs=loss_kwargs, hub_token=hub_token
        )
        check_stage(stage, where)
        stages.append(stage)
    if len({s.name for s in stages}) != len(stages):
        raise ValueError(f"--config {config_path}: stage names must be unique, got {[s.name for s in stages]}")
    check_run_options(stages, from_default_job=config_path is None and not stages[0].recipe.data)
    from gte_st.model import default_base_model

    base_model = stages[0].recipe.base_model or default_base_model()
    check_output_dir(stages, base_model, config_path)
    check_base_model_positions(base_model, stages)
    for stage in stages:
        check_frozen_models(base_model, stage.recipe.matryoshka_dims, stage.loss_kwargs, where=f"stage {stage.name}")
    return stages


def check_run_options(stages: list[Stage], *, from_default_job: bool = False) -> None:
    """Checks of the options that act on the whole run after its stages (read from the first stage, as
    ``--output_dir``): ``--lora_save adapter`` keeps the adapter of a single LoRA stage (an adapter names the base
    model it applies to, so no other stage may change that model, and interpolating needs merged weights);
    ``--wise_ft auto`` chooses on the evaluation tasks (``--eval_sts``, ``--eval_beir``, ``--eval_task``, or the
    default job's held-out docstring pairs that it does not report), so it needs some."""
    first = stages[0].recipe
    if first.lora_save == "adapter":
        if len(stages) != 1 or first.lora_r is None:
            raise ValueError(
                "--lora_save adapter keeps the adapter of a single --lora_r stage (other stages would change the base "
                "model the adapter applies to); use --lora_save merged"
            )
        if first.wise_ft is not None:
            raise ValueError("--wise_ft interpolates merged weights; use --lora_save merged with it")
    if first.wise_ft is not None and first.wise_ft.strip().lower() == "auto":
        if not (first.eval_sts or first.eval_beir or first.eval_task or from_default_job):
            raise ValueError(
                "--wise_ft auto chooses the weight on the evaluation tasks: give dev data with --eval_sts / "
                "--eval_beir / --eval_task"
            )


def check_output_dir(stages: list[Stage], base_model: str, config_path: str | None) -> None:
    """``--output_dir`` is the run's own folder (replaced by the final model): it never equals, contains or lies
    inside what the run reads -- the base model, the recipe, a data source, an evaluation file."""
    from gte_st.data import SourceSpec

    inputs: dict[str, Any] = {"--base_model": base_model, "--config": config_path}
    for stage in stages:
        recipe = stage.recipe
        for i, spec in enumerate(recipe.data or []):
            inputs[f"stage {stage.name} --data #{i + 1}"] = SourceSpec.parse(spec).location
        for i, spec in enumerate(recipe.replay or []):
            inputs[f"stage {stage.name} --replay #{i + 1}"] = SourceSpec.parse(spec).location
        for option in ("eval_sts", "eval_beir"):
            for i, path in enumerate(getattr(recipe, option) or []):
                inputs[f"--{option} #{i + 1}"] = path
        for i, entry in enumerate(recipe.eval_task or []):
            inputs[f"--eval_task #{i + 1}"] = entry.partition("=")[2]  # checked TASK[:SPLIT]=PATH by check_stage
    check_output_path(stages[0].final_dir, inputs, option="--output_dir")


__all__ = ["DEFAULT_JOB", "Stage", "check_base_model_positions", "check_stage", "make_parser", "parse_stages"]
