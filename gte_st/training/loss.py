"""The loss of a training stage: one registry of ``--loss`` names, one of the pieces that wrap a loss, and the
composition of both from ``--loss_kwargs`` (checked by the pieces' config objects before any model or data loads).

``--loss_kwargs`` is one flat mapping: each key belongs to the named loss or to exactly one piece
(:data:`LOSS_PIECES`), and a piece is added when its switch is given (e.g. ``distillation_weight`` > 0 wraps the loss
in :class:`~gte_st.losses.SelfDistillationLoss`). Adding a loss is one :data:`LOSSES` entry; adding a piece is one
module under ``gte_st/losses/`` plus one :data:`LOSS_PIECES` entry (the CLI's choices, help and checks follow).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    CoSENTLoss,
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
)

from gte_st.losses.cached import CachedLoss
from gte_st.losses.false_negatives import FalseNegativeFilterConfig, FalseNegativeFilterLoss
from gte_st.losses.normalized_mse import NormalizedMSEConfig, NormalizedMSELoss
from gte_st.losses.score_distillation import ScoreDistillationConfig, ScoreDistillationLoss
from gte_st.losses.self_distillation import SelfDistillationConfig, SelfDistillationLoss
from gte_st.losses.uniformity import UniformityConfig, UniformityLoss
from gte_st.losses.wrapper import LossWrapper
from gte_st.losses.zero import ZeroLoss

GTE_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
# Options the pipeline sets itself (from --mini_batch_size / --gather_across_devices), not via --loss_kwargs.
PIPELINE_OPTIONS = ("model", "mini_batch_size", "gather_across_devices")


@dataclass(frozen=True)
class LossEntry:
    """One ``--loss`` name: the loss class and what the pipeline needs to know about it."""

    help: str
    build: Callable[..., torch.nn.Module]
    # The options dataclass (with validate()) of a gte-st loss; None: options are checked against build's signature.
    config: type | None = None
    # The loss's own gradient-cache class (sentence-transformers'); None: gte_st.losses.CachedLoss wraps it.
    cached: Callable[..., torch.nn.Module] | None = None
    cacheable: bool = True
    # Options the name implies unless given (GTE's four directions).
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # Trained on scored pairs (a score column) instead of in-batch negatives: no pieces, no gathering, no mining.
    scored: bool = False

    def options(self) -> list[str]:
        """The ``--loss_kwargs`` keys of the loss itself (pipeline options aside)."""
        names = (
            [f.name for f in fields(self.config)]
            if self.config is not None
            else [
                name
                for name, p in inspect.signature(self.build).parameters.items()
                if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
        )
        return [name for name in names if name not in PIPELINE_OPTIONS]


LOSSES: dict[str, LossEntry] = {
    "mse": LossEntry(
        help="gte_st NormalizedMSELoss (default; its gradient equals 2 tau x MNRL's with the default options)",
        build=NormalizedMSELoss,
        config=NormalizedMSEConfig,
    ),
    "gte": LossEntry(
        help="MultipleNegativesRankingLoss with the four GTE directions, joint partition",
        build=MultipleNegativesRankingLoss,
        cached=CachedMultipleNegativesRankingLoss,
        defaults={"directions": GTE_DIRECTIONS, "partition_mode": "joint"},
    ),
    "mnrl": LossEntry(
        help="plain MultipleNegativesRankingLoss",
        build=MultipleNegativesRankingLoss,
        cached=CachedMultipleNegativesRankingLoss,
    ),
    "cosent": LossEntry(
        help="CoSENTLoss on scored pairs (a score column, e.g. STS-B's 0-5 gold scores)",
        build=CoSENTLoss,
        cacheable=False,
        scored=True,
    ),
}


@dataclass(frozen=True)
class PieceEntry:
    """A piece that wraps the loss (:class:`~gte_st.losses.LossWrapper`): added when ``switch`` is given with a value
    other than ``off`` (or any of ``also_switch`` is given); its other options belong to it."""

    cls: type[LossWrapper]
    config: type
    switch: str
    off: Any = 0
    also_switch: tuple[str, ...] = ()
    # Only around gte-st's own in-batch losses (it changes which candidates are negatives).
    gte_loss_only: bool = False

    def options(self) -> list[str]:
        return [f.name for f in fields(self.config)]

    def enabled(self, options: Mapping[str, Any]) -> bool:
        return options.get(self.switch, self.off) != self.off or any(
            options.get(k) is not None for k in self.also_switch
        )


# Wrapping order, innermost first: the filter changes the negatives every term reads; the terms add up in this order.
LOSS_PIECES: dict[str, PieceEntry] = {
    "false_negatives": PieceEntry(
        FalseNegativeFilterLoss,
        FalseNegativeFilterConfig,
        switch="false_negative_margin",
        off=None,
        also_switch=("guide",),
        gte_loss_only=True,
    ),
    "uniformity": PieceEntry(UniformityLoss, UniformityConfig, switch="uniformity_weight"),
    "self_distillation": PieceEntry(SelfDistillationLoss, SelfDistillationConfig, switch="distillation_weight"),
    "score_distillation": PieceEntry(
        ScoreDistillationLoss, ScoreDistillationConfig, switch="score_distillation_weight"
    ),
}


def loss_entry(name: str) -> LossEntry:
    """The registry entry of ``--loss name``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {list(LOSSES)}")
    return LOSSES[name]


