"""The fast encode path: token-length-sorted batches, and bf16 where it is the faster path on the CPU at hand.

:func:`encode` returns the same thing as ``model.encode(texts, normalize_embeddings=True)`` -- float32, L2-normalised
rows in input order -- but

* sorts the texts by their *token* length (stock ``encode`` sorts by character length), so every batch is padded to
  nearly the length of its own texts, and packs short texts into larger batches under the same token budget;
* runs the model in bf16 where that is faster: on a bf16 copy of the model (``"bf16"``; made on the first call and
  kept while the model's weights are unchanged, the model itself is not modified, so threads may share it), or under
  ``torch.autocast`` (``"bf16-autocast"``); the final normalisation is done in float32. ``precision="auto"`` picks
  fp32, the bf16 copy or autocast by measurement: on a CPU with native bf16 (AMX / AVX512-BF16) the three are timed
  once per model shape and CPU on one short batch, interleaved, and the fastest is kept on disk
  (:func:`calibrated_precision`, :mod:`gte_st.calibration`), because the ranking differs between CPUs (on the AMX hosts of
  docs/benchmarks.md the two bf16 paths were level, on an AVX512-BF16 CPU without AMX autocast led); the bf16 matmuls are the gain, not the batching. A bf16 path is only chosen when its
  embeddings keep a cosine of at least 0.99 with fp32's on the calibration batch. Without native bf16 (or under an
  ``ONEDNN_MAX_CPU_ISA`` limit below it) "auto" is fp32; on a GPU, bf16 where supported.

The same batching serves exported artifacts: pass a model loaded with :func:`gte_st.export.load_exported` (or
sentence-transformers' ``backend="onnx"`` / ``"openvino"``); the precision of those is the artifact's, so
``precision`` only applies to torch models. :func:`encode` takes a loaded model: loading a model directory for a
backend is the loaders' job (:func:`gte_st.export.load_model_dir`).

``compile=True`` runs a copy of the model's transformer under ``torch.compile`` (inductor, dynamic shapes, weights
frozen into the graph so oneDNN fuses bias and GELU into the matmuls): a one-off compile of about a minute on a
2-core CPU, then about 15 % more throughput on the bf16 path (docs/benchmarks.md, serving). The compiled copy is kept
for the model while its weights are unchanged, so repeated calls (index chunks, queries) compile once.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import statistics
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tokenizers
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import batch_to_device
from tqdm.autonotebook import tqdm

from gte_st.calibration import interleaved_times, paired_ratios, read_decision, write_decision
from gte_st.hardware import cpu_key, cpu_supports_bf16, describe_cpu
from gte_st.registry import PRECISIONS

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "bf16-autocast"]


BF16_MIN_COSINE = 0.99  # a bf16 path whose embeddings differ more from fp32's than this is never chosen by "auto"
_AUTO_CHOICES = ("fp32", "bf16", "bf16-autocast")
_DECISIONS: dict[str, str] = {}
_CALIBRATION_LOCK = threading.Lock()


def check_precision(precision: str) -> str:
    """``precision`` when it is a registered encode precision (:data:`gte_st.registry.PRECISIONS`), else a
    ``ValueError`` naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS.names()))}, got {precision!r}")
    return precision


def resolve_precision(precision: str, model: SentenceTransformer) -> Literal["fp32", "bf16", "bf16-autocast"]:
    """Turn ``"auto"`` into the precision :func:`encode` runs ``model`` in; validate explicit values.

    ``"auto"`` on a CPU: ``"fp32"`` where bf16 is not native (no AVX512-BF16 / AMX, or an instruction-set limit
    below it, :func:`gte_st.hardware.cpu_supports_bf16`), else the fastest of fp32, bf16 weight copies and bf16
    autocast as measured for this model's shape on this CPU (:func:`calibrated_precision`). On a GPU: ``"bf16"``
    where supported, else ``"fp32"``."""
    check_precision(precision)
    if precision != "auto":
        return precision  # type: ignore[return-value]
    device = model.device
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and cpu_supports_bf16():
        return calibrated_precision(model)  # type: ignore[return-value]
    return "fp32"


