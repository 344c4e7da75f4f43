"""LoRA adapters through ``peft`` on a sentence-transformers model: add, merge, save as an adapter, load again.

A low-rank adapter trains :math:`W' = W + \\frac{\\alpha}{r} B A` (``A``: r x d_in, ``B``: d_out x r, ``B`` starting
at zero, so training starts from the base model exactly) in place of each targeted weight ``W``, which stays frozen,
as does every other parameter of the model: only the adapter trains. Reason: an update of rank ``r`` cannot move the
model as far from its base as a full fine-tune ("LoRA learns less and forgets less", Biderman et al., 2024), and it
trains and stores a small fraction of the parameters.

The transformer of the model (``model[0].model``) is wrapped in peft's ``PeftModel`` (``peft.get_peft_model``), as
sentence-transformers itself did before ``SentenceTransformer.add_adapter``; that newer route goes through
transformers' peft integration, which transformers 5 only enables for peft >= 0.22. Either way the saved adapter is
peft's standard layout. After training the adapter is either

- merged into the weights (:func:`merge_lora`, peft's ``merge_and_unload``): the model is a plain transformer again
  and saves in the portable layout that stock ``SentenceTransformer`` loads without peft; or
- kept, and ``model.save(folder)`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` (naming the base
  model) beside the sentence-transformers configs: stock ``SentenceTransformer(folder)`` loads it where transformers'
  peft integration accepts the installed peft, and :func:`load_adapter` attaches it to its base model anywhere.

References:
    - Hu et al., *LoRA: Low-Rank Adaptation of Large Language Models*, 2021: https://arxiv.org/abs/2106.09685
    - Biderman et al., *LoRA Learns Less and Forgets Less*, 2024: https://arxiv.org/abs/2405.09673

Example::

    from gte_st.lora import add_lora, merge_lora

    add_lora(model, r=16)      # train as usual, with any gte-st loss
    merge_lora(model)          # then model.save(...) writes plain weights
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
INSTALL_HINT = "LoRA needs the peft package: pip install 'gte-st[lora]'"
# Which parameters trained before the adapter was added; merge_lora restores them (for a later full-training stage).
_TRAINABLE = "_gte_st_trainable_before_lora"


def check_peft() -> None:
    """Raise an ``ImportError`` saying how to install peft when it is missing."""
    if importlib.util.find_spec("peft") is None:
        raise ImportError(INSTALL_HINT)


def lora_config(
    r: int, lora_alpha: float | None = None, lora_dropout: float = 0.0, target_modules: Sequence[str] | None = None
) -> Any:
    """peft's ``LoraConfig`` for an encoder: rank ``r``, scale ``lora_alpha / r`` (default ``lora_alpha = r``: a scale
    of 1), dropout on the adapter's input, the modules to adapt (default: peft's choice for the architecture, e.g.
    ``query`` and ``value`` for BERT). Values are checked without a model."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"the LoRA rank must be an integer >= 1, got {r!r}")
    if lora_alpha is not None and not lora_alpha > 0:
        raise ValueError(f"lora_alpha must be > 0, got {lora_alpha}")
    if not 0 <= lora_dropout < 1:
        raise ValueError(f"lora_dropout must lie in [0, 1), got {lora_dropout}")
    check_peft()
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha if lora_alpha is not None else r,
        lora_dropout=lora_dropout,
        target_modules=list(target_modules) if target_modules else None,
        bias="none",
    )


def has_lora(model: SentenceTransformer) -> bool:
    """Whether ``model``'s transformer carries an adapter that is not merged yet."""
    if importlib.util.find_spec("peft") is None:
        return False
    from peft import PeftModel

    return isinstance(getattr(model[0], "model", None), PeftModel)