def loss_help() -> str:
    """``--loss``'s help text, from the registry."""
    return "; ".join(f"{name}: {entry.help}" for name, entry in LOSSES.items())


def loss_kwargs_help() -> str:
    """``--loss_kwargs``'s help text, from the registries."""
    pieces = "; ".join(f"{'/'.join(piece.options())} ({piece.cls.__name__})" for piece in LOSS_PIECES.values())
    return (
        "Options of the loss and of the pieces that wrap it: a mapping in YAML/JSON recipes, a JSON object on the "
        "command line, e.g. '{\"margin\": 0.2}' or '{\"scale\": 50}'. A piece is added when its first option is "
        f"set: {pieces}. Checked before any data is read; see docs/losses.md."
    )


def uses_scores(name: str) -> bool:
    """Whether ``--loss name`` trains on scored pairs (a ``score`` column) instead of in-batch negatives."""
    return loss_entry(name).scored


def check_scored_pair_options(
    name: str,
    *,
    gather_across_devices: bool = False,
    mine_hard_negatives: bool = False,
    num_negatives: int | None = None,
    where: str = "",
) -> None:
    """A loss on scored pairs (``cosent``) compares the pairs of each batch by their scores: options about negatives
    (gathering them across ranks, mining them, keeping them) do not apply and are an error rather than ignored."""
    if not uses_scores(name):
        return
    for option, value in (
        ("--gather_across_devices", gather_across_devices),
        ("--mine_hard_negatives", mine_hard_negatives),
        ("--num_negatives", num_negatives),
    ):
        if value:
            prefix = f"{where}: " if where else ""
            raise ValueError(
                f"{prefix}--loss {name} trains on scored pairs without negatives; {option} does not apply"
            )


