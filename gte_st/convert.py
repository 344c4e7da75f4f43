"""Convert GTE checkpoints in the original remote-code layout into the native transformers ``gte`` layout.

``Alibaba-NLP/gte-base-en-v1.5``, ``gte-large-en-v1.5``, ``gte-multilingual-base`` and their fine-tunes were
published with ``model_type: "new"`` and an ``auto_map`` pointing at remote code (``Alibaba-NLP/new-impl``). Since
transformers 5.18 the architecture ships natively as ``GteModel`` (``model_type: "gte"``). This module rewrites such
a checkpoint into a native sentence-transformers directory **without importing or running any remote code**: it only
reads ``config.json``, the weight files (safetensors, or ``pytorch_model.bin`` with ``torch.load(weights_only=True)``)
and the sentence-transformers JSON files.

What changes:

* ``config.json`` -- every field of the original ``NewConfig`` is mapped or refused (:data:`FIELD_RULES`):
  ``rope_theta`` / ``rope_scaling`` become ``rope_parameters`` (fixed NTK scaling, ``{"type": "ntk", "factor": s}``,
  is rewritten exactly as linear scaling of the NTK base: ``theta' = theta * s``, ``factor' = s ** (2 / head_dim)``),
  ``layer_norm_type`` must be ``layer_norm``, ``position_embedding_type`` must be ``rope``,
  ``logn_attention_scale`` must be off; ``pack_qkv`` / ``unpad_inputs`` / ``use_memory_efficient_attention`` only
  select kernels or the weight packing and are dropped.
* weights -- ``encoder.layer.N`` -> ``layers.N``; ``attention.qkv_proj`` is split (dim 0) into
  ``self_attn.q_proj`` / ``k_proj`` / ``v_proj``; ``mlp.up_gate_proj`` into ``mlp.up_proj`` (first half) and
  ``mlp.gate_proj`` (second half); ``attn_ln`` -> ``post_attention_layernorm``; ``mlp_ln`` -> ``post_mlp_layernorm``;
  a ``new.`` prefix (task-head checkpoints) is removed; task heads (``pooler``, ``lm_head``, ``classifier``) are
  dropped. The same renaming transformers applies at load time (``conversion_mapping.py``, key ``"gte"``).
* sentence-transformers files -- ``modules.json``, ``1_Pooling`` (the checkpoint's own pooling, CLS for the
  gte-v1.5 / multilingual releases), ``2_Normalize``, prompts and the tokenizer are copied; ``trust_remote_code``
  is removed from ``sentence_bert_config.json``; the remote-code ``*.py`` files and ONNX/OpenVINO exports are not
  copied.

Example::

    from gte_st.convert import convert_checkpoint

    convert_checkpoint("path/to/gte-base-en-v1.5", "gte-base-en-v1.5-native")
    # then: SentenceTransformer("gte-base-en-v1.5-native")  -- no trust_remote_code
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gte_st.errors import GteStError
from gte_st.files import check_output_path, remove_leftovers, replace_directory, temporary_sibling

logger = logging.getLogger(__name__)

ORIGINAL_MODEL_TYPE = "new"
NATIVE_MODEL_TYPE = "gte"


class ConversionError(GteStError, ValueError):
    """A checkpoint cannot be converted: unknown architecture, a config field with no native equivalent, or a
    missing / unexpected / wrongly shaped weight. The message names the field or weight."""


def _copy(name: str) -> Callable[[Any, dict], dict]:
    return lambda value, config: {name: value}


def _drop(value: Any, config: dict) -> dict:
    return {}


def _require(field: str, expected: Any, why: str) -> Callable[[Any, dict], dict]:
    def rule(value: Any, config: dict) -> dict:
        if value != expected:
            raise ConversionError(f"config field {field!r} = {value!r} cannot be converted: {why}")
        return {}

    return rule


def _logn_clip(value: Any, config: dict) -> dict:
    if value and config.get("logn_attention_scale"):
        raise ConversionError(
            f"config field 'logn_attention_clip1' = {value!r} cannot be converted: native GteModel has no log-n "
            "attention scaling"
        )
    return {}


def rope_parameters(config: dict) -> dict[str, Any]:
    """The native ``rope_parameters`` for an original config's ``rope_theta`` + ``rope_scaling``.

    The original ``NTKScalingRotaryEmbedding`` (``rope_scaling = {"type": "ntk", "factor": s}``, no ``mixed_b``)
    builds, for every position, ``inv_freq_i = (theta * s) ** (-2i / d) / s ** (2 / d)`` with ``d`` the head
    dimension; that is exactly transformers' ``linear`` RoPE (``inv_freq / factor``) on base ``theta * s`` with
    ``factor = s ** (2 / d)``.
    """
    theta = float(config.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling")
    if scaling is None:
        return {"rope_type": "default", "rope_theta": theta}
    if not isinstance(scaling, dict):
        raise ConversionError(f"config field 'rope_scaling' = {scaling!r} cannot be converted: not a dict")
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind != "ntk":
        raise ConversionError(
            f"config field 'rope_scaling' = {scaling!r} cannot be converted: the original code only implements "
            "'ntk' scaling"
        )
    if scaling.get("mixed_b") is not None:
        raise ConversionError(
            f"config field 'rope_scaling' = {scaling!r} cannot be converted: mixed NTK scaling (mixed_b) has no "
            "native equivalent"
        )
    factor = float(scaling["factor"])
    if factor <= 1.0:
        raise ConversionError(
            f"config field 'rope_scaling' = {scaling!r} cannot be converted: an NTK factor <= 1 switches scaling on "
            "only past max_position_embeddings, which native RoPE cannot express"
        )
    head_dim = int(config["hidden_size"]) // int(config["num_attention_heads"])
    return {"rope_type": "linear", "rope_theta": theta * factor, "factor": factor ** (2 / head_dim)}


# Every field an original ``NewConfig`` (Alibaba-NLP/new-impl configuration.py) writes, and what becomes of it.
FIELD_RULES: dict[str, Callable[[Any, dict], dict]] = {
    **{
        name: _copy(name)
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "max_position_embeddings",
            "type_vocab_size",
            "initializer_range",
            "layer_norm_eps",
            "classifier_dropout",
        )
    },
    "rope_theta": _drop,  # folded into rope_parameters
    "rope_scaling": _drop,  # folded into rope_parameters
    "layer_norm_type": _require("layer_norm_type", "layer_norm", "native GteModel uses LayerNorm (no RMSNorm)"),
    "position_embedding_type": _require(
        "position_embedding_type", "rope", "native GteModel only has rotary position embeddings"
    ),
    "logn_attention_scale": _require("logn_attention_scale", False, "native GteModel has no log-n attention scaling"),
    "logn_attention_clip1": _logn_clip,
    "pack_qkv": _drop,  # only decides fused vs separate q/k/v weights, read by the weight conversion
    "unpad_inputs": _drop,  # an xformers execution choice; results are the same
    "use_memory_efficient_attention": _drop,  # an xformers kernel choice; results are the same
    # bookkeeping the native config writes for itself
    "model_type": _drop,
    "architectures": _drop,
    "auto_map": _drop,
    "_name_or_path": _drop,
    "transformers_version": _drop,
    "torch_dtype": _copy("dtype"),
}


def is_original_layout(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` dict describes a checkpoint in the original remote-code ("new") layout."""
    if config.get("model_type") == ORIGINAL_MODEL_TYPE:
        return True
    auto_map = config.get("auto_map") or {}
    return any(str(target).rsplit(".", 1)[-1] == "NewModel" for target in auto_map.values())


