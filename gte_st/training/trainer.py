"""sentence-transformers' Trainer with gte-st's batches (one source per batch, p ~ n^alpha) and a stop on
non-finite losses, plus the callbacks a run uses."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from transformers import TrainerCallback

from gte_st.data import AlphaSourceBatchSampler
from gte_st.lora import has_lora, load_lora_weights
from gte_st.losses.in_batch import NonFiniteEmbeddingError
from gte_st.training.attention import DEFAULT_TRAINING_ATTENTION, resolve_training_attention, training_attention
from gte_st.training.batching import (
    DEFAULT_LENGTH_GROUPING,
    DEFAULT_PRETOKENIZE,
    LengthGroupedBatchSampler,
    TokenCache,
    text_columns,
)
from gte_st.training.dropout import DEFAULT_TRAINING_DROPOUT, resolve_training_dropout, training_dropout


def frozen_models(loss: torch.nn.Module, model: torch.nn.Module) -> list[SentenceTransformer]:
    """The frozen SentenceTransformers inside a loss (every parameter without gradient), the trained model aside."""
    return [
        module
        for module in loss.modules()
        if isinstance(module, SentenceTransformer)
        and module is not model
        and not any(p.requires_grad for p in module.parameters())
    ]


def _under_autocast(forward: Any, accelerator: Any) -> Any:
    def autocast_forward(*args: Any, **kwargs: Any) -> Any:
        with accelerator.autocast():
            return forward(*args, **kwargs)

    return autocast_forward


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class GTETrainer(SentenceTransformerTrainer):
    """sentence-transformers' Trainer with n^alpha single-source batches (a share of them for replay sources), a stop
    on non-finite losses, resuming a LoRA stage from its adapter checkpoints and, as options, texts tokenised once per
    dataset and length-grouped batches (:mod:`gte_st.training.batching`).

    Args:
        alpha: Multi-source mixture exponent (:class:`~gte_st.data.AlphaSourceBatchSampler`).
        replay: Per source of the training ``DatasetDict`` (in order), whether it is a replay source; they get
            ``replay_share`` of the batches.
        replay_share: The share of the batches drawn from replay sources.
        length_grouping: Batches per window ordered by token length
            (:class:`~gte_st.training.batching.LengthGroupedBatchSampler`); 0: sentence-transformers' samplers. Used
            with the ``no_duplicates`` batch samplers (the default), whose no-repeat rule it keeps.
        pretokenize: Tokenise every text of ``train_dataset`` once, before the first step
            (:class:`~gte_st.training.batching.TokenCache`), and build each batch from the cached ids.
        training_attention: The encoder's attention kernel during :meth:`train` (``"auto"``: eager on a CPU, the
            model's own elsewhere; :mod:`gte_st.training.attention`).
        training_dropout: The dropout masks during :meth:`train` (``"auto"``: drawn four per 64-bit random word on a
            CPU, PyTorch's elsewhere; :mod:`gte_st.training.dropout`).
    """

    def __init__(
        self,
        *args: Any,
        alpha: float = 0.5,
        replay: Sequence[bool] | None = None,
        replay_share: float = 0.0,
        length_grouping: int = DEFAULT_LENGTH_GROUPING,
        pretokenize: bool = DEFAULT_PRETOKENIZE,
        training_attention: str = DEFAULT_TRAINING_ATTENTION,
        training_dropout: str = DEFAULT_TRAINING_DROPOUT,
        **kwargs: Any,
    ) -> None:
        if length_grouping < 0:
            raise ValueError(f"length_grouping must be >= 0, got {length_grouping}")
        resolve_training_attention(training_attention, "cpu")  # a bad value fails before anything is built
        resolve_training_dropout(training_dropout, "cpu")
        self.training_attention = training_attention
        self.attention_kernel: str | None = None
        self.training_dropout = training_dropout
        self.dropout_masks: str | None = None
        self.alpha = alpha
        self.replay, self.replay_share = replay, replay_share
        self.length_grouping = length_grouping
        self.pretokenize = pretokenize
        self.token_cache: TokenCache | None = None
        model = kwargs.get("model", args[0] if args else None)
        train_dataset = kwargs.get("train_dataset")
        if (pretokenize or length_grouping) and model is not None and train_dataset is not None:
            self.token_cache = TokenCache(model)
            sources = train_dataset.values() if isinstance(train_dataset, dict) else [train_dataset]
            for source in sources:
                for column in text_columns(source):
                    self.token_cache.add(list(source[column]))
        super().__init__(*args, **kwargs)
        self._autocast_frozen_models()

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's ``train`` with the encoder's attention kernel of ``training_attention`` and the dropout masks
        of ``training_dropout``, both put back after."""
        with training_attention(self.model, self.training_attention) as kernel:
            with training_dropout(self.model, self.training_dropout) as masks:
                # what the run trained with (the training summary records it)
                self.attention_kernel, self.dropout_masks = kernel, masks
                return super().train(*args, **kwargs)

    def get_data_collator(self, model, args, processing_class=None):  # noqa: D102
        collator = super().get_data_collator(model=model, args=args, processing_class=processing_class)
        if self.pretokenize and self.token_cache is not None and self.token_cache.enabled:
            collator.preprocess_fn = self.token_cache.preprocess
        return collator

    def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):  # noqa: D102
        grouped = self.length_grouping and self.token_cache is not None
        if grouped and self.args.batch_sampler in ("no_duplicates", "no_duplicates_hashed"):
            return LengthGroupedBatchSampler(
                dataset, batch_size, drop_last, valid_label_columns, generator, seed,
                lengths=self.token_cache.row_lengths(dataset), window=self.length_grouping,
            )  # fmt: skip
        return super().get_batch_sampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed)

    def _autocast_frozen_models(self) -> None:
        """Run the loss's frozen models (a self-distillation teacher, a false-negative guide) in the run's mixed
        precision.

        accelerate wraps only the prepared model's ``forward`` in autocast; a frozen model inside the loss would
        otherwise run in fp32 under bf16/fp16 training. Its outputs are returned in fp32, as accelerate does for the
        student."""
        if not self.accelerator.native_amp:
            return
        from accelerate.utils import convert_outputs_to_fp32

        # one loss, or one per source (a stage whose replay batches train their own objective)
        losses = self.loss.values() if isinstance(self.loss, dict) else [self.loss]
        wrapped: set[int] = set()  # a teacher shared by two losses is wrapped once
        for loss in losses:
            if not isinstance(loss, torch.nn.Module):
                continue
            for frozen in frozen_models(loss, self.model):
                if id(frozen) not in wrapped:
                    wrapped.add(id(frozen))
                    frozen.forward = convert_outputs_to_fp32(_under_autocast(frozen.forward, self.accelerator))

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save on the writer rank only. sentence-transformers' ``_save`` assumes it runs on process zero, but
        transformers 5 calls ``_save`` on every rank and checks ``should_save`` inside its own ``_save``, so without
        this every rank of a multi-process run writes the same checkpoint files at once (seen as a rank reading a
        half-written ``config.json``)."""
        if not self.args.should_save:
            return
        super()._save(output_dir, state_dict=state_dict)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, plus the parameter groups callbacks ask for (``callback.parameter_groups``, e.g.
        the new tokens' learning rate of :class:`~gte_st.training.vocabulary.NewTokenLearningRate`): their
        parameters leave the default groups for groups with their own options."""
        if self.optimizer is not None:
            return self.optimizer
        optimizer = super().create_optimizer(model)
        groups = [g for c in self.callback_handler.callbacks for g in getattr(c, "parameter_groups", ())]
        moved = {id(p) for group in groups for p in group["params"]}
        if moved:
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in moved]
            for group in groups:
                optimizer.add_param_group(dict(group))
        return optimizer

    def get_multi_dataset_batch_sampler(self, dataset, batch_samplers, generator=None, seed=0):  # noqa: D102
        return AlphaSourceBatchSampler(
            dataset,
            batch_samplers,
            generator=generator,
            seed=seed,
            alpha=self.alpha,
            world_size=self.args.world_size,
            replay=self.replay,
            replay_share=self.replay_share,
        )

    def _load_from_checkpoint(self, checkpoint_path: str, *args: Any, **kwargs: Any) -> None:
        """A LoRA stage's checkpoints hold its adapter (peft's layout): its weights go into the model's adapter, on
        the weights the stage started from; other checkpoints load as sentence-transformers loads them."""
        model = getattr(self.model, "_orig_mod", self.model)
        if has_lora(model):
            load_lora_weights(model, checkpoint_path)
            return
        super()._load_from_checkpoint(checkpoint_path, *args, **kwargs)

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


__all__ = ["GTETrainer", "HubCheckpointCallback", "NonFiniteLossError", "ThroughputCallback"]
