"""sentence-transformers' Trainer with gte-st's batches (one source per batch, p ~ n^alpha) and a stop on
non-finite losses, plus the callbacks a run uses."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformerTrainer
from transformers import TrainerCallback

from gte_st.data import AlphaSourceBatchSampler
from gte_st.lora import has_lora, load_lora_weights
from gte_st.losses import NonFiniteEmbeddingError


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class GTETrainer(SentenceTransformerTrainer):
    """sentence-transformers' Trainer with n^alpha single-source batches (a share of them for replay sources), a stop
    on non-finite losses, and resuming a LoRA stage from its adapter checkpoints.

    ``replay``: per source of the training ``DatasetDict`` (in order), whether it is a replay source; they get
    ``replay_share`` of the batches (:class:`~gte_st.data.AlphaSourceBatchSampler`)."""

    def __init__(
        self,
        *args: Any,
        alpha: float = 0.5,
        replay: Sequence[bool] | None = None,
        replay_share: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.alpha = alpha
        self.replay, self.replay_share = replay, replay_share
        super().__init__(*args, **kwargs)
        self._autocast_teacher()

    def _autocast_teacher(self) -> None:
        """Run a loss's frozen teacher (``loss.teacher``, e.g. self-distillation) in the run's mixed precision.

        accelerate wraps only the prepared model's ``forward`` in autocast; a teacher inside the loss would otherwise
        run in fp32 under bf16/fp16 training. Its outputs are returned in fp32, as accelerate does for the student."""
        teacher = getattr(self.loss, "teacher", None)
        if not isinstance(teacher, torch.nn.Module) or not self.accelerator.native_amp:
            return
        from accelerate.utils import convert_outputs_to_fp32

        forward, accelerator = teacher.forward, self.accelerator

        def autocast_forward(*args: Any, **kwargs: Any) -> Any:
            with accelerator.autocast():
                return forward(*args, **kwargs)

        teacher.forward = convert_outputs_to_fp32(autocast_forward)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save on the writer rank only. sentence-transformers' ``_save`` assumes it runs on process zero, but
        transformers 5 calls ``_save`` on every rank and checks ``should_save`` inside its own ``_save``, so without
        this every rank of a multi-process run writes the same checkpoint files at once (seen as a rank reading a
        half-written ``config.json``)."""
        if not self.args.should_save:
            return
        super()._save(output_dir, state_dict=state_dict)

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