# Generic ``PretrainedConfig`` fields: token ids and labels carry over; the rest (output flags, generation
# settings of transformers 4.x configs, ...) do not change what an encoder computes and are dropped.
PASSTHROUGH_FIELDS = frozenset(
    {
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "sep_token_id",
        "id2label",
        "label2id",
        "problem_type",
        "tie_word_embeddings",
        "tokenizer_class",
        "finetuning_task",
        "dtype",
    }
)
INERT_FIELDS = frozenset(
    {
        "return_dict", "output_hidden_states", "output_attentions", "torchscript", "use_bfloat16",
        "tf_legacy_loss", "pruned_heads", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder",
        "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder", "max_length", "min_length",
        "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k",
        "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
        "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
        "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
        "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "prefix",
        "decoder_start_token_id", "task_specific_params", "gradient_checkpointing", "use_cache",
    }
)  # fmt: skip


def translate_config(config: dict[str, Any]) -> dict[str, Any]:
    """The native ``GteConfig`` fields for an original ``config.json`` dict.

    Raises:
        ConversionError: the config is not an original GTE config, or a field has no native equivalent.
    """
    if not is_original_layout(config):
        raise ConversionError(
            f"not an original GTE checkpoint: model_type is {config.get('model_type')!r} (expected "
            f"{ORIGINAL_MODEL_TYPE!r} with an auto_map to NewModel)"
        )
    architectures = config.get("architectures") or ["NewModel"]
    unknown_arch = [a for a in architectures if not re.fullmatch(r"New(Model|For\w+)", a)]
    if unknown_arch:
        raise ConversionError(f"unknown architecture {unknown_arch[0]!r} (expected NewModel or NewFor...)")
    for name in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"):
        if name not in config:
            raise ConversionError(f"config field {name!r} is missing")
    native: dict[str, Any] = {}
    for name, value in config.items():
        rule = FIELD_RULES.get(name)
        if rule is not None:
            native.update(rule(value, config))
        elif name in PASSTHROUGH_FIELDS:
            native[name] = value
        elif name not in INERT_FIELDS:
            raise ConversionError(
                f"config field {name!r} = {value!r} is not part of the original GTE configuration and has no native "
                "equivalent"
            )
    native["rope_parameters"] = rope_parameters(config)
    native.setdefault("type_vocab_size", 1)
    native.setdefault("max_position_embeddings", 2048)
    native.setdefault("hidden_act", "gelu")
    native.setdefault("attention_probs_dropout_prob", 0.0)
    native.setdefault("layer_norm_eps", 1e-12)
    native.setdefault("pad_token_id", None)  # the original NewConfig sets none (the native default is 1)
    return native


