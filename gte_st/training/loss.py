"""The loss of a training stage, by name: built, or its options checked, before any data is read."""

from __future__ import annotations

import inspect
import json
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

GTE_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
LOSSES = ("mse", "gte", "mnrl", "cosent")
# Losses trained on scored pairs (anchor, positive, score) rather than on pairs with in-batch negatives.
SCORED_LOSSES = ("cosent",)
# Options the pipeline sets itself (from --mini_batch_size / --gather_across_devices), not via --loss_kwargs.
PIPELINE_OPTIONS = ("model", "mini_batch_size", "gather_across_devices")


def loss_class(name: str, cached: bool = False) -> type[torch.nn.Module]:
    """The loss class of ``--loss name`` (the GradCache variant when ``cached``)."""
    from sentence_transformers.sentence_transformer import losses as st_losses

    from gte_st import losses as gte_losses

    if name == "mse":
        return gte_losses.CachedNormalizedMSELoss if cached else gte_losses.NormalizedMSELoss
    if name in ("gte", "mnrl"):
        return st_losses.CachedMultipleNegativesRankingLoss if cached else st_losses.MultipleNegativesRankingLoss
    if name == "cosent":
        if cached:
            raise ValueError("--loss cosent has no cached (GradCache) variant; leave --mini_batch_size unset")
        return st_losses.CoSENTLoss
    raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")


def uses_scores(name: str) -> bool:
    """Whether ``--loss name`` trains on scored pairs (a ``score`` column) instead of in-batch negatives."""
    return name in SCORED_LOSSES


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


def loss_options(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``--loss name`` besides the pipeline's own: GTE's joint loss adds its four
    directions and the joint partition unless given."""
    options = dict(kwargs)
    if name == "gte":
        options.setdefault("directions", GTE_DIRECTIONS)
        options.setdefault("partition_mode", "joint")
    return options


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


def check_loss(name: str, kwargs: dict[str, Any], *, cached: bool, where: str) -> None:
    """Fail before any work when the loss options cannot build the loss: an unknown option (naming it and the
    options the loss has), an option the pipeline sets itself, or a value the loss refuses (gte-st's losses are
    built without a model to run their own checks)."""
    try:
        cls = loss_class(name, cached)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    for option in PIPELINE_OPTIONS:
        if option in kwargs:
            flag = "--base_model" if option == "model" else f"--{option}"
            raise ValueError(f"{where}: --loss_kwargs {option!r} is set by {flag}, not through --loss_kwargs")
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters if p != "self" and p not in PIPELINE_OPTIONS]
    if unknown := sorted(set(kwargs) - set(accepted) - set(PIPELINE_OPTIONS)):
        raise ValueError(
            f"{where}: --loss_kwargs has unknown option(s) {unknown} for {cls.__name__} (--loss {name}); "
            f"it accepts {accepted}"
        )
    if cls.__module__.startswith("gte_st."):
        # gte-st's losses check their values in __init__ and need no model for it; the cached variant checks the
        # model first, so the values shared with the uncached loss are checked through that one.
        plain = loss_class(name, cached=False)
        shared = {k: v for k, v in loss_options(name, kwargs).items() if k in inspect.signature(plain).parameters}
        try:
            plain(None, **shared)
        except ValueError as exc:
            raise ValueError(f"{where}: --loss_kwargs: {exc}") from None


def build_loss(
    model: SentenceTransformer,
    name: str = "mse",
    *,
    mini_batch_size: int | None = None,
    gather_across_devices: bool = False,
    **kwargs: Any,
) -> torch.nn.Module:
    """The loss of a stage: ``mse`` (NormalizedMSELoss), ``gte`` (4-direction joint MNRL), ``mnrl`` or ``cosent``
    (sentence-transformers' CoSENTLoss on scored pairs); the GradCache variant when ``mini_batch_size`` is set."""
    options = loss_options(name, kwargs)
    if uses_scores(name):
        check_scored_pair_options(name, gather_across_devices=gather_across_devices)
        return loss_class(name)(model, **options)
    options["gather_across_devices"] = gather_across_devices
    if mini_batch_size is not None:
        options["mini_batch_size"] = mini_batch_size
    return loss_class(name, cached=mini_batch_size is not None)(model, **options)


__all__ = [
    "GTE_DIRECTIONS",
    "LOSSES",
    "SCORED_LOSSES",
    "build_loss",
    "check_loss",
    "check_scored_pair_options",
    "loss_class",
    "parse_loss_kwargs",
    "uses_scores",
]
