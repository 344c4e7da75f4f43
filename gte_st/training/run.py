"""Running a recipe: every stage in order (data, mining, loss, Trainer, checkpoints, resume), evaluation before and
after, the final model written atomically with its summary, and the optional Hub push."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback

from gte_st.checkpoints import latest_checkpoint
from gte_st.data import (
    DataValidationError,
    SourceSpec,
    load_training_data,
    sampling_probabilities,
    validate_sizes,
)
from gte_st.files import atomic_write_json, replace_directory
from gte_st.lora import add_lora, has_lora, load_lora_weights, lora_config, merge_lora
from gte_st.training.arguments import RecipeArguments
from gte_st.training.checkpoints import discard_non_finite_checkpoints, save_atomically
from gte_st.training.evaluation import EvalTask, build_eval_tasks, choice_tasks, evaluate
from gte_st.training.hard_negatives import mine_negatives
from gte_st.training.loss import build_loss, build_replay_loss, describe_loss, uses_scores
from gte_st.training.prompts import check_prompts, column_prompts, served_prompts
from gte_st.training.recipe import Stage, replay_objectives
from gte_st.training.trainer import GTETrainer, HubCheckpointCallback, NonFiniteLossError, ThroughputCallback
from gte_st.training.vocabulary import new_token_callbacks, prepare_vocabulary
from gte_st.training.wise_ft import apply_wise_ft, parse_wise_ft
from gte_st.training_summary import STAGE_DONE_FILE, SUMMARY_FILE, jsonable
from gte_st.weights import naming_weight_files

logger = logging.getLogger(__name__)


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def run(stages: list[Stage], callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Run every stage, evaluate before/after, write the final model atomically; returns the training summary."""
    import gte_st
    from gte_st.model import build_model

    start = time.perf_counter()
    first = stages[0]
    final_dir = first.final_dir
    if first.recipe.resume_from_hub and not first.recipe.resume:
        first.recipe.resume = True
    wise_ft = parse_wise_ft(first.recipe.wise_ft)
    default_train = held_out = None
    if any(stage.recipe.data is None for stage in stages):
        from gte_st.default_data import HELD_OUT_QUERIES, default_datasets

        default_train, held_out = default_datasets(
            max_train=first.recipe.default_train_pairs, max_test=HELD_OUT_QUERIES
        )
        if wise_ft != "auto":  # the dev queries are only for --wise_ft auto's choice
            del held_out["dev"]
    # Every source and evaluation file is read and validated before the model is loaded.
    stage_data = [load_stage_data(stage, default_train) for stage in stages]
    tasks = build_eval_tasks(first.recipe, held_out)
    torch.manual_seed(first.args.seed)
    base_model = first.recipe.base_model or gte_st.default_base_model()
    model = build_model(base_model, pooling=first.recipe.pooling)
    vocabulary = prepare_vocabulary(model, stages, stage_data)  # --extend_vocab, then the [UNK] guard
    # WiSE-FT interpolates with the weights the run started from; kept on the CPU.
    base_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()} if wise_ft else None
    serving_length = resolve_serving_length(model, first.recipe.serving_max_seq_length)
    # Evaluated as it is served: at its serving length, before and after training.
    model.max_seq_length = serving_length
    # Served as trained: the model's query/document prompts are those its (last prompted) stage trains with, from the
    # start, so the evaluations before, during and after training encode with them too.
    for stage in stages:
        model.prompts.update(served_prompts(check_prompts(stage.args.prompts)))
    before = [r.to_dict() for r in evaluate(tasks, model)] if _is_main_process() else []
    _wait_for_everyone()

    stage_summaries: list[dict[str, Any]] = []
    for stage, (data, locations) in zip(stages, stage_data):
        stage_summaries.append(_run_stage(stage, model, data, locations, tasks, callbacks))

    model.max_seq_length = serving_length
    interpolation = None
    if wise_ft is not None and _is_main_process():
        interpolation = apply_wise_ft(
            model,
            base_state,
            wise_ft,
            tasks=choice_tasks(tasks),
            before=before,
            grid=first.recipe.wise_ft_grid,
            tolerance=first.recipe.wise_ft_tolerance,
        )
    after = [r.to_dict() for r in evaluate(tasks, model)] if _is_main_process() else []
    summary = {
        "gte_st_version": gte_st.__version__,
        "base_model": base_model,
        "seed": first.args.seed,
        "precision": "bf16" if stages[-1].args.bf16 else "fp16" if stages[-1].args.fp16 else "fp32",
        "max_seq_length": stages[-1].recipe.max_seq_length,
        "serving_max_seq_length": serving_length,
        "stages": stage_summaries,
        "vocabulary_extension": vocabulary,
        **({"wise_ft": interpolation} if interpolation is not None else {}),
        "eval": {"before": before, "after": after},
        "total_runtime_s": round(time.perf_counter() - start, 2),
        "world_size": first.args.world_size,
    }
    if _is_main_process():
        checkpoints = final_dir / "checkpoints"
        keep = first.recipe.keep_checkpoints
        save_atomically(model, final_dir, {SUMMARY_FILE: summary}, checkpoints if keep else None)
        if not keep:
            shutil.rmtree(checkpoints, ignore_errors=True)
        if repo_id := first.args.hub_repo_id:
            from gte_st.hub import push_model

            push_model(str(final_dir), repo_id, private=bool(first.args.hub_private_repo), token=first.hub_token)
    _wait_for_everyone()
    return summary