# (original name pattern, native name template, chunks): chunks > 1 splits the tensor along dim 0.
_LAYER_RULES: list[tuple[str, list[str]]] = [
    (r"attention\.qkv_proj\.(weight|bias)", ["self_attn.q_proj.{0}", "self_attn.k_proj.{0}", "self_attn.v_proj.{0}"]),
    (r"attention\.([qkvo])_proj\.(weight|bias)", ["self_attn.{0}_proj.{1}"]),
    (r"mlp\.up_gate_proj\.weight", ["mlp.up_proj.weight", "mlp.gate_proj.weight"]),
    (r"mlp\.down_proj\.(weight|bias)", ["mlp.down_proj.{0}"]),
    (r"attn_ln\.(weight|bias)", ["post_attention_layernorm.{0}"]),
    (r"mlp_ln\.(weight|bias)", ["post_mlp_layernorm.{0}"]),
]
_EMBEDDING_KEYS = (
    "embeddings.word_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
)
_HEAD_PREFIXES = ("pooler.", "lm_head.", "classifier.")


def convert_state_dict(state_dict: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Rename / split the weights of an original checkpoint to the native ``GteModel`` names.

    Returns:
        ``(native_state_dict, dropped)``: the native tensors and the names of the task-head weights left out.

    Raises:
        ConversionError: a weight name the original architecture does not have.
    """
    native: dict[str, Any] = {}
    dropped: list[str] = []
    for key, tensor in state_dict.items():
        name = key.removeprefix(f"{ORIGINAL_MODEL_TYPE}.")
        if name.startswith(_HEAD_PREFIXES):
            dropped.append(key)
            continue
        if name in _EMBEDDING_KEYS:
            native[name] = tensor
            continue
        if name == "embeddings.position_ids" or name.endswith((".inv_freq", ".cos_cached", ".sin_cached")):
            dropped.append(key)  # non-persistent buffers some exports saved anyway
            continue
        match = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", name)
        targets = None
        if match:
            layer, rest = match.groups()
            for pattern, templates in _LAYER_RULES:
                m = re.fullmatch(pattern, rest)
                if m:
                    targets = [f"layers.{layer}." + t.format(*m.groups()) for t in templates]
                    break
        if targets is None:
            raise ConversionError(f"unexpected weight {key!r}: not part of the original GTE architecture")
        if len(targets) == 1:
            native[targets[0]] = tensor
            continue
        if tensor.shape[0] % len(targets):
            raise ConversionError(
                f"weight {key!r} has shape {tuple(tensor.shape)}: its first dimension does not split into "
                f"{len(targets)} equal parts"
            )
        for target, part in zip(targets, tensor.chunk(len(targets), dim=0), strict=True):
            native[target] = part.contiguous()
    return native, dropped


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def load_original_weights(src: Path) -> dict[str, Any]:
    """All tensors of a checkpoint directory: ``model.safetensors``, a sharded safetensors index, or
    ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``, which runs no code)."""
    from safetensors.torch import load_file

    if (src / "model.safetensors").is_file():
        return load_file(str(src / "model.safetensors"))
    if (src / "model.safetensors.index.json").is_file():
        index = _read_json(src / "model.safetensors.index.json")
        tensors: dict[str, Any] = {}
        for shard in sorted(set(index["weight_map"].values())):
            tensors.update(load_file(str(src / shard)))
        return tensors
    if (src / "pytorch_model.bin").is_file():
        import torch

        return torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ConversionError(f"{src}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _check_weights(native: dict[str, Any], expected: dict[str, Any]) -> None:
    missing = sorted(set(expected) - set(native))
    if missing:
        raise ConversionError(f"missing weight {missing[0]!r} ({len(missing)} missing in all)")
    unexpected = sorted(set(native) - set(expected))
    if unexpected:
        raise ConversionError(f"unexpected weight {unexpected[0]!r} for this configuration")
    for name, tensor in native.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ConversionError(
                f"weight {name!r} has shape {tuple(tensor.shape)}, the configuration expects "
                f"{tuple(expected[name].shape)}"
            )


# Files of the source that are not copied: the config and weights are rewritten, the remote code is never used,
# exports of the old graph are not carried over.
_SKIPPED = re.compile(
    r"(config\.json|model\.safetensors(\.index\.json)?|model-\d+-of-\d+\.safetensors|pytorch_model.*\.bin|"
    r".*\.py|README\.md|\.gitattributes|(onnx|openvino)/.*|\.cache/.*)"
)
_REMOTE_CODE_KEYS = ("trust_remote_code",)


def _copy_sentence_transformers_files(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*")):
        relative = path.relative_to(src).as_posix()
        if path.is_dir() or _SKIPPED.fullmatch(relative):
            continue
        target = dst / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    sbert = dst / "sentence_bert_config.json"
    if sbert.is_file():
        config = _read_json(sbert)
        sections = ("model_args", "tokenizer_args", "config_args", "model_kwargs", "processor_kwargs", "config_kwargs")
        for section in sections:
            if isinstance(config.get(section), dict):
                for key in _REMOTE_CODE_KEYS:
                    config[section].pop(key, None)
        _write_json(sbert, config)
    modules = dst / "modules.json"
    if modules.is_file():
        for entry in _read_json(modules):
            if not str(entry.get("type", "")).startswith("sentence_transformers."):
                raise ConversionError(
                    f"modules.json module {entry.get('name')!r} has type {entry.get('type')!r}: only stock "
                    "sentence-transformers modules can be carried over without remote code"
                )
    else:
        logger.warning(f"{src}: no modules.json; the converted directory has no recorded pooling (mean by default)")


def resolve_source(src: str | Path, *, revision: str | None = None, token: str | bool | None = None) -> Path:
    """A local directory for ``src``: the directory itself, or a snapshot of the Hub repository ``src`` (only the
    config, weights, tokenizer and sentence-transformers files; the remote code is not downloaded)."""
    local = Path(src).expanduser()
    if local.is_dir():
        return local
    if local.exists() or str(src).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{src} is not a checkpoint directory")
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            str(src), revision=revision, token=token, ignore_patterns=["*.py", "onnx/*", "openvino/*", "*.onnx"]
        )
    )


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a checkpoint in the original GTE remote-code layout into a native sentence-transformers directory.

    Args:
        src: A local checkpoint directory, or a Hub repository id (downloaded with ``huggingface_hub``).
        dst: The directory to write (``config.json`` with ``model_type: gte``, ``model.safetensors`` with native
            weight names, the checkpoint's sentence-transformers and tokenizer files).
        revision: Hub revision of ``src`` (ignored for a local directory).
        token: Hub token for a private ``src``.
        overwrite: Replace an existing non-empty ``dst``.

    Returns:
        ``dst`` as a ``Path``. It loads with plain ``SentenceTransformer(dst)`` or ``AutoModel.from_pretrained(dst)``
        on transformers >= 5.18, without ``trust_remote_code``.

    Raises:
        ConversionError: unknown architecture, unmappable config field, missing / unexpected / mis-shaped weight.
        FileNotFoundError: ``src`` does not exist; ``FileExistsError``: ``dst`` is not empty.
    """
    import torch
    from transformers import GteConfig, GteModel

    out = Path(dst).expanduser()
    # The output never overlaps the source (converting into the source, or into a folder holding it, would delete
    # the files being converted) and an existing output is kept unless replacing it was asked for: both before work.
    check_output_path(out, {"source checkpoint": Path(src).expanduser()}, option="DST")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    source = resolve_source(src, revision=revision, token=token)
    check_output_path(out, {"source checkpoint": source}, option="DST")
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} has no config.json")
    original = _read_json(source / "config.json")
    native_config = GteConfig(**translate_config(original))
    weights, dropped = convert_state_dict(load_original_weights(source))
    if dropped:
        logger.info(f"{src}: left out {len(dropped)} task-head/buffer tensors: {', '.join(dropped[:4])} ...")

    with torch.device("meta"):
        expected = GteModel(native_config).state_dict()
    _check_weights(weights, expected)

    # Built complete in a temporary sibling, then swapped in: DST is always absent, the old or the new directory.
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out.parent, of=out.name)
    tmp = temporary_sibling(out, "partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        native_config.architectures = ["GteModel"]
        native_config.save_pretrained(tmp)
        from safetensors.torch import save_file

        save_file(
            {k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"}
        )
        _copy_sentence_transformers_files(source, tmp)
        replace_directory(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


__all__ = [
    "FIELD_RULES",
    "INERT_FIELDS",
    "PASSTHROUGH_FIELDS",
    "ConversionError",
    "convert_checkpoint",
    "convert_state_dict",
    "is_original_layout",
    "load_original_weights",
    "resolve_source",
    "rope_parameters",
    "translate_config",
]