def model_shape(model: SentenceTransformer) -> dict[str, Any]:
    """What the speed of a model's forward pass depends on besides the hardware: its module types, the
    transformer's architecture (type, sizes, attention implementation) and its parameter count -- not its
    weights, so that a fine-tuned model shares its base model's calibration."""
    shape: dict[str, Any] = {
        "modules": [type(module).__name__ for module in model],
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    if config is not None:
        for name in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "hidden_act", "_attn_implementation"):  # fmt: skip
            shape[name.lstrip("_")] = getattr(config, name, None)
    return shape


def precision_key(model: SentenceTransformer) -> dict[str, Any]:
    """The key of a model's precision calibration: the CPU (:func:`gte_st.hardware.cpu_key`), torch's version and
    the model's shape (:func:`model_shape`)."""
    return {"cpu": cpu_key(), "torch": torch.__version__, "model": model_shape(model)}


def calibrated_precision(model: SentenceTransformer) -> str:
    """The fastest of ``"fp32"``, ``"bf16"`` and ``"bf16-autocast"`` for ``model``'s shape on this CPU: read from
    the calibration cache (:mod:`gte_st.calibration`), else measured now (:func:`calibrate_precision`, about a
    second for a MiniLM-size model) and stored. Logged at INFO once per process and key."""
    key = precision_key(model)
    memo = json.dumps(key, sort_keys=True, default=str)
    if memo in _DECISIONS:
        return _DECISIONS[memo]
    with _CALIBRATION_LOCK:
        if memo in _DECISIONS:
            return _DECISIONS[memo]
        record = read_decision("precision", key)
        where = "cached"
        if record is None or record.get("choice") not in _AUTO_CHOICES or "time_vs_fp32" not in record:
            record = calibrate_precision(model)
            path = write_decision("precision", key, record)
            where = f"measured now, stored in {path}" if path else "measured now"
        logger.info(
            f"precision auto: {record['choice']} on {describe_cpu()} for this {key['model'].get('model_type') or ''}"
            f" model ({where}; time per {record['shape'][0]}x{record['shape'][1]} batch relative to fp32: "
            + ", ".join(f"{name} {ratio}" for name, ratio in record["time_vs_fp32"].items())
            + ")"
        )
        _DECISIONS[memo] = record["choice"]
        return record["choice"]


def _calibration_features(model: SentenceTransformer, rows: int, length: int) -> dict[str, torch.Tensor]:
    """A ``rows x length`` batch of the model's own tokenizer output for seeded random words of its vocabulary."""
    tokenizer = model.tokenizer
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2]
    generator = np.random.default_rng(0)
    texts = [" ".join(generator.choice(words, size=length)) for _ in range(rows)] if words else ["a " * length] * rows
    features = model.preprocess(texts)
    return {k: v[:, :length] if isinstance(v, torch.Tensor) and v.dim() == 2 else v for k, v in features.items()}