def parse_loss_kwargs(value: str | dict[str, Any] | None, where: str) -> dict[str, Any]:
    """``--loss_kwargs`` as a mapping: a JSON object on the command line, a mapping in a recipe file."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: --loss_kwargs is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: --loss_kwargs must be a mapping of option names to values, got {value!r}")
    return value


@dataclass
class LossPlan:
    """``--loss_kwargs`` split by owner: the loss's own options and each enabled piece's, in wrapping order."""

    name: str
    options: dict[str, Any]
    pieces: list[tuple[PieceEntry, dict[str, Any]]]


def plan_loss(name: str, kwargs: Mapping[str, Any]) -> LossPlan:
    """Split ``--loss_kwargs`` between ``--loss name`` and the pieces (:data:`LOSS_PIECES`); a ``ValueError`` names
    an unknown option (with the accepted ones), an option the pipeline sets itself, or a piece's option given while
    the piece is off."""
    entry = loss_entry(name)
    for option in PIPELINE_OPTIONS:
        if option in kwargs:
            flag = "--base_model" if option == "model" else f"--{option}"
            raise ValueError(f"--loss_kwargs {option!r} is set by {flag}, not through --loss_kwargs")
    own = entry.options()
    owners = {key: piece for piece in LOSS_PIECES.values() for key in piece.options()}
    if unknown := sorted(set(kwargs) - set(own) - set(owners)):
        accepted = own + [key for piece in LOSS_PIECES.values() for key in piece.options()]
        raise ValueError(
            f"--loss_kwargs has unknown option(s) {unknown} for {entry.build.__name__} (--loss {name}); it accepts "
            f"{accepted}"
        )
    pieces = []
    for piece in LOSS_PIECES.values():
        options = {key: value for key, value in kwargs.items() if owners.get(key) is piece}
        if not piece.enabled(options):
            if options:
                raise ValueError(
                    f"--loss_kwargs {sorted(options)} only apply with {piece.switch} set ({piece.cls.__name__})"
                )
            continue
        if entry.scored:
            raise ValueError(
                f"--loss_kwargs {piece.switch}: {piece.cls.__name__} needs an in-batch loss; --loss {name} trains on "
                "scored pairs"
            )
        if piece.gte_loss_only and entry.config is None:
            raise ValueError(
                f"--loss_kwargs {piece.switch}: {piece.cls.__name__} filters the negatives of gte-st's own loss; use "
                f"--loss mse (--loss {name} is {entry.build.__name__})"
            )
        pieces.append((piece, options))
    return LossPlan(name, {key: value for key, value in kwargs.items() if key in own}, pieces)


def check_loss(name: str, kwargs: dict[str, Any], *, cached: bool, where: str) -> None:
    """Fail before any work when the loss options cannot build the loss: an unknown option (naming it and the
    options the loss has), an option the pipeline sets itself, or a value the loss or a piece refuses (checked by
    their config objects, without a model)."""
    try:
        entry = loss_entry(name)
        plan = plan_loss(name, kwargs)
        if cached and not entry.cacheable:
            raise ValueError(f"--loss {name} has no cached (GradCache) variant; leave --mini_batch_size unset")
        if entry.config is not None:
            entry.config(**plan.options).validate()
        for piece, options in plan.pieces:
            piece.config(**options).validate()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def check_matryoshka_dims(dims: Sequence[int] | None, *, where: str) -> None:
    """``--matryoshka_dims``: positive integers, largest first, no repeats (the order the saved model lists them)."""
    if not dims:
        return
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(f"{where}: --matryoshka_dims must be positive integers, got {list(dims)}")
    if any(a <= b for a, b in zip(dims, dims[1:])):
        raise ValueError(
            f"{where}: --matryoshka_dims must be listed largest first without repeats, e.g. 384 256 128 64; got "
            f"{' '.join(map(str, dims))}"
        )


def check_frozen_models(
    base_model: str, matryoshka_dims: Sequence[int] | None, kwargs: Mapping[str, Any], *, where: str
) -> None:
    """Checks against the base model's files, before any weights or data load: Matryoshka dimensions no larger than
    its embedding dimension, and a ``teacher`` / ``guide`` model given by path that shares its tokenizer (both embed
    the student's token ids). Models whose files cannot be read here (a Hub id offline) are checked when built."""
    from transformers import AutoConfig, AutoTokenizer

    if matryoshka_dims:
        try:
            dimension = AutoConfig.from_pretrained(base_model).hidden_size
        except Exception:  # noqa: BLE001 -- unreadable here: MatryoshkaLoss checks when it is built
            dimension = None
        if dimension is not None and matryoshka_dims[0] > dimension:
            raise ValueError(
                f"{where}: --matryoshka_dims {matryoshka_dims[0]} is larger than the {dimension}-d embeddings of "
                f"{base_model}"
            )
    frozen = {option: kwargs[option] for option in ("teacher", "guide") if isinstance(kwargs.get(option), str)}
    if not frozen:
        return
    try:
        vocabulary = AutoTokenizer.from_pretrained(base_model).get_vocab()
    except Exception:  # noqa: BLE001 -- checked when the loss is built
        return
    for option, path in frozen.items():
        try:
            other = AutoTokenizer.from_pretrained(path).get_vocab()
        except Exception as exc:  # noqa: BLE001
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"{where}: --loss_kwargs {option} {path!r}: cannot read its tokenizer ({first})"
            ) from None
        if other != vocabulary:
            raise ValueError(
                f"{where}: --loss_kwargs {option} {path!r} has another tokenizer than the base model {base_model} "
                f"(its vocabulary differs); the {option} embeds the student's token ids, so it must share them"
            )


