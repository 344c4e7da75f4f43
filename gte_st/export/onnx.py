"""torch -> ONNX (the feature-extraction graph) and ONNX Runtime's transformer graph optimisation.

The graph follows the layout that optimum's ``feature-extraction`` export produces and that sentence-transformers
(``backend="onnx"``), FastEmbed, Infinity and TEI read: inputs ``input_ids`` / ``attention_mask`` [/
``token_type_ids``] (int64, dynamic batch and sequence axes), output ``last_hidden_state`` (token embeddings).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


@contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise the named loggers (``"root"`` is the root logger) to ``level`` for the ``with`` block only, then put
    their levels back: the ONNX tools log notices a user cannot act on, but a process that exports and then goes on
    (a notebook, a service) must keep its own warnings."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, previous in zip(loggers, levels):
            logger.setLevel(previous)


logger = logging.getLogger(__name__)

ONNX_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def export_onnx_graph(model, path: str | Path, opset: int = 17) -> None:
    """Export the transformer of the SentenceTransformer ``model`` to ``path`` with torch's ONNX exporter."""
    transformer = model[0]
    hf_model = transformer.model
    tokenizer = transformer.tokenizer
    sample = tokenizer(
        ["a short text", "a somewhat longer text to give the sequence axis padding"], padding=True, return_tensors="pt"
    )
    input_names = [name for name in ONNX_INPUT_NAMES if name in sample]

    class _Wrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(input_names, args)), return_dict=True).last_hidden_state

    axes = {0: "batch_size", 1: "sequence_length"}
    previous = getattr(hf_model.config, "_attn_implementation", None)
    hf_model.eval()
    try:
        # The eager attention path traces into plain MatMul/Softmax ops that every ONNX Runtime version supports
        # and that the transformer optimizer fuses.
        if previous is not None:
            hf_model.set_attn_implementation("eager")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript-based exporter: the dynamo exporter (torch 2.13, transformers 5.x) gives wrong hidden
            # states for padded batches (max abs error 2.26 on all-MiniLM-L6-v2), which the parity check refuses.
            torch.onnx.export(
                _Wrapper(hf_model),
                tuple(sample[name] for name in input_names),
                str(path),
                input_names=input_names,
                output_names=["last_hidden_state"],
                dynamic_axes={**{name: axes for name in input_names}, "last_hidden_state": axes},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        if previous is not None:
            hf_model.set_attn_implementation(previous)


def optimize_onnx_graph(source: str | Path, target: str | Path, config) -> dict[str, int]:
    """Fuse ``source`` with ONNX Runtime's transformer optimizer (``model_type="bert"``: fused Attention,
    SkipLayerNormalization, BiasGelu, EmbedLayerNormalization where the patterns match; exact Gelu kept, no fp16)
    into ``target``, the level optimum calls O2. Returns the count of each fused operator.

    Architectures whose attention does not match BERT's pattern (RoPE in native GTE, ModernBERT's local attention)
    keep their unfused attention and still get the LayerNorm / Gelu fusions; the parity check judges the result.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_gelu_approximation = False  # FastGelu changes the numbers; O3 territory
    with quiet_loggers("onnxruntime.transformers", "fusion_base", "onnx_model", "onnx_model_bert", "optimizer"):
        optimized = optimize_model(
            str(source),
            model_type="bert",
            num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
            hidden_size=int(getattr(config, "hidden_size", 0) or 0),
            optimization_options=options,
            opt_level=0,  # graph fusions only: ORT's own level-99 rewrites are hardware specific and done at load time
            use_gpu=False,
        )
    optimized.save_model_to_file(str(target))
    return {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