def resolve_serving_length(model: SentenceTransformer, requested: int | None) -> int:
    """The length the saved model serves at: ``requested`` (``--serving_max_seq_length``) or the base model's own,
    bounded by its position embeddings. The training length (``--max_seq_length``) is a training option only: a model
    trained on short pairs still reads long documents whole at serving time, as its base did."""
    from gte_st.model import max_positions

    positions = max_positions(model)
    length = requested if requested is not None else model.max_seq_length
    if length is None or length <= 0:
        length = positions
    if positions is not None and length > positions:
        if requested is not None:
            raise ValueError(f"--serving_max_seq_length {requested} exceeds the model's {positions} positions")
        length = positions
    if length is None:
        raise ValueError("the base model states no serving length and no positions; set --serving_max_seq_length")
    return int(length)


def load_stage_data(stage: Stage, default_train: dict[str, Dataset] | None) -> tuple[DatasetDict, dict[str, str]]:
    """A stage's sources, then its replay sources, loaded and validated (files, columns, rows, sizes), and where each
    came from."""
    recipe, args = stage.recipe, stage.args
    min_rows = args.per_device_train_batch_size * args.world_size
    if recipe.data is None:
        locations = {name: f"gte_st.default_data:{name}" for name in default_train}
        data = validate_sizes(DatasetDict(default_train), min_rows=min_rows, locations=locations)
    else:
        data = _load_sources(stage, recipe.data, min_rows)
        check_teacher_scores(stage, data)
        locations = {name: SourceSpec.parse(spec).location for name, spec in zip(data, recipe.data)}
    if recipe.replay:
        replay = _load_sources(stage, recipe.replay, min_rows)
        if clash := sorted(set(replay) & set(data)):
            raise DataValidationError(
                f"stage {stage.name}: --replay source name(s) {clash} also name --data sources; name them NAME=PATH."
            )
        locations.update({name: SourceSpec.parse(spec).location for name, spec in zip(replay, recipe.replay)})
        data = DatasetDict({**data, **replay})
    # checked before the model loads
    sampling_probabilities(
        [len(d) for d in data.values()], recipe.alpha, replay_flags(stage, data), recipe.replay_share
    )
    return data, locations


def _load_sources(stage: Stage, specs: list[str], min_rows: int) -> DatasetDict:
    recipe = stage.recipe
    return load_training_data(
        specs,
        columns=recipe.columns,
        num_negatives=recipe.num_negatives,
        split=recipe.data_split,
        max_rows=recipe.max_rows,
        min_rows=min_rows,
        scored=uses_scores(recipe.loss),
    )


