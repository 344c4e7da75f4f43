"""The GTE training recipe on top of sentence-transformers' Trainer: arguments, stages, losses, callbacks, outputs.

A recipe is a YAML/JSON file (or nothing: the embedded default job) holding any :class:`RecipeArguments` and
:class:`GTETrainingArguments` keys at top level, plus an optional ``stages:`` list whose entries override those keys
for one stage (``name:`` names it). Command-line ``--key value`` options override the file for every stage. Stages
run in order, each starting from the previous stage's weights; the final model goes to ``output_dir`` (default
``./gte``) atomically, with ``training_summary.json``; checkpoints live in ``output_dir/checkpoints/<stage>/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from datasets import Dataset, DatasetDict
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
from transformers import HfArgumentParser, TrainerCallback

from gte_st.data import AlphaSourceBatchSampler, load_training_data, sampling_probabilities, validate_sizes
from gte_st.encoding import cpu_supports_bf16
from gte_st.losses import NonFiniteEmbeddingError

logger = logging.getLogger(__name__)

GTE_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
LOSSES = ("mse", "gte", "mnrl")
SUMMARY_NAME = "training_summary.json"
# The embedded default job's recipe (used when neither --config nor --data is given; command-line options still
# override it). Chosen by measurement on the held-out docstring split: 23 steps x 32 pairs moved nDCG@10 from 0.770 to
# 0.827 with this contrastive recipe, while NormalizedMSELoss lost 0.003 (lr 5e-5) and 0.163 (lr 2e-4).
DEFAULT_JOB = {"loss": "gte", "learning_rate": 1e-4, "max_seq_length": 64}
STAGE_DONE_NAME = "stage_summary.json"


@dataclass
class RecipeArguments:
    """gte-st options (everything that is not a Hugging Face ``TrainingArguments`` option)."""

    config: str | None = field(
        default=None, metadata={"help": "YAML/JSON recipe file; command-line options override its values."}
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "Base encoder (directory or Hub id). Default: the offline all-MiniLM-L6-v2 copy."},
    )
    data: list[str] | None = field(
        default=None,
        metadata={
            "help": "Training sources: .jsonl/.json/.csv/.tsv/.parquet files, directories or Hub dataset ids, "
            "optionally named NAME=PATH. Default: the embedded docstring pairs (offline)."
        },
    )
    columns: list[str] | None = field(
        default=None,
        metadata={
            "help": "Source columns in the order ANCHOR POSITIVE [NEGATIVE ...]. Default: anchor/positive/negative_* "
            "(sentence-transformers) or query/pos/neg (FlagEmbedding) and other common names."
        },
    )
    num_negatives: int | None = field(
        default=None, metadata={"help": "Hard negatives per row (0: pairs only). Default: all the data has."}
    )
    data_split: str = field(default="train", metadata={"help": "Split of Hub dataset sources."})
    max_rows: int | None = field(default=None, metadata={"help": "Use at most this many rows of each source."})
    alpha: float = field(
        default=0.5,
        metadata={"help": "Multi-source mixture: each batch comes from one source, chosen with p ~ n_i^alpha."},
    )
    max_seq_length: int = field(default=128, metadata={"help": "Truncation length (tokens) of this stage."})
    loss: Literal["mse", "gte", "mnrl"] = field(
        default="mse",
        metadata={
            "help": "mse: gte_st NormalizedMSELoss; gte: MultipleNegativesRankingLoss with the four GTE "
            "directions, joint partition; mnrl: plain MultipleNegativesRankingLoss."
        },
    )
    loss_kwargs: str | None = field(
        default=None, metadata={"help": "Extra loss arguments as JSON, e.g. '{\"margin\": 0.2}' or '{\"scale\": 50}'."}
    )
    mini_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Use the cached (GradCache) variant of the loss with this mini-batch size: memory stays "
            "flat while the batch (and the number of in-batch negatives) grows."
        },
    )
    gather_across_devices: bool = field(
        default=False, metadata={"help": "Share in-batch negatives across all ranks (DDP)."}
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = field(
        default="auto",
        metadata={
            "help": "Mixed precision. auto: bf16 on GPUs and on CPUs with AMX/AVX512-BF16, fp16 on GPUs "
            "without bf16, else fp32."
        },
    )
    mine_hard_negatives: bool = field(
        default=False,
        metadata={
            "help": "Before this stage, mine hard negatives for every source with the current model "
            "(sentence_transformers.util.mine_hard_negatives)."
        },
    )
    mining_num_negatives: int = field(default=1, metadata={"help": "Negatives mined per anchor."})
    mining_range_min: int = field(default=10, metadata={"help": "Skip this many top-ranked candidates."})
    mining_range_max: int = field(default=50, metadata={"help": "Consider candidates up to this rank."})
    mining_relative_margin: float | None = field(
        default=0.05, metadata={"help": "A negative must score below (1 - margin) x the positive's score."}
    )
    eval_sts: list[str] | None = field(
        default=None,
        metadata={
            "help": "STS files (STS-B .csv/.tsv, SICK .txt, or .jsonl with sentence1/sentence2/score) to "
            "evaluate before, during (eval_strategy) and after training."
        },
    )
    eval_beir: list[str] | None = field(
        default=None, metadata={"help": "BEIR-layout retrieval folders (corpus.jsonl[.gz], queries.jsonl, qrels/)."}
    )
    eval_beir_split: str = field(default="test", metadata={"help": "qrels split of the BEIR folders."})
    eval_max_corpus: int | None = field(
        default=None, metadata={"help": "Keep at most this many BEIR documents (all relevant ones are kept)."}
    )
    default_train_pairs: int = field(
        default=768, metadata={"help": "Embedded default job only: number of training pairs used."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue from the latest checkpoint in output_dir (skips finished stages)."}
    )
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "Keep output_dir/checkpoints after a successful run (default: delete)."}
    )
    hub_checkpoints: bool = field(
        default=False,
        metadata={"help": "Upload every checkpoint to the branch 'checkpoints' of the --push-to-hub repository."},
    )
    resume_from_hub: str | None = field(
        default=None,
        metadata={"help": "REPO_ID[@REVISION]: download the latest Hub checkpoint and resume from it."},
    )


@dataclass
class GTETrainingArguments(SentenceTransformerTrainingArguments):
    """sentence-transformers' training arguments with gte-st defaults (every Hugging Face option is available)."""

    output_dir: str = field(
        default="gte",
        metadata={
            "help": "Final model directory (SentenceTransformer('gte') loads it); checkpoints go to "
            "OUTPUT_DIR/checkpoints/<stage>/."
        },
    )
    push_to_hub: str | None = field(  # type: ignore[assignment]
        default=None,
        metadata={"help": "REPO_ID: publish the final model (portable layout + model card) with gte_st.hub."},
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device (one source)."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak AdamW learning rate."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs (max_steps > 0 overrides)."})
    warmup_steps: float = field(
        default=0.1,
        metadata={"help": "Linear warm-up: a step count, or a float in [0, 1) as a fraction of all steps."},
    )
    save_steps: float = field(default=100, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept per stage."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    dataloader_drop_last: bool = field(default=True, metadata={"help": "Drop incomplete batches."})
    seed: int = field(default=42, metadata={"help": "Random seed (model init, data order, dropout)."})
    batch_sampler: str = field(  # type: ignore[assignment]
        default="no_duplicates",
        metadata={"help": "Per-source batch sampler: no_duplicates (no repeated text in a batch), batch_sampler, ..."},
    )

    def __post_init__(self) -> None:
        self.hub_repo_id = self.push_to_hub  # published by gte_st.hub, not by the Trainer
        self.push_to_hub = False
        super().__post_init__()


@dataclass
class Stage:
    """One parsed stage of a recipe."""

    name: str
    recipe: RecipeArguments
    args: GTETrainingArguments
    final_dir: Path


def resolve_precision(precision: str) -> dict[str, bool]:
    """TrainingArguments flags for ``precision`` ("auto" picks bf16 > fp16 > fp32 by hardware)."""
    if precision == "auto":
        if torch.cuda.is_available():
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_supports_bf16() else "fp32"
    flags = {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    if not torch.cuda.is_available():
        flags["use_cpu"] = True  # also selects gloo for multi-process CPU runs (accelerate's MULTI_CPU)
    return flags


def _load_config(path: str) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        config = yaml.safe_load(text) or {}
    else:
        config = json.loads(text)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a recipe must be a mapping of option names to values.")
    return config


def _config_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((RecipeArguments, GTETrainingArguments), prog="gte-st train")


def parse_stages(argv: Sequence[str] | None = None) -> list[Stage]:
    """Parse a recipe (``--config FILE`` + command-line overrides) into its stages."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        make_parser().print_help()
        raise SystemExit(0)
    config_path = _config_path(argv)
    config = _load_config(config_path) if config_path else {}
    if not config_path and not any(a == "--data" or a.startswith("--data=") for a in argv):
        config = dict(DEFAULT_JOB)
    stage_configs = config.pop("stages", None) or [{}]
    known = {f.name for f in fields(RecipeArguments)} | {f.name for f in fields(GTETrainingArguments)}
    for where, values in [("top level", config)] + [(f"stage {i}", s) for i, s in enumerate(stage_configs)]:
        if unknown := sorted(set(values) - known - {"name"}):
            raise ValueError(f"{config_path} ({where}): unknown option(s) {unknown}; see `gte-st train --help`.")
    recipe_names = {f.name for f in fields(RecipeArguments)}
    stages: list[Stage] = []
    for index, stage_config in enumerate(stage_configs):
        stage_config = dict(stage_config)
        name = str(stage_config.pop("name", "train" if len(stage_configs) == 1 else f"stage{index + 1}"))
        defaults = {**config, **stage_config}
        # First pass: the recipe options alone, to resolve the precision flags before TrainingArguments validates.
        recipe_parser = HfArgumentParser(RecipeArguments)
        recipe_parser.set_defaults(**{k: v for k, v in defaults.items() if k in recipe_names})
        (recipe, _) = recipe_parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        parser = make_parser()
        parser.set_defaults(**{**resolve_precision(recipe.precision), **defaults})
        recipe, args = parser.parse_args_into_dataclasses(args=argv)
        final_dir = Path(args.output_dir)
        args.output_dir = str(final_dir / "checkpoints" / name)
        _ = args.device  # sets up accelerate's (distributed) state with the parsed use_cpu/backend options
        stages.append(Stage(name=name, recipe=recipe, args=args, final_dir=final_dir))
    if len({s.name for s in stages}) != len(stages):
        raise ValueError(f"{config_path}: stage names must be unique, got {[s.name for s in stages]}.")
    return stages


def build_loss(
    model: SentenceTransformer,
    name: str = "mse",
    *,
    mini_batch_size: int | None = None,
    gather_across_devices: bool = False,
    **kwargs: Any,
) -> torch.nn.Module:
    """The loss of a stage: ``mse`` (NormalizedMSELoss), ``gte`` (4-direction joint MNRL) or ``mnrl``; the
    GradCache variant when ``mini_batch_size`` is set."""
    from sentence_transformers.sentence_transformer import losses as st_losses

    from gte_st import losses as gte_losses

    kwargs["gather_across_devices"] = gather_across_devices
    if mini_batch_size is not None:
        kwargs["mini_batch_size"] = mini_batch_size
    cached = mini_batch_size is not None
    if name == "mse":
        cls = gte_losses.CachedNormalizedMSELoss if cached else gte_losses.NormalizedMSELoss
    elif name in ("gte", "mnrl"):
        cls = st_losses.CachedMultipleNegativesRankingLoss if cached else st_losses.MultipleNegativesRankingLoss
        if name == "gte":
            kwargs.setdefault("directions", GTE_DIRECTIONS)
            kwargs.setdefault("partition_mode", "joint")
    else:
        raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}.")
    return cls(model, **kwargs)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class GTETrainer(SentenceTransformerTrainer):
    """sentence-transformers' Trainer with n^alpha single-source batches and a stop on non-finite losses."""

    def __init__(self, *args: Any, alpha: float = 0.5, **kwargs: Any) -> None:
        self.alpha = alpha
        super().__init__(*args, **kwargs)

    def get_multi_dataset_batch_sampler(self, dataset, batch_samplers, generator=None, seed=0):  # noqa: D102
        return AlphaSourceBatchSampler(
            dataset, batch_samplers, generator=generator, seed=seed, alpha=self.alpha, world_size=self.args.world_size
        )

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: D102
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        except NonFiniteEmbeddingError as exc:  # gte_st's losses refuse non-finite embeddings before any loss
            raise NonFiniteLossError(
                f"the training loss became nan at step {self.state.global_step + 1} ({exc}); training stopped "
                "before applying this update."
            ) from None
        bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0, device=loss.device)
        if self.args.world_size > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            raise NonFiniteLossError(
                f"the training loss became {loss.item()} at step {self.state.global_step + 1}; training stopped "
                "before applying this update. Lower the learning rate, use bf16 instead of fp16, or check the data."
            )
        return loss


class ThroughputCallback(TrainerCallback):
    """Measures training time and optimisation steps of one ``train()`` call (resumed runs included)."""

    def __init__(self) -> None:
        self.start_time = self.end_time = 0.0
        self.start_step = self.end_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time, self.start_step = time.perf_counter(), state.global_step

    def on_step_begin(self, args, state, control, **kwargs):
        if self.start_step > state.global_step or self.start_time == 0.0:
            self.start_time, self.start_step = time.perf_counter(), state.global_step
        # A resumed run reports global_step at its checkpoint in on_train_begin already; nothing else to do.

    def on_train_end(self, args, state, control, **kwargs):
        self.end_time, self.end_step = time.perf_counter(), state.global_step


class HubCheckpointCallback(TrainerCallback):
    """Uploads each saved checkpoint with :func:`gte_st.hub.push_checkpoint` (main process only)."""

    def __init__(self, repo_id: str, token: str | None = None) -> None:
        self.repo_id, self.token = repo_id, token

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from gte_st.hub import push_checkpoint

            push_checkpoint(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.repo_id, token=self.token)


# --------------------------------------------------------------------------------------------- checkpoints & output


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The complete ``checkpoint-<step>`` folder with the highest step (a folder is complete once the Trainer has
    written ``trainer_state.json``, its last file); None if there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    complete = [
        p
        for p in directory.glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(complete, key=lambda p: int(p.name.removeprefix("checkpoint-")), default=None)


def _weights_finite(checkpoint: Path) -> bool:
    from safetensors.torch import load_file

    files = list(checkpoint.rglob("*.safetensors"))
    return bool(files) and all(all(torch.isfinite(t).all() for t in load_file(f).values()) for f in files)


def discard_non_finite_checkpoints(directory: Path) -> Path | None:
    """Delete checkpoints whose weights hold NaN/inf; return the last good one."""
    while (checkpoint := latest_checkpoint(directory)) is not None and not _weights_finite(checkpoint):
        logger.warning(f"removing {checkpoint}: its weights are not finite")
        shutil.rmtree(checkpoint)
    return checkpoint


def save_atomically(
    model: SentenceTransformer, final_dir: Path, extra_files: dict[str, Any], keep: Path | None
) -> None:
    """Write the model (portable layout) and ``extra_files`` (JSON) into a temporary sibling directory, then swap it
    in place of ``final_dir`` with renames: ``final_dir`` is always either absent, the old or the new complete model.
    ``keep`` (a sub-directory of the old ``final_dir``, e.g. checkpoints) is moved into the new one."""
    final_dir = final_dir.resolve()
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_dir.parent / f".{final_dir.name}.tmp-{os.getpid()}"
    old = final_dir.parent / f".{final_dir.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))
    for name, content in extra_files.items():
        (tmp / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf8")
    if keep is not None and keep.exists():
        os.replace(keep, tmp / keep.relative_to(final_dir.parent / final_dir.name))
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp, final_dir)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------- evaluation


@dataclass
class EvalTask:
    """One evaluation: an ST evaluator plus how to report it as a contract-2 ``EvalResult`` dict."""

    evaluator: Any
    task_type: str
    dataset: str
    split: str

    def run(self, model: SentenceTransformer) -> dict[str, Any]:
        scores = self.evaluator(model)
        prefix = f"{self.evaluator.name}_cosine_" if self.task_type == "Retrieval" else f"{self.evaluator.name}_"
        values = {k.removeprefix(prefix): float(v) for k, v in scores.items() if k.startswith(prefix)}
        if self.task_type == "Retrieval":
            names = {"ndcg@10": "ndcg_at_10", "mrr@10": "mrr_at_10", "recall@10": "recall_at_10",
                     "recall@100": "recall_at_100", "map@100": "map"}  # fmt: skip
            metrics, main = {new: values[old] for old, new in names.items() if old in values}, "ndcg_at_10"
        else:
            metrics, main = {"spearman": values["spearman_cosine"], "pearson": values["pearson_cosine"]}, "spearman"
        return {"task_type": self.task_type, "dataset": self.dataset, "split": self.split,
                "metrics": metrics, "main_score": main}  # fmt: skip


def build_eval_tasks(recipe: RecipeArguments, held_out: dict[str, Any] | None = None) -> list[EvalTask]:
    """Evaluation tasks from the recipe's ``eval_sts``/``eval_beir`` (and the default job's held-out split)."""
    from sentence_transformers.sentence_transformer.evaluation import (
        EmbeddingSimilarityEvaluator,
        InformationRetrievalEvaluator,
    )

    try:  # embed through gte_st.encoding (length-sorted batches, bf16 on AMX CPUs / GPUs) when available
        from gte_st.evaluation._embed import FastEmbedMixin

        class FastIR(FastEmbedMixin, InformationRetrievalEvaluator):
            precision_mode, return_tensor = "auto", True

        class FastSTS(FastEmbedMixin, EmbeddingSimilarityEvaluator):
            precision_mode = "auto"

        InformationRetrievalEvaluator, EmbeddingSimilarityEvaluator = FastIR, FastSTS  # noqa: N806
    except ImportError:
        pass
    from gte_st.evaluation.readers import read_beir, read_sts
    from gte_st.evaluation.retrieval import limit_corpus

    tasks: list[EvalTask] = []
    ir_kwargs = {"mrr_at_k": [10], "ndcg_at_k": [10], "accuracy_at_k": [1], "precision_recall_at_k": [10, 100],
                 "map_at_k": [100], "batch_size": 64, "show_progress_bar": False}  # fmt: skip
    if held_out is not None:
        tasks.append(EvalTask(InformationRetrievalEvaluator(**held_out, name="docstrings", **ir_kwargs),
                              "Retrieval", "docstrings-held-out", "test"))  # fmt: skip
    for path in recipe.eval_sts or []:
        pairs = read_sts(path)
        name = Path(path).name.split(".")[0]
        evaluator = EmbeddingSimilarityEvaluator(pairs.sentences1, pairs.sentences2, pairs.scores, name=name,
                                                 batch_size=64)  # fmt: skip
        tasks.append(EvalTask(evaluator, "STS", name, Path(path).stem))
    for folder in recipe.eval_beir or []:
        data = read_beir(folder, recipe.eval_beir_split)
        corpus = {doc: data.corpus[doc] for doc in limit_corpus(data, recipe.eval_max_corpus)}
        name = Path(folder).name
        evaluator = InformationRetrievalEvaluator(data.queries, corpus, data.qrels, name=name, **ir_kwargs)
        tasks.append(EvalTask(evaluator, "Retrieval", name, recipe.eval_beir_split))
    return tasks


def _evaluate(tasks: list[EvalTask], model: SentenceTransformer) -> list[dict[str, Any]]:
    model.eval()
    with torch.inference_mode():
        return [task.run(model) for task in tasks]


# --------------------------------------------------------------------------------------------- the run


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def mine_negatives(data: DatasetDict, model: SentenceTransformer, recipe: RecipeArguments) -> DatasetDict:
    """Hard negatives for every source from the current model (sentence-transformers' ``mine_hard_negatives``)."""
    from sentence_transformers.util import mine_hard_negatives

    mined = {}
    for name, dataset in data.items():
        pairs = dataset.select_columns(["anchor", "positive"])
        mined[name] = mine_hard_negatives(
            pairs,
            model,
            anchor_column_name="anchor",
            positive_column_name="positive",
            num_negatives=recipe.mining_num_negatives,
            range_min=recipe.mining_range_min,
            range_max=recipe.mining_range_max,
            relative_margin=recipe.mining_relative_margin,
            sampling_strategy="top",
            output_format="n-tuple",
            batch_size=64,
            verbose=False,
        )
    return DatasetDict(mined)


def run(stages: list[Stage], callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Run every stage, evaluate before/after, write the final model atomically; returns the training summary."""
    import gte_st
    from gte_st.model import build_model

    start = time.perf_counter()
    first = stages[0]
    final_dir = first.final_dir
    if first.recipe.resume_from_hub and not first.recipe.resume:
        first.recipe.resume = True
    torch.manual_seed(first.args.seed)
    base_model = first.recipe.base_model or gte_st.default_base_model()
    model = build_model(base_model, max_seq_length=first.recipe.max_seq_length)

    default_train = held_out = None
    if any(stage.recipe.data is None for stage in stages):
        from gte_st.default_data import default_datasets

        default_train, held_out = default_datasets(max_train=first.recipe.default_train_pairs, max_test=200)
    tasks = build_eval_tasks(first.recipe, held_out)
    before = _evaluate(tasks, model) if _is_main_process() else []
    _wait_for_everyone()

    stage_summaries: list[dict[str, Any]] = []
    for stage in stages:
        stage_summaries.append(_run_stage(stage, model, default_train, tasks, callbacks))

    after = _evaluate(tasks, model) if _is_main_process() else []
    summary = {
        "gte_st_version": gte_st.__version__,
        "base_model": base_model,
        "seed": first.args.seed,
        "precision": "bf16" if stages[-1].args.bf16 else "fp16" if stages[-1].args.fp16 else "fp32",
        "max_seq_length": stages[-1].recipe.max_seq_length,
        "stages": stage_summaries,
        "eval": {"before": before, "after": after},
        "total_runtime_s": round(time.perf_counter() - start, 2),
        "world_size": first.args.world_size,
    }
    if _is_main_process():
        checkpoints = final_dir / "checkpoints"
        save_atomically(
            model, final_dir, {SUMMARY_NAME: summary}, checkpoints if first.recipe.keep_checkpoints else None
        )
        shutil.rmtree(checkpoints, ignore_errors=True)
        if repo_id := first.args.hub_repo_id:
            from gte_st.hub import push_model

            push_model(str(final_dir), repo_id, private=bool(first.args.hub_private_repo), token=first.args.hub_token)
    _wait_for_everyone()
    return summary


def _run_stage(
    stage: Stage,
    model: SentenceTransformer,
    default_train: dict[str, Dataset] | None,
    tasks: list[EvalTask],
    callbacks: Sequence[TrainerCallback],
) -> dict[str, Any]:
    recipe, args = stage.recipe, stage.args
    checkpoint_dir = Path(args.output_dir)
    done_dir = checkpoint_dir / "final"
    if recipe.resume and (done_dir / STAGE_DONE_NAME).is_file():
        logger.info(f"stage {stage.name}: already finished, loading its weights from {done_dir}")
        finished = SentenceTransformer(str(done_dir), device=str(model.device))
        model.load_state_dict(finished.state_dict())
        return json.loads((done_dir / STAGE_DONE_NAME).read_text())

    model.max_seq_length = recipe.max_seq_length
    global_batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    if recipe.data is None:
        data = DatasetDict(default_train)
        locations = {name: f"gte_st.default_data:{name}" for name in data}
        data = validate_sizes(data, min_rows=args.per_device_train_batch_size * args.world_size, locations=locations)
    else:
        data = load_training_data(
            recipe.data,
            columns=recipe.columns,
            num_negatives=recipe.num_negatives,
            split=recipe.data_split,
            max_rows=recipe.max_rows,
            min_rows=args.per_device_train_batch_size * args.world_size,
        )
        locations = {n: s.split("=", 1)[-1] if "=" in s and "/" not in s.split("=", 1)[0] else s
                     for n, s in zip(data, recipe.data)}  # fmt: skip
    if recipe.mine_hard_negatives:
        data = mine_negatives(data, model, recipe)
        # mining keeps only the anchors for which enough negatives were found: check the sources again
        mined_where = {name: f"{where} (after hard-negative mining)" for name, where in locations.items()}
        validate_sizes(data, min_rows=args.per_device_train_batch_size * args.world_size, locations=mined_where)
    loss = build_loss(
        model,
        recipe.loss,
        mini_batch_size=recipe.mini_batch_size,
        gather_across_devices=recipe.gather_across_devices,
        **json.loads(recipe.loss_kwargs or "{}"),
    )
    throughput = ThroughputCallback()
    extra: list[TrainerCallback] = [throughput, *callbacks]
    if recipe.hub_checkpoints:
        if not args.hub_repo_id:
            raise ValueError("--hub_checkpoints needs --push-to-hub REPO_ID.")
        extra.append(HubCheckpointCallback(args.hub_repo_id, token=args.hub_token))
    evaluator = None
    if args.eval_strategy != "no" and tasks:
        from sentence_transformers.sentence_transformer.evaluation import SequentialEvaluator

        evaluator = SequentialEvaluator([task.evaluator for task in tasks])
    trainer = GTETrainer(
        model=model,
        args=args,
        train_dataset=data if len(data) > 1 else next(iter(data.values())),
        loss=loss,
        evaluator=evaluator,
        callbacks=extra,
        alpha=recipe.alpha,
    )
    resume_from = args.resume_from_checkpoint
    if recipe.resume_from_hub:
        from gte_st.hub import pull_latest_checkpoint

        repo_id, _, revision = recipe.resume_from_hub.partition("@")
        resume_from = str(
            pull_latest_checkpoint(
                repo_id, revision=revision or "checkpoints", local_dir=checkpoint_dir, token=args.hub_token
            )
        )
    elif recipe.resume and resume_from is None:
        found = latest_checkpoint(checkpoint_dir)
        resume_from = str(found) if found is not None else None
        logger.info(f"stage {stage.name}: resuming from {resume_from or 'the start (no checkpoint found)'}")
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except NonFiniteLossError as exc:
        good = discard_non_finite_checkpoints(checkpoint_dir) if _is_main_process() else None
        where = f"the last good checkpoint is {good}" if good else "no checkpoint was saved before it"
        raise NonFiniteLossError(f"stage {stage.name}: {exc} {where}.") from None

    steps = throughput.end_step - throughput.start_step
    runtime = max(throughput.end_time - throughput.start_time, 1e-9)
    probabilities = sampling_probabilities([len(d) for d in data.values()], recipe.alpha)
    summary = {
        "name": stage.name,
        "loss": {"name": type(loss).__name__, "config": _jsonable(loss.get_config_dict())},
        "per_device_batch_size": args.per_device_train_batch_size,
        "global_batch_size": global_batch,
        "mini_batch_size": recipe.mini_batch_size,
        "max_seq_length": recipe.max_seq_length,
        "learning_rate": args.learning_rate,
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0.0), 4),
        "data": [
            {
                "name": name,
                "source": locations[name],
                "rows": len(d),
                "columns": list(d.column_names),
                "sampling_probability": round(p, 6),
            }
            for (name, d), p in zip(data.items(), probabilities)
        ],  # fmt: skip
        "pairs_per_second": round(steps * global_batch / runtime, 3),
        "runtime_s": round(runtime, 2),
    }
    if _is_main_process():
        tmp = checkpoint_dir / "final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(str(tmp))
        (tmp / STAGE_DONE_NAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf8")
        shutil.rmtree(done_dir, ignore_errors=True)
        os.replace(tmp, done_dir)
    _wait_for_everyone()
    return summary


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return getattr(value, "__name__", str(value))


def format_summary(summary: dict[str, Any], final_dir: str | os.PathLike) -> str:
    """A short human summary: time, pairs/s per stage, evaluation before -> after."""
    minutes, seconds = divmod(summary["total_runtime_s"], 60)
    lines = [f"Trained {final_dir} in {int(minutes)}m{seconds:04.1f}s ({summary['precision']}, "
             f"world size {summary['world_size']})"]  # fmt: skip
    for stage in summary["stages"]:
        lines.append(
            f"  stage {stage['name']}: {stage['steps']} steps x {stage['global_batch_size']} "
            f"({stage['loss']['name']}), {stage['pairs_per_second']:.1f} pairs/s, {stage['runtime_s']:.0f}s"
        )
    before = {(r["dataset"], r["split"]): r for r in summary["eval"]["before"]}
    if before:
        lines.append(f"  {'evaluation':<36} {'before':>8} {'after':>8} {'delta':>8}")
    for result in summary["eval"]["after"]:
        old = before.get((result["dataset"], result["split"]))
        key = result["main_score"]
        new_value = result["metrics"][key]
        old_value = old["metrics"][key] if old else math.nan
        label = f"{result['dataset']} {key}"
        lines.append(f"  {label:<36} {old_value:8.4f} {new_value:8.4f} {new_value - old_value:+8.4f}")
    lines.append(f'Load it with SentenceTransformer("{final_dir}").')
    return "\n".join(lines)


__all__ = [
    "GTETrainer",
    "GTETrainingArguments",
    "NonFiniteLossError",
    "RecipeArguments",
    "Stage",
    "build_loss",
    "format_summary",
    "latest_checkpoint",
    "parse_stages",
    "resolve_precision",
    "run",
]
