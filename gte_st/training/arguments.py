"""The options of a training stage: gte-st's own (:class:`RecipeArguments`) and Hugging Face's
(:class:`GTETrainingArguments`, sentence-transformers' training arguments with gte-st defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

from gte_st.hardware import cpu_supports_bf16
from gte_st.registry import PRECISIONS, eval_path_tasks
from gte_st.training.attention import DEFAULT_TRAINING_ATTENTION, TrainingAttention
from gte_st.training.batching import DEFAULT_LENGTH_GROUPING, DEFAULT_PRETOKENIZE
from gte_st.training.dropout import DEFAULT_TRAINING_DROPOUT, TrainingDropout
from gte_st.training.loss import LOSSES, loss_help, loss_kwargs_help


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
    replay: list[str] | None = field(
        default=None,
        metadata={
            "help": "Replay sources (same forms as --data): general-domain data mixed into this stage so that it "
            "keeps what the base model knew. They get --replay_share of the batches, the stage's own sources the "
            "rest (each group split by n_i^alpha); an epoch stays one pass over the stage's own data."
        },
    )
    replay_share: float = field(
        default=0.2, metadata={"help": "Share of the batches drawn from the --replay sources (0 < share < 1)."}
    )
    replay_objective: str = field(
        default="loss",
        metadata={
            "help": "What the replay batches train: loss (the stage's --loss, as its own sources) or distillation "
            "(only to keep the in-batch cosine similarities a frozen copy of the stage's starting model gives "
            "them, weighted by --replay_distillation_weight: the base model's geometry on general text is kept "
            "rather than the general pairs' task learnt again)."
        },
    )
    replay_objectives: list[str] | None = field(
        default=None,
        metadata={
            "help": "Per replay source, NAME=OBJECTIVE overriding --replay_objective for that source (e.g. "
            "docstrings=loss with --replay_objective distillation): general text whose task the stage should keep "
            "practising with its loss, beside general text whose embeddings it should only keep."
        },
    )
    replay_distillation_weight: float = field(
        default=10.0,
        metadata={"help": "With --replay_objective distillation: the weight of the replay batches' distillation MSE."},
    )
    replay_distillation_target: str = field(
        default="similarities",
        metadata={
            "help": "With --replay_objective distillation: what the replay batches keep of the starting model: "
            "similarities (each anchor's cosine to every in-batch candidate: the geometry, free to rotate) or "
            "embeddings (each text's normalised embedding itself: a tighter hold, 2 - 2 cos per text)."
        },
    )
    pooling: str = field(
        default="auto",
        metadata={
            "help": "Pooling of the model: auto (a sentence-transformers base keeps its own pooling, e.g. CLS for "
            "gte-*-v1.5; a bare encoder gets GTE mean pooling), or mean, cls, max, ... to override."
        },
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Training truncation length (tokens) of this stage; not saved with the model."}
    )
    serving_max_seq_length: int | None = field(
        default=None,
        metadata={
            "help": "Truncation length (tokens) the saved model serves at. Default: the base model's own (e.g. 256 "
            "for all-MiniLM-L6-v2), bounded by its positions: training on short pairs must not cut documents short "
            "at serving time."
        },
    )
    loss: str = field(default="mse", metadata={"help": loss_help(), "choices": LOSSES.keys()})
    loss_kwargs: str | None = field(default=None, metadata={"help": loss_kwargs_help()})
    matryoshka_dims: list[int] | None = field(
        default=None,
        metadata={
            "help": "Also train at these embedding dimensions, largest first, e.g. 384 256 128 64 (sentence-transformers' "
            "MatryoshkaLoss around the loss); the saved model records them, and every command takes --truncate-dim."
        },
    )
    mini_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Use the cached (GradCache) variant of the loss with this mini-batch size: memory stays "
            "flat while the batch (and the number of in-batch negatives) grows."
        },
    )
    length_grouping: int = field(
        default=DEFAULT_LENGTH_GROUPING,
        metadata={
            "help": "Length-grouped batches: each epoch is shuffled, cut into windows of N batches, the rows of a "
            "window ordered by token length and cut into batches (no repeated text in a batch), the batches "
            "shuffled: less padding, in-batch negatives still random. 0: random batches (sentence-transformers' "
            "no_duplicates sampler). Applies with --batch_sampler no_duplicates (the default)."
        },
    )
    pretokenize: bool = field(
        default=DEFAULT_PRETOKENIZE,
        metadata={
            "help": "Tokenise every training text once before the first step (with the model's own tokenizer; "
            "the batches are the same tensors) instead of in every batch."
        },
    )
    training_attention: TrainingAttention = field(
        default=DEFAULT_TRAINING_ATTENTION,
        metadata={
            "help": "The encoder's attention kernel while it trains: auto (eager attention on a CPU, where "
            "PyTorch's fused SDPA is the slower one in training; the model's own on GPUs), eager or sdpa. Evaluation, "
            "export and serving keep the model's own kernel."
        },
    )
    training_dropout: TrainingDropout = field(
        default=DEFAULT_TRAINING_DROPOUT,
        metadata={
            "help": "Dropout masks while the encoder trains: auto (fast on a CPU, PyTorch's elsewhere), fast (four "
            "masks per 64-bit random word: the same dropout probability to 1/65536, a quarter of PyTorch's serial "
            "per-element draws on a CPU) or torch."
        },
    )
    gather_across_devices: bool = field(
        default=False, metadata={"help": "Share in-batch negatives across all ranks (DDP)."}
    )
    lora_r: int | None = field(
        default=None,
        metadata={
            "help": "Train a LoRA adapter of this rank (peft) instead of every weight: the base weights stay frozen "
            "and the adapter is merged into them when the stage ends (see --lora_save). Needs gte-st[lora]."
        },
    )
    lora_alpha: float | None = field(
        default=None, metadata={"help": "LoRA scale numerator: the update is (lora_alpha / r) B A. Default: r."}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA adapter's input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names to adapt (e.g. query key value dense). Default: peft's for the model type."},
    )
    lora_save: Literal["merged", "adapter"] = field(
        default="merged",
        metadata={
            "help": "merged: the final model has the adapter merged into its weights (portable layout, loads "
            "without peft); adapter: it keeps the adapter (adapter_config.json + adapter_model.safetensors naming "
            "the base model). adapter needs a single --lora_r stage."
        },
    )
    wise_ft: str | None = field(
        default=None,
        metadata={
            "help": "After training, interpolate the weights with the base model's (WiSE-FT): (1 - a) base + a "
            "tuned. A number a in (0, 1], or 'auto': the a of --wise_ft_grid that keeps every --eval_sts / --eval_beir / "
            "--eval_task task (dev data!) within --wise_ft_tolerance of the base model and gains most on their mean."
        },
    )
    wise_ft_grid: list[float] | None = field(
        default=None,
        metadata={"help": "The a values --wise_ft auto tries. Default: 0.1 0.2 ... 1.0."},
    )
    wise_ft_tolerance: float = field(
        default=0.003,
        metadata={"help": "--wise_ft auto: the largest drop below the base model allowed on any task (0-1 scale)."},
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
    eval_beir_split: str = field(default="test", metadata={"help": "qrels split of the --eval_beir folders."})
    eval_task: list[str] | None = field(
        default=None,
        metadata={
            "help": "Any task of `gte-st eval --task` on a file or folder, as TASK=PATH or TASK:SPLIT=PATH (SPLIT as "
            f"`gte-st eval --split`; default the evaluator's), evaluated as --eval_sts is: TASK is one of "
            f"{', '.join(eval_path_tasks())} (the data each reads: `gte-st eval --help`). Encoded at --eval_precision; "
            "reported under the file's name; read and checked before training."
        },
    )
    eval_precision: str = field(
        default="fp32",
        metadata={
            "help": "Encode precision of every evaluation task (a `gte-st eval --precision` choice). fp32, the "
            "default, gives `gte-st eval`'s default figures on every CPU; bf16 and auto (bf16 where the CPU has it) "
            "are faster but move ranking metrics by a few tenths, as much as --wise_ft auto's tolerance.",
            "choices": PRECISIONS.names(),
        },
    )
    eval_max_corpus: int | None = field(
        default=None,
        metadata={
            "help": "Keep at most this many documents of each BEIR folder (--eval_beir, --eval_task retrieval); all "
            "relevant ones are kept."
        },
    )
    extend_vocab: str | None = field(
        default=None,
        metadata={
            "help": "Teach a WordPiece model tokens its vocabulary lacks before training: auto (the characters of "
            "the training texts that it reads as [UNK], seen at least --extend_vocab_min_count times) or a file of "
            "tokens, one per line. The saved model loads with stock SentenceTransformer. See docs/chinese.md."
        },
    )
    extend_vocab_min_count: int = field(
        default=3, metadata={"help": "--extend_vocab auto: add a piece seen at least this many times."}
    )
    extend_vocab_init: Literal["unk", "mean", "random"] = field(
        default="random",
        metadata={
            "help": "Initial embedding of a new token: random (the existing rows' mean and spread per dimension), "
            "mean (their mean) or unk (the [UNK] row: the model starts out unchanged). A token whose NFKC form the "
            "vocabulary spells (full-width punctuation, letters) starts from those pieces' mean."
        },
    )
    new_token_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the new tokens' embeddings (the other rows of the embedding matrix are then "
            "kept as they are). Default: the embedding matrix trains at --learning_rate like everything else."
        },
    )
    allow_unknown_tokens: bool = field(
        default=False,
        metadata={"help": "Train even when more than half of a source's tokens are [UNK] for the model."},
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

    prompts: str | None | dict[str, str] = field(  # type: ignore[assignment]
        default=None,
        metadata={
            "help": "Prompts prepended to the training columns: one string for every column, or a mapping of columns "
            'to prompts, e.g. \'{"anchor": "query: ", "positive": "passage: "}\' (the negatives take the '
            "positive's). Saved in the model as its 'query' (anchor) and 'document' (positive) prompts, which "
            "encode_query / encode_document, eval, index and search use."
        },
    )

    def __post_init__(self) -> None:
        self.hub_repo_id = self.push_to_hub  # published by gte_st.hub, not by the Trainer
        self.push_to_hub = False
        super().__post_init__()


def mixed_precision_flags(precision: str) -> dict[str, bool]:
    """``TrainingArguments`` flags (``bf16``, ``fp16``, ``use_cpu``) for ``precision``; ``"auto"`` picks
    bf16 > fp16 > fp32 by hardware."""
    if precision == "auto":
        if torch.cuda.is_available():
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_supports_bf16() else "fp32"
    flags = {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    if not torch.cuda.is_available():
        flags["use_cpu"] = True  # also selects gloo for multi-process CPU runs (accelerate's MULTI_CPU)
    return flags