def replay_flags(stage: Stage, data: DatasetDict) -> list[bool]:
    """For each source of ``data`` (in order), whether it is one of the stage's ``--replay`` sources."""
    replay = {SourceSpec.parse(spec).name for spec in stage.recipe.replay or []}
    return [name in replay for name in data]


def stage_lora_config(recipe: RecipeArguments) -> Any:
    """peft's ``LoraConfig`` of a stage's ``--lora_*`` options."""
    return lora_config(recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout, recipe.lora_target_modules)


def lora_summary(recipe: RecipeArguments, model: SentenceTransformer) -> dict[str, Any]:
    """What the training summary records of a LoRA stage."""
    return {
        "r": recipe.lora_r,
        "alpha": recipe.lora_alpha if recipe.lora_alpha is not None else recipe.lora_r,
        "dropout": recipe.lora_dropout,
        "target_modules": recipe.lora_target_modules or "peft's default",
        "saved": "adapter" if has_lora(model) else "merged",
    }


def check_teacher_scores(stage: Stage, data: DatasetDict) -> None:
    """A stage with ``score_distillation_weight > 0`` needs teacher scores in its data (``pos_scores``/``neg_scores``)
    and must keep the negatives they score: otherwise the term would silently be absent or wrong."""
    if not stage.loss_kwargs.get("score_distillation_weight"):
        return
    where = f"stage {stage.name}: --loss_kwargs score_distillation_weight > 0"
    if stage.recipe.mine_hard_negatives:
        raise DataValidationError(f"{where}, but --mine_hard_negatives replaces the negatives the scores belong to.")
    if not any("label" in d.column_names for d in data.values()):
        raise DataValidationError(
            f"{where}, but no source has teacher scores (pos_scores/neg_scores columns): {sorted(data)}."
        )