def calibrate_precision(
    model: SentenceTransformer, *, rows: int = 8, length: int = 128, budget_s: float = 1.5
) -> dict[str, Any]:
    """Time ``model``'s forward pass in fp32, on its bf16 copy and under bf16 autocast on one ``rows x length``
    batch (interleaved rounds: :func:`gte_st.calibration.interleaved_times`) and return the record
    :func:`calibrated_precision` stores: ``choice`` (the fastest by the median of its per-round time relative to
    fp32, :func:`gte_st.calibration.paired_ratios`, among the paths whose embeddings keep a cosine of at least
    :data:`BF16_MIN_COSINE` with fp32's; fp32 unless a bf16 path takes at most 97 % of its time), ``time_vs_fp32``
    and median ``ms`` per path, ``min_cosine`` per bf16 path, the ``rounds`` and the batch ``shape``."""
    length = max(8, min(length, model.max_seq_length or length))
    features = batch_to_device(_calibration_features(model, rows, length), model.device)
    outputs: dict[str, torch.Tensor] = {}

    def run(resolved: str) -> Callable[[], None]:
        runner = _serving_copy(model, resolved, False)

        def call() -> None:
            with (
                torch.inference_mode(),
                torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=resolved == "bf16-autocast"),
            ):
                embedding = runner(dict(features))["sentence_embedding"].float()
            outputs[resolved] = torch.nn.functional.normalize(embedding, p=2, dim=1)

        return call

    was_training = model.training
    model.eval()
    try:
        paths = {resolved: run(resolved) for resolved in _AUTO_CHOICES}
        for call in paths.values():  # warm-up: kernels, allocators (the bf16 copy was made above)
            call()
        times = interleaved_times(paths, budget_s=budget_s)
    finally:
        model.train(was_training)
    ratios = paired_ratios(times, "fp32")
    cosines = {name: round(float((outputs[name] * outputs["fp32"]).sum(1).min()), 5) for name in _AUTO_CHOICES[1:]}
    allowed = ["fp32"] + [name for name in _AUTO_CHOICES[1:] if cosines[name] >= BF16_MIN_COSINE]
    fastest = min(allowed, key=ratios.__getitem__)
    choice = fastest if ratios[fastest] <= 0.97 else "fp32"
    return {
        "choice": choice,
        "time_vs_fp32": {name: round(value, 3) for name, value in ratios.items()},
        "ms": {name: round(1000 * statistics.median(values), 2) for name, values in times.items()},
        "rounds": len(times["fp32"]),
        "min_cosine": cosines,
        "shape": [int(features["input_ids"].shape[0]), int(features["input_ids"].shape[1])],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


_COUNTING_TOKENIZERS: weakref.WeakKeyDictionary[object, tuple[int, tokenizers.Tokenizer, int]] = (
    weakref.WeakKeyDictionary()
)

# How many characters of a text are tokenised at most: CAP_FACTOR x max_seq_length x (the vocabulary's longest token
# + 1). The max_seq_length tokens a model keeps never span more than max_seq_length x (longest token + 1 separator)
# characters of ordinary text; the factor leaves room for characters that make no token (runs of spaces, control
# characters), so that one try nearly always suffices. Tokenising the rest of a long text costs time and memory
# (gigabytes for a 20 MB line) only for truncation to drop it. The cap never changes a result: a text is cut only at
# a space that follows a non-space (where every tokenizer's pre-tokenisation splits, so the tokens before the cut are
# the whole text's first tokens), and the cut is kept only if it still makes max_seq_length tokens; otherwise the cap
# doubles, up to the whole text.
CAP_FACTOR = 4


def _counting_tokenizer(tokenizer) -> tuple[tokenizers.Tokenizer, int]:
    """A private copy of ``tokenizer``'s Rust backend with padding and truncation off, and the length in characters
    of its longest token; made once per tokenizer and again when tokens are added to it (its vocabulary size, added
    tokens included, is the cache key's check).

    A copy, because transformers leaves the padding / truncation of the last call set on the shared backend (and
    sets it again on every call, so changing it there would race with a concurrent ``preprocess``)."""
    shared = tokenizer.backend_tokenizer
    size = shared.get_vocab_size(with_added_tokens=True)
    cached = _COUNTING_TOKENIZERS.get(tokenizer)
    if cached is None or cached[0] != size:
        backend = copy.deepcopy(shared)
        backend.no_padding()
        backend.no_truncation()
        longest = max((len(token) for token in backend.get_vocab(with_added_tokens=True)), default=1)
        cached = _COUNTING_TOKENIZERS[tokenizer] = (size, backend, longest)
    return cached[1], cached[2]


def unknown_token_share(tokenizer, texts: Sequence[str]) -> float | None:
    """The share of ``tokenizer``'s unknown token (``[UNK]``) among the tokens of ``texts`` (special tokens not
    counted), by the same padding- and truncation-free copy of the Rust tokenizer that orders :func:`encode`'s
    batches. ``None`` when it cannot be measured: a slow tokenizer, one without an unknown token (byte-level BPE
    never produces one), or texts without tokens."""
    unk_id = getattr(tokenizer, "unk_token_id", None)
    if unk_id is None or not getattr(tokenizer, "is_fast", False):
        return None
    backend, _ = _counting_tokenizer(tokenizer)
    encodings = backend.encode_batch_fast(list(texts), add_special_tokens=False)
    total = sum(len(e.ids) for e in encodings)
    return sum(e.ids.count(unk_id) for e in encodings) / total if total else None


_SPACE_BEFORE_NON_SPACE = re.compile(r" \S")  # searched in the reversed window: a space that follows a non-space


def _cut(text: str, cap: int) -> int | None:
    """The last position in ``text[cap // 2 : cap + 1]`` holding a space that follows a non-space, or None (searched
    from the end of the window, in C: a window of spaces costs no Python loop)."""
    low, high = cap // 2, min(cap, len(text) - 1)
    match = _SPACE_BEFORE_NON_SPACE.search(text[low : high + 1][::-1])
    return None if match is None else high - match.start()


def cap_texts(
    backend: tokenizers.Tokenizer, texts: Sequence[str], max_length: int, cap: int
) -> tuple[list[str], list[int]]:
    """Each text cut to a prefix that tokenises to the same first ``max_length`` tokens as the whole text (see
    :data:`CAP_FACTOR`), and its token count (without special tokens) truncated to ``max_length``.

    Args:
        backend: A Rust tokenizer without padding or truncation.
        texts: The texts.
        max_length: The number of tokens that must survive the cut.
        cap: The first number of characters to try.
    """
    out = list(texts)
    lengths = [0] * len(out)
    caps = [cap] * len(out)
    todo = list(range(len(out)))
    while todo:
        candidates = []
        for i in todo:
            text = texts[i]
            while caps[i] < len(text) and (cut := _cut(text, caps[i])) is None:
                caps[i] *= 2  # no word boundary in this window: widen it
            out[i] = text[:cut] if caps[i] < len(text) else text
            candidates.append(i)
        encodings = backend.encode_batch_fast([out[i] for i in candidates], add_special_tokens=False)
        todo = []
        for i, encoding in zip(candidates, encodings):
            lengths[i] = min(len(encoding), max_length)
            if len(encoding) < max_length and len(out[i]) < len(texts[i]):
                caps[i] *= 2  # too few tokens before the cut (e.g. a long run of spaces): try a longer prefix
                todo.append(i)
    return out, lengths


def _capped(model: SentenceTransformer, texts: Sequence[str], prompt: str = "") -> tuple[list[str], np.ndarray]:
    """The texts as :func:`encode` tokenises them (cut by :func:`cap_texts`; the cut is measured with ``prompt``
    prepended, which ``preprocess`` prepends too) and their token counts with the prompt, truncated to the model's
    max length, used to order the texts; counts are characters for a tokenizer without a Rust backend (uncut).

    Counted by the Rust tokenizer directly (``encode_batch_fast``: no offsets, no Python lists of ids), since this
    pass comes on top of the batches' own tokenisation."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        return list(texts), np.array([len(prompt) + len(t) for t in texts])
    max_length = model.max_seq_length or tokenizer.model_max_length
    backend, longest = _counting_tokenizer(tokenizer)
    cap = max(CAP_FACTOR * max_length * (longest + 1), 2 * len(prompt) + 2)  # a cut never falls in the prompt
    prompted, lengths = cap_texts(backend, [prompt + t for t in texts], max_length, cap)
    return [t[len(prompt) :] for t in prompted], np.array(lengths, dtype=np.int64)


def _token_lengths(model: SentenceTransformer, texts: Sequence[str]) -> np.ndarray:
    """Token counts (truncated to the model's max length) used to order the texts; falls back to characters."""
    return _capped(model, texts)[1]


# Batches of short texts grow past ``batch_size`` (up to MAX_BATCH_GROWTH times as many rows) while their padded
# token count stays within ``batch_size * TOKENS_PER_ROW``: the work of a full batch of 128-token texts. Reason: a
# batch's cost is its padded tokens, and a batch of short texts at ``batch_size`` rows leaves the cores idle between
# calls; the growth is capped so that memory per call stays bounded whatever the lengths.
TOKENS_PER_ROW = 128
MAX_BATCH_GROWTH = 4


def _batches(lengths_sorted: np.ndarray, batch_size: int, token_budget: int) -> list[tuple[int, int]]:
    """Split a descending-length order into [start, end) batches of at least ``batch_size`` rows, growing shorter
    batches up to ``MAX_BATCH_GROWTH`` x ``batch_size`` while ``rows * longest`` stays within ``token_budget``."""
    spans = []
    start, n = 0, len(lengths_sorted)
    while start < n:
        longest = max(int(lengths_sorted[start]) + 2, 1)  # + [CLS] and [SEP]
        rows = max(batch_size, min(MAX_BATCH_GROWTH * batch_size, token_budget // longest))
        end = min(n, start + rows)
        spans.append((start, end))
        start = end
    return spans


_SERVING_COPIES: weakref.WeakKeyDictionary[
    SentenceTransformer, dict[tuple[str, bool], tuple[tuple, SentenceTransformer]]
] = weakref.WeakKeyDictionary()


def _weights_key(model: SentenceTransformer) -> tuple:
    """What identifies the current weights of ``model``: each parameter's storage, version counter and the sum of 64
    of its elements. The samples are needed because not every update bumps the version counter (fused AdamW, the
    Trainer's default optimizer, does not); a dense training step changes every sampled element."""
    params = list(model.parameters())
    with torch.no_grad():
        samples = torch.stack([p.detach().reshape(-1)[:: max(1, p.numel() // 64)].float().sum() for p in params])
    return tuple((p.data_ptr(), p._version) for p in params), tuple(samples.tolist())


def _serving_copy(model: SentenceTransformer, resolved: str, compile: bool) -> SentenceTransformer:
    """The model :func:`encode` runs for ``model``: itself (fp32 / autocast, eager), or a copy with bf16 weights
    (``resolved == "bf16"``) and/or a transformer under ``torch.compile(dynamic=True)`` (``compile``).

    Copies are cached per model and reused while none of its weights has changed (:func:`_weights_key`). Running a
    copy rather than swapping bf16 tensors into ``model`` leaves ``model`` untouched, so concurrent ``encode`` calls
    (threads of a server) are safe, and the weights are converted once rather than per call."""
    if resolved != "bf16" and not compile:
        return model
    key = _weights_key(model)
    copies = _SERVING_COPIES.setdefault(model, {})
    cached = copies.get((resolved, compile))
    if cached is not None and cached[0] == key:
        return cached[1]
    memo: dict[int, object] = {}
    if resolved == "bf16":  # copy each weight straight to bf16: no transient second fp32 copy of the model
        memo = {
            id(p): torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False)
            for p in model.parameters()
            if p.is_floating_point()
        }
    serving = copy.deepcopy(model, memo).eval()
    if resolved == "bf16":
        serving.to(torch.bfloat16)  # floating-point buffers
    if compile:
        transformer = serving[0]
        if not hasattr(transformer, "model") or not isinstance(transformer.model, torch.nn.Module):
            raise ValueError(f"compile=True needs a transformer first module, got {type(transformer).__name__}")
        transformer.model = torch.compile(transformer.model, dynamic=True)
    copies[(resolved, compile)] = (key, serving)
    return serving


def check_loaded(model: SentenceTransformer) -> SentenceTransformer:
    """``model`` itself when it is a loaded model; a clear error for a path (load it first)."""
    if isinstance(model, (str, Path)):
        raise TypeError(
            f"encode takes a loaded model, got the path {str(model)!r}: load it first, e.g. SentenceTransformer(path) "
            "or gte_st.export.load_model_dir(path, backend='onnx')"
        )
    return model


def full_dimension(model: SentenceTransformer) -> int | None:
    """The model's embedding dimension before any truncation (sentence-transformers' ``get_embedding_dimension``
    reports the truncated one when the model has a ``truncate_dim``)."""
    untruncated = getattr(model, "_get_untruncated_embedding_dimension", None)
    return untruncated() if untruncated is not None else model.get_embedding_dimension()


def output_dimension(model: SentenceTransformer, truncate_dim: int | None = None) -> int | None:
    """The dimension :func:`encode` returns: ``truncate_dim`` (default the model's own ``truncate_dim``, as in
    sentence-transformers), checked to be a positive integer no larger than the model's embedding dimension, else
    the model's full dimension (``None`` when the model does not know it)."""
    full = full_dimension(model)
    if truncate_dim is None:
        truncate_dim = getattr(model, "truncate_dim", None)
    if truncate_dim is None:
        return full
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int) or truncate_dim < 1:
        raise ValueError(f"truncate_dim must be a positive integer, got {truncate_dim!r}")
    if full is not None and truncate_dim > full:
        raise ValueError(f"truncate_dim {truncate_dim} is larger than the model's {full}-d embeddings")
    return truncate_dim


def encode(
    model: SentenceTransformer,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    precision: Precision = "auto",
    show_progress_bar: bool = False,
    prompt: str | None = None,
    prompt_name: str | None = None,
    compile: bool = False,
    truncate_dim: int | None = None,
) -> np.ndarray:
    """Encode ``texts`` into float32, L2-normalised embeddings, in input order.

    Args:
        model: A loaded SentenceTransformer: torch, or ONNX Runtime / OpenVINO as loaded by
            :func:`gte_st.export.load_exported` or sentence-transformers' backends.
        texts: The texts to embed.
        batch_size: Rows per batch for the longest texts; batches of short texts grow up to ``MAX_BATCH_GROWTH`` x
            this while their token count stays below ``batch_size * TOKENS_PER_ROW``.
        precision: ``"auto"`` (the fastest of the three below on this CPU, measured once per model shape and CPU:
            :func:`resolve_precision`; bf16 on bf16-capable GPUs), ``"fp32"``, ``"bf16"`` (bf16 weight copies, all
            ops in bf16) or ``"bf16-autocast"``. Torch models only (exported artifacts run at their own precision).
        show_progress_bar: Show a progress bar over batches.
        prompt: Text prepended to every input (as in ``model.encode(prompt=...)``).
        prompt_name: Name of a prompt in ``model.prompts`` (e.g. ``"query"``); ignored when ``prompt`` is given.
        compile: Run a ``torch.compile``d copy of the model (torch models only; compiled on the first call, about a
            minute on a small CPU, then reused while the model's weights are unchanged). Pays off on large inputs.
        truncate_dim: Keep the first ``truncate_dim`` dimensions (Matryoshka), then L2-normalise; default the
            model's own ``truncate_dim`` (sentence-transformers' attribute, saved in its config), else all.

    Returns:
        ``np.ndarray`` of shape ``(len(texts), dim)``, dtype float32.
    """
    if isinstance(texts, str):
        raise TypeError("encode expects a list of texts, got a single string")
    model = check_loaded(model)
    texts = list(texts)
    dimension = output_dimension(model, truncate_dim)
    if truncate_dim is None:
        truncate_dim = getattr(model, "truncate_dim", None)
    if prompt is None and prompt_name is not None:
        if prompt_name not in model.prompts:
            raise ValueError(f"prompt_name {prompt_name!r} not in the model's prompts {sorted(model.prompts)}")
        prompt = model.prompts[prompt_name]
    elif prompt is None and model.default_prompt_name is not None:
        prompt = model.prompts.get(model.default_prompt_name)

    if not texts:
        return np.empty((0, dimension or 0), dtype=np.float32)
    is_torch = getattr(model, "backend", "torch") == "torch"
    device = model.device
    # Exported artifacts (ONNX Runtime, OpenVINO) run at their own precision; they still gain from the batching.
    if not is_torch:
        if compile:
            raise ValueError("compile=True applies to torch models; an exported artifact is already compiled")
        check_precision(precision)
        resolved = "fp32"
    else:
        resolved = resolve_precision(precision, model)
    texts, lengths = _capped(model, texts, prompt or "")
    order = np.argsort(-lengths, kind="stable")
    spans = _batches(lengths[order], batch_size, token_budget=batch_size * TOKENS_PER_ROW)

    # "bf16": a bf16 copy of the model (made once, cached while the weights are unchanged), so every op -- matmuls,
    # layer norms, GELU, attention -- runs in bf16 (docs/benchmarks.md compares it with autocast and fp32).
    runner = _serving_copy(model, resolved, compile) if is_torch else model
    freezing = contextlib.nullcontext()
    if compile:
        from torch._inductor import config as inductor_config

        # Freezing: the weights become graph constants, which lets inductor pre-pack them for oneDNN.
        freezing = inductor_config.patch(freezing=True)
    was_training = runner.training
    runner.eval()
    out = np.empty((len(texts), 0), dtype=np.float32)
    try:
        with (
            torch.inference_mode(),
            torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=resolved == "bf16-autocast"),
            freezing,
        ):
            for start, end in tqdm(spans, desc="Batches", disable=not show_progress_bar):
                idx = order[start:end]
                features = model.preprocess([texts[i] for i in idx], prompt=prompt)
                features = batch_to_device(features, device)
                features = runner(features)
                emb = features["sentence_embedding"].float()
                if truncate_dim is not None:
                    emb = emb[:, :truncate_dim]
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
                emb = emb.cpu().numpy()
                if out.shape[1] == 0:
                    out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
                out[idx] = emb
    finally:
        runner.train(was_training)
    return out