def add_lora(model: SentenceTransformer, config: Any = None, **kwargs: Any) -> None:
    """Wrap ``model``'s transformer with a fresh LoRA adapter (``config``, or :func:`lora_config` of ``kwargs``) and
    freeze every other parameter of the model: only the adapter trains. The model's output is unchanged until the
    adapter trains (``B = 0``)."""
    config = config if config is not None else lora_config(**kwargs)
    check_peft()
    from peft import get_peft_model

    if has_lora(model):
        raise ValueError("the model already carries a LoRA adapter; merge it (merge_lora) before adding another")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    try:
        model[0].model = get_peft_model(model[0].model, config)
    except ValueError as exc:  # peft: no default target modules for the architecture, an unknown module name
        raise ValueError(f"LoRA: {exc}") from None
    setattr(model, _TRAINABLE, trainable)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = "lora_" in name


def merge_lora(model: SentenceTransformer) -> None:
    """Merge the adapter into the weights (:math:`W \\leftarrow W + \\frac{\\alpha}{r} B A`, peft's
    ``merge_and_unload``): the transformer is a plain one again, with its base model's parameter names, and the
    parameters that trained before :func:`add_lora` train again."""
    if not has_lora(model):
        raise ValueError("the model carries no LoRA adapter to merge")
    model[0].model = model[0].model.merge_and_unload()
    trainable = set(getattr(model, _TRAINABLE, ()))
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name in trainable
    if hasattr(model, _TRAINABLE):
        delattr(model, _TRAINABLE)


def _adapter_folder(folder: str | Path) -> Path:
    """The folder of a saved model that holds its adapter files (the transformer's folder of the saved layout)."""
    folder = Path(folder)
    hits = sorted(folder.rglob(ADAPTER_CONFIG), key=lambda p: len(p.parts))
    if not hits or not (hits[0].parent / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder}: no {ADAPTER_CONFIG} with {ADAPTER_WEIGHTS} beside it (not a LoRA adapter)")
    return hits[0].parent


def load_lora_weights(model: SentenceTransformer, folder: str | Path) -> None:
    """Load the adapter weights saved in ``folder`` (a checkpoint of a LoRA stage) into ``model``'s adapter; every
    other weight stays as it is. Used to resume a LoRA stage."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = _adapter_folder(folder) / ADAPTER_WEIGHTS
    result = set_peft_model_state_dict(model[0].model, load_file(str(weights)))
    if unexpected := list(getattr(result, "unexpected_keys", []) or []):
        raise ValueError(f"{weights}: adapter weights {unexpected[:3]} do not fit the model's adapter")


def load_adapter(folder: str | Path, base_model: str | None = None, **kwargs: Any) -> SentenceTransformer:
    """A model saved with its adapter (``model.save`` before merging), rebuilt without transformers' peft
    integration: the base model named in the adapter's ``adapter_config.json`` (or ``base_model``) with the adapter
    attached (peft's ``PeftModel.from_pretrained``), then the saved model's own modules (pooling, normalisation),
    serving length and prompts. ``kwargs`` go to sentence-transformers' ``Transformer`` (e.g. ``model_kwargs``)."""
    check_peft()
    from peft import PeftModel
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.util import import_from_string

    folder = Path(folder)
    adapter = _adapter_folder(folder)
    name = base_model or json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf8"))["base_model_name_or_path"]
    settings = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf8"))
    transformer = Transformer(str(name), max_seq_length=settings.get("max_seq_length"), **kwargs)
    transformer.model = PeftModel.from_pretrained(transformer.model, str(adapter))
    modules = [transformer]
    for entry in json.loads((folder / "modules.json").read_text(encoding="utf8"))[1:]:
        modules.append(import_from_string(entry["type"]).load(str(folder / entry["path"])))
    config_file = folder / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text(encoding="utf8")) if config_file.is_file() else {}
    return SentenceTransformer(
        modules=modules,
        prompts=config.get("prompts") or None,
        default_prompt_name=config.get("default_prompt_name"),
        similarity_fn_name=config.get("similarity_fn_name"),
    )


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "add_lora",
    "check_peft",
    "has_lora",
    "load_adapter",
    "load_lora_weights",
    "lora_config",
    "merge_lora",
]