def _run_stage(
    stage: Stage,
    model: SentenceTransformer,
    data: DatasetDict,
    locations: dict[str, str],
    tasks: list[EvalTask],
    callbacks: Sequence[TrainerCallback],
) -> dict[str, Any]:
    """Train ``model`` through one stage and save the stage's final weights (``<output_dir>/final``); a stage already
    finished in an earlier run of a resumed recipe is loaded instead. Returns the stage's summary."""
    recipe, args = stage.recipe, stage.args
    if recipe.matryoshka_dims:
        model.matryoshka_dims = list(recipe.matryoshka_dims)  # saved in config_sentence_transformers.json
    done_dir = Path(args.output_dir) / "final"
    if recipe.resume and (done_dir / STAGE_DONE_FILE).is_file():
        return _load_finished_stage(stage, model, done_dir)

    model.max_seq_length = recipe.max_seq_length
    replay = replay_flags(stage, data)
    data = _mine_stage_negatives(stage, model, data, locations, replay)
    prompts = check_prompts(args.prompts)
    args.prompts = column_prompts(prompts, {column for d in data.values() for column in d.column_names})
    loss = build_loss(
        model,
        recipe.loss,
        mini_batch_size=recipe.mini_batch_size,
        gather_across_devices=recipe.gather_across_devices,
        matryoshka_dims=recipe.matryoshka_dims,
        **stage.loss_kwargs,
    )
    objectives = replay_objectives(recipe)
    replay_loss = build_replay_loss(
        model, loss, "distillation" if "distillation" in objectives.values() else "loss",
        distillation_weight=recipe.replay_distillation_weight,
        distillation_target=recipe.replay_distillation_target, mini_batch_size=recipe.mini_batch_size,
    )  # fmt: skip
    if recipe.lora_r is not None:  # after the loss: a frozen teacher (self-distillation) copies the plain model
        add_lora(model, stage_lora_config(recipe))
    throughput = ThroughputCallback()
    losses = loss
    if replay_loss is not loss:
        # sentence-transformers' loss per source: the replay sources whose objective is distillation train replay_loss
        losses = {name: replay_loss if objectives.get(name) == "distillation" else loss for name in data}
    trainer = _stage_trainer(stage, model, data, losses, replay, tasks, [throughput, *callbacks])
    _train(stage, trainer, _checkpoint_to_resume(stage))
    if recipe.lora_r is not None and not _keeps_adapter(recipe):
        merge_lora(model)
    summary = _stage_summary(stage, model, data, locations, replay, objectives, loss, prompts, trainer, throughput)
    if replay_loss is not loss:
        summary["replay_loss"] = jsonable(describe_loss(replay_loss))
    if _is_main_process():
        tmp = done_dir.with_name("final.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(str(tmp))
        atomic_write_json(tmp / STAGE_DONE_FILE, summary)
        replace_directory(tmp, done_dir)
    _wait_for_everyone()
    return summary


def _keeps_adapter(recipe: RecipeArguments) -> bool:
    """A LoRA stage saved as an adapter (a single stage: check_run_options), not merged into the weights."""
    return recipe.lora_r is not None and recipe.lora_save == "adapter"


def _load_finished_stage(stage: Stage, model: SentenceTransformer, done_dir: Path) -> dict[str, Any]:
    """The weights and summary of a stage an earlier run of the recipe finished."""
    logger.info(f"stage {stage.name}: already finished, loading its weights from {done_dir}")
    if _keeps_adapter(stage.recipe):  # saved as an adapter: the same adapter on the same base, its saved weights
        add_lora(model, stage_lora_config(stage.recipe))
        load_lora_weights(model, done_dir)
    else:
        finished = SentenceTransformer(str(done_dir), device=str(model.device))
        model.load_state_dict(finished.state_dict())
    return json.loads((done_dir / STAGE_DONE_FILE).read_text())


def _mine_stage_negatives(
    stage: Stage, model: SentenceTransformer, data: DatasetDict, locations: dict[str, str], replay: list[bool]
) -> DatasetDict:
    """``--mine_hard_negatives``: the stage's own sources with mined negatives (replay sources are replayed as they
    are); mining keeps only the anchors for which enough negatives were found, so the sizes are checked again."""
    if not stage.recipe.mine_hard_negatives:
        return data
    own_sources = DatasetDict({name: d for (name, d), is_replay in zip(data.items(), replay) if not is_replay})
    own = mine_negatives(own_sources, model, stage.recipe)
    data = DatasetDict({name: own[name] if name in own else dataset for name, dataset in data.items()})
    mined_where = {name: f"{where} (after hard-negative mining)" for name, where in locations.items()}
    min_rows = stage.args.per_device_train_batch_size * stage.args.world_size
    validate_sizes(data, min_rows=min_rows, locations=mined_where)
    return data


def _stage_trainer(
    stage: Stage,
    model: SentenceTransformer,
    data: DatasetDict,
    loss: torch.nn.Module,
    replay: list[bool],
    tasks: list[EvalTask],
    callbacks: list[TrainerCallback],
) -> GTETrainer:
    """The stage's Trainer: its batches (sources, replay share, length grouping), callbacks (new-token learning rate,
    Hub checkpoints) and, with ``--eval_strategy``, the evaluation tasks during training."""
    recipe, args = stage.recipe, stage.args
    callbacks = [*callbacks, *new_token_callbacks(model, recipe)]
    if recipe.hub_checkpoints:
        callbacks.append(HubCheckpointCallback(args.hub_repo_id, token=stage.hub_token))
    evaluator = None
    if args.eval_strategy != "no" and tasks:
        from sentence_transformers.sentence_transformer.evaluation import SequentialEvaluator

        evaluator = SequentialEvaluator([task.evaluator for task in tasks])
    return GTETrainer(
        model=model,
        args=args,
        train_dataset=data if len(data) > 1 else next(iter(data.values())),
        loss=loss,
        evaluator=evaluator,
        callbacks=callbacks,
        alpha=recipe.alpha,
        length_grouping=recipe.length_grouping,
        pretokenize=recipe.pretokenize,
        training_attention=recipe.training_attention,
        training_dropout=recipe.training_dropout,
        replay=replay,
        replay_share=recipe.replay_share,
    )


def _checkpoint_to_resume(stage: Stage) -> str | None:
    """The checkpoint the stage continues from: ``--resume_from_checkpoint``, the latest one on the Hub
    (``--resume_from_hub``), or with ``--resume`` the latest one in the stage's folder; None: from the start."""
    recipe, args = stage.recipe, stage.args
    checkpoint_dir = Path(args.output_dir)
    if recipe.resume_from_hub:
        from gte_st.hub import pull_latest_checkpoint, split_repo_revision

        repo_id, revision = split_repo_revision(recipe.resume_from_hub)
        return str(
            pull_latest_checkpoint(
                repo_id, revision=revision or "checkpoints", local_dir=checkpoint_dir, token=stage.hub_token
            )
        )
    if recipe.resume and args.resume_from_checkpoint is None:
        found = latest_checkpoint(checkpoint_dir)
        logger.info(f"stage {stage.name}: resuming from {found or 'the start (no checkpoint found)'}")
        return str(found) if found is not None else None
    return args.resume_from_checkpoint


def _train(stage: Stage, trainer: GTETrainer, resume_from: str | None) -> None:
    """``trainer.train()``; a non-finite loss stops it with the last good checkpoint named (later ones removed)."""
    try:
        with naming_weight_files(resume_from) if resume_from else contextlib.nullcontext():
            trainer.train(resume_from_checkpoint=resume_from)
    except NonFiniteLossError as exc:
        good = discard_non_finite_checkpoints(Path(stage.args.output_dir)) if _is_main_process() else None
        where = f"the last good checkpoint is {good}" if good else "no checkpoint was saved before it"
        raise NonFiniteLossError(f"stage {stage.name}: {exc} {where}.") from None


def _stage_summary(
    stage: Stage,
    model: SentenceTransformer,
    data: DatasetDict,
    locations: dict[str, str],
    replay: list[bool],
    objectives: dict[str, str],
    loss: torch.nn.Module,
    prompts: dict[str, str] | None,
    trainer: GTETrainer,
    throughput: ThroughputCallback,
) -> dict[str, Any]:
    """What the stage did, for ``training_summary.json`` and the model card."""
    recipe, args = stage.recipe, stage.args
    global_batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    steps = throughput.end_step - throughput.start_step
    runtime = max(throughput.end_time - throughput.start_time, 1e-9)
    probabilities = sampling_probabilities([len(d) for d in data.values()], recipe.alpha, replay, recipe.replay_share)
    return {
        "name": stage.name,
        "loss": jsonable(describe_loss(loss)),
        "per_device_batch_size": args.per_device_train_batch_size,
        "global_batch_size": global_batch,
        "mini_batch_size": recipe.mini_batch_size,
        "matryoshka_dims": recipe.matryoshka_dims,
        "prompts": served_prompts(prompts) or None,
        "max_seq_length": recipe.max_seq_length,
        "learning_rate": args.learning_rate,
        "attention_kernel": getattr(trainer, "attention_kernel", None),
        "dropout_masks": getattr(trainer, "dropout_masks", None),
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0.0), 4),
        "data": [
            {
                "name": name,
                "source": locations[name],
                "rows": len(d),
                "columns": list(d.column_names),
                "sampling_probability": round(p, 6),
                **({"replay": True, "replay_objective": objectives[name]} if is_replay else {}),
            }
            for (name, d), p, is_replay in zip(data.items(), probabilities, replay)
        ],  # fmt: skip
        **({"replay_share": recipe.replay_share} if any(replay) else {}),
        **({"lora": lora_summary(recipe, model)} if recipe.lora_r is not None else {}),
        "pairs_per_second": round(steps * global_batch / runtime, 3),
        "runtime_s": round(runtime, 2),
    }


__all__ = ["run"]