def build_loss(
    model: SentenceTransformer,
    name: str = "mse",
    *,
    mini_batch_size: int | None = None,
    gather_across_devices: bool = False,
    matryoshka_dims: Sequence[int] | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """The loss of a stage: ``--loss name`` with its options, wrapped in the enabled pieces (innermost first), with
    gradient caching when ``mini_batch_size`` is set and in sentence-transformers' ``MatryoshkaLoss`` when
    ``matryoshka_dims`` are given."""
    entry = loss_entry(name)
    plan = plan_loss(name, kwargs)
    options = {**entry.defaults, **plan.options}
    if entry.scored:
        check_scored_pair_options(name, gather_across_devices=gather_across_devices)
    else:
        options["gather_across_devices"] = gather_across_devices
    if mini_batch_size is not None and not entry.cacheable:
        raise ValueError(f"--loss {name} has no cached (GradCache) variant; leave --mini_batch_size unset")
    if mini_batch_size is not None and entry.cached is not None and not plan.pieces:
        loss = entry.cached(model, mini_batch_size=mini_batch_size, **options)
    else:
        loss = entry.build(model, **options)
        for piece, piece_options in plan.pieces:
            loss = piece.cls(model, loss, **piece_options)
        if mini_batch_size is not None:
            loss = CachedLoss(model, loss, mini_batch_size=mini_batch_size)
    if matryoshka_dims:
        loss = MatryoshkaLoss(model, loss, list(matryoshka_dims))
    return loss


# What the replay batches of a stage train (--replay_objective): the stage's own loss, or distillation alone.
REPLAY_OBJECTIVES = ("loss", "distillation")


def build_replay_loss(
    model: SentenceTransformer,
    loss: torch.nn.Module,
    objective: str,
    *,
    distillation_weight: float,
    distillation_target: str = "similarities",
    mini_batch_size: int | None = None,
) -> torch.nn.Module:
    """The loss of a stage's replay batches: ``loss`` itself (``objective="loss"``), or (``"distillation"``)
    :class:`~gte_st.losses.SelfDistillationLoss` around :class:`~gte_st.losses.ZeroLoss` -- only the MSE between the
    student's in-batch cosine similarities and a frozen teacher's (``distillation_target="similarities"``), or between
    the normalised embeddings themselves (``"embeddings"``). The teacher is the one ``loss`` already holds
    (a stage with ``distillation_weight`` in its ``--loss_kwargs``), else a frozen copy of ``model`` as it is now
    (build this before a LoRA adapter is added). Gradient caching follows the stage's ``mini_batch_size``.

    Reason: a contrastive loss on general pairs moves the model on them as well (it learns their task again, with
    these batches' negatives); keeping the base model's similarities on general text holds what it knew there."""
    if objective not in REPLAY_OBJECTIVES:
        raise ValueError(f"replay objective must be one of {list(REPLAY_OBJECTIVES)}, got {objective!r}")
    if objective == "loss":
        return loss
    shared = next((m for m in loss.modules() if isinstance(m, SelfDistillationLoss)), None)
    replay = SelfDistillationLoss(
        model,
        ZeroLoss(model),
        distillation_weight=distillation_weight,
        distillation_target=distillation_target,
        teacher=shared and shared.teacher,
    )
    if shared is not None:
        replay.teacher_label = shared.teacher_label
    return CachedLoss(model, replay, mini_batch_size=mini_batch_size) if mini_batch_size is not None else replay


def describe_loss(loss: torch.nn.Module) -> dict[str, Any]:
    """The loss as a run records it: its composition as one name (``CachedLoss(SelfDistillationLoss(
    NormalizedMSELoss))``) and the options of every piece as one flat mapping (the ``--loss_kwargs`` keys, plus
    ``mini_batch_size`` and the Matryoshka options)."""
    names, config = [], {}
    while True:
        names.append(type(loss).__name__)
        config.update({key: value for key, value in loss.get_config_dict().items() if key != "loss"})
        if not isinstance(loss, (LossWrapper, CachedLoss, MatryoshkaLoss)):
            break
        loss = loss.loss
    name = names[-1]
    for outer in reversed(names[:-1]):
        name = f"{outer}({name})"
    return {"name": name, "config": config}


__all__ = [
    "GTE_DIRECTIONS",
    "LOSSES",
    "LOSS_PIECES",
    "LossEntry",
    "LossPlan",
    "PieceEntry",
    "REPLAY_OBJECTIVES",
    "build_loss",
    "build_replay_loss",
    "check_frozen_models",
    "check_loss",
    "check_matryoshka_dims",
    "check_scored_pair_options",
    "describe_loss",
    "loss_entry",
    "loss_help",
    "loss_kwargs_help",
    "parse_loss_kwargs",
    "plan_loss",
    "uses_scores",
]
