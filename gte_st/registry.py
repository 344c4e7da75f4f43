"""One registry per extension point: a name -> implementation mapping, looked up in one call.

In the manner of transformers' ``AttentionInterface`` (and its ``CONFIG_MAPPING_NAMES``), each extension point of
gte-st is one :class:`Registry`, declared here with every built-in entry. An entry names its implementation as
``"module:attribute"`` and is imported only when it is looked up, so the command line can build its ``choices`` and
its checks from a registry (``gte-st eval --help``) without importing torch. Everything that offers a choice -- the
CLI options, the up-front checks, the training-time evaluation, the docs tables -- reads it from here, so adding a
backend, an encode precision, an export variant, an evaluation task or a loss is one module plus one entry below
(plus its tests).

Example::

    from gte_st.registry import BACKENDS

    BACKENDS.names()                     # ('torch', 'onnx', 'openvino', 'auto')
    load = BACKENDS.get("onnx")          # the loader function, imported on first use
    BACKENDS.register("tensorrt", "my_package.trt:load_trt_model", help="TensorRT engine")
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gte_st.errors import UsageError


@dataclass(frozen=True)
class Entry:
    """One registered implementation: ``target`` is ``"module:attribute"`` (imported on lookup) or the object
    itself; ``help`` is the one line the CLI and docs show; ``metadata`` holds what the extension point needs to know
    without importing the implementation (file names, metric keys, ...)."""

    name: str
    target: Any
    help: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        if not isinstance(self.target, str):
            return self.target
        module, _, attribute = self.target.partition(":")
        value = importlib.import_module(module)
        for part in attribute.split(".") if attribute else []:
            value = getattr(value, part)
        return value


class Registry:
    """A name -> implementation mapping for one extension point (``kind`` names it in messages)."""

    def __init__(self, kind: str, option: str | None = None) -> None:
        self.kind = kind
        self.option = option
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: Any, *, help: str = "", **metadata: Any) -> None:
        """Add (or replace) the implementation of ``name``."""
        self._entries[name] = Entry(name, target, help, dict(metadata))

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str) -> Entry:
        """The entry of ``name``; a :class:`~gte_st.errors.UsageError` naming the choices when there is none."""
        if name not in self._entries:
            where = f"{self.option} " if self.option else ""
            raise UsageError(f"{where}{name!r} is not a known {self.kind}; choose one of {', '.join(self._entries)}")
        return self._entries[name]

    def get(self, name: str) -> Any:
        """The implementation of ``name`` (imported now if it was given as ``"module:attribute"``)."""
        return self.entry(name).load()

    def check(self, name: str) -> str:
        """``name`` when it is registered, else the :meth:`entry` error."""
        self.entry(name)
        return name

    def help_table(self) -> str:
        """``name: help`` lines, for ``--help`` texts and the docs."""
        return "; ".join(f"{name}: {entry.help}" for name, entry in self._entries.items())


# ------------------------------------------------------------------------------------------------ backends
BACKENDS = Registry("backend", option="--backend")
BACKENDS.register("torch", "gte_st.loading:load", help="the model's own weights in PyTorch")
BACKENDS.register(
    "onnx", "gte_st.export.runtime:load_onnx_model", help="an exported ONNX graph on ONNX Runtime",
    default_variant="onnx-fp32", suffix=".onnx",
)  # fmt: skip
BACKENDS.register(
    "openvino", "gte_st.export.runtime:load_openvino_model", help="an exported OpenVINO IR",
    default_variant="openvino-fp32", suffix=".xml",
)  # fmt: skip
BACKENDS.register(
    "auto", "gte_st.export.auto:load_auto_model",
    help="the fastest verified path on this CPU: the torch weights or an exported artifact that passed its parity "
    "gate and is not stale (measured once per model folder and CPU)",
)  # fmt: skip

# ------------------------------------------------------------------------------------------ encode precisions
PRECISIONS = Registry("encode precision", option="--precision")
PRECISIONS.register(
    "auto", "auto",
    help="the fastest of fp32, bf16 and bf16-autocast on this CPU, measured once per model shape and CPU (fp32 "
    "without native bf16; bf16 on bf16 GPUs)",
)  # fmt: skip
PRECISIONS.register("fp32", "fp32", help="float32 weights and activations (reproduces published scores)")
PRECISIONS.register("bf16", "bf16", help="a bf16 copy of the model: every op in bf16, normalisation in float32")
PRECISIONS.register("bf16-autocast", "bf16-autocast", help="float32 weights under torch.autocast(bf16)")

# --------------------------------------------------------------------------------------------- evaluation tasks
# name -> the evaluator ``fn(model, path, **options) -> EvalResult`` (``model``: a model, or a loader it calls once its
# data is read and checked). ``options`` maps each evaluator keyword to the
# ``gte-st eval`` option (argparse dest) that feeds it, beside the ones every task takes (batch size, precision,
# compile, dataset name); ``data`` is what --data holds.
# ``mteb`` runs mteb's own evaluators (gte_st.evaluation.mteb_runner) instead of one file evaluator: its entry says
# ``evaluates_path=False``, and everything that runs a task on a PATH (``gte-st train --eval_task``) leaves it out.
EVAL_TASKS = Registry("evaluation task", option="--task")
_SPLIT_AND_SAMPLES = {"split": "split", "max_samples": "max_samples"}
EVAL_TASKS.register(
    "sts", "gte_st.evaluation.sts:evaluate_sts", help="Spearman of cosine against gold scores",
    data="STS-B / SICK / jsonl (sentence1, sentence2, score)", options=_SPLIT_AND_SAMPLES,
)  # fmt: skip
EVAL_TASKS.register(
    "retrieval", "gte_st.evaluation.retrieval:evaluate_retrieval", help="nDCG@10, MRR@10, recall, MAP, accuracy@1",
    data="BEIR folder",
    options={"split": "split", "max_queries": "max_queries", "cache_dir": "cache_dir", "max_corpus": "max_corpus",
             "retriever": "retriever", "bm25_rerank": "bm25_rerank", "bm25_weight": "bm25_weight"},
)  # fmt: skip
EVAL_TASKS.register(
    "pair-classification", "gte_st.evaluation.pair_classification:evaluate_pair_classification",
    help="average precision of cosine for paraphrase / duplicate pairs", data="MRPC / LCQMC / jsonl (0/1 labels)",
    options=_SPLIT_AND_SAMPLES,
)  # fmt: skip
EVAL_TASKS.register(
    "classification", "gte_st.evaluation.classification:evaluate_classification",
    help="accuracy of a logistic regression on the embeddings", data="labelled csv / tsv / jsonl",
    options={**_SPLIT_AND_SAMPLES, "train_path": "train_data", "n_folds": "n_folds", "seed": "seed"},
)  # fmt: skip
EVAL_TASKS.register(
    "clustering", "gte_st.evaluation.clustering:evaluate_clustering", help="V-measure of k-means on the embeddings",
    data="labelled csv / tsv / jsonl",
    options={**_SPLIT_AND_SAMPLES, "n_clusters": "n_clusters", "seed": "seed"},
)  # fmt: skip
EVAL_TASKS.register(
    "reranking", "gte_st.evaluation.reranking:evaluate_reranking", help="MAP / MRR@10 of candidates by cosine",
    data="WikiQA / jsonl (query, positive, negative)", options=_SPLIT_AND_SAMPLES,
)  # fmt: skip
EVAL_TASKS.register(
    "mteb", "gte_st.evaluation.mteb_runner:run_mteb", help="mteb's own evaluators (Hub data, or --mteb-data)",
    data="with --mteb-data: one file or folder per --mteb-tasks name", options={}, evaluates_path=False,
)  # fmt: skip


def eval_path_tasks() -> tuple[str, ...]:
    """The evaluation tasks that are a file evaluator ``fn(model, path, **options) -> EvalResult`` (every entry but
    those registered with ``evaluates_path=False``, i.e. ``mteb``): the choices of ``gte-st train --eval_task``."""
    return tuple(name for name in EVAL_TASKS if EVAL_TASKS.entry(name).metadata.get("evaluates_path", True))


# ------------------------------------------------------------------------------------------------ export variants
# name -> its builder ``fn(source, path, context) -> details`` (gte_st.export.builders). Everything else an export
# needs to know about a variant is its metadata, read by gte_st.export.variants (the plan, the gate, the move into
# place) and by gte-st export's choices:
#   format           the --format it belongs to;
#   quantize         the --quantize value that asks for it (None: the format's base variant, written with every
#                    value unless the asked-for variant ``replaces`` it); optimize=True: written when --optimize is on;
#   file             where it is written, under the model's transformer folder (the names sentence-transformers and
#                    transformers.js read; ``alias``: a second name, a hard link);
#   source           the variant it is built from (``optimized_source`` instead when --optimize builds that one);
#   gate             its parity threshold class (gte_st.export.parity.PARITY_THRESHOLDS: fp32, bf16, int8);
#   run_precision    the OpenVINO inference precision it is gated and served with;
#   calibrated       built from calibration texts; ``searchable``: takes --down-projections search.
EXPORT_VARIANTS = Registry("export variant")
_BUILDERS = "gte_st.export.builders"
EXPORT_VARIANTS.register(
    "onnx-fp32", f"{_BUILDERS}:build_torch_onnx", help="fp32 ONNX graph (torch.onnx, TorchScript)",
    format="onnx", quantize=None, file="onnx/model.onnx", gate="fp32",
)  # fmt: skip
EXPORT_VARIANTS.register(
    "onnx-O2", f"{_BUILDERS}:build_ort_optimized", help="fused fp32 graph (ONNX Runtime's transformer optimizer)",
    format="onnx", quantize=None, optimize=True, file="onnx/model_O2.onnx", source="onnx-fp32", gate="fp32",
)  # fmt: skip
EXPORT_VARIANTS.register(
    "onnx-int8-dynamic", f"{_BUILDERS}:build_ort_dynamic", help="ONNX Runtime quantize_dynamic",
    format="onnx", quantize="int8-dynamic", file="onnx/model_qint8.onnx", source="onnx-fp32",
    optimized_source="onnx-O2", gate="int8", alias="model_quantized.onnx",
)  # fmt: skip
EXPORT_VARIANTS.register(
    # Always from the fused graph: on the unfused all-MiniLM-L6-v2 graph its QKV projections lost too much.
    "onnx-int8-static", f"{_BUILDERS}:build_ort_static", help="ONNX Runtime quantize_static (calibrated)",
    format="onnx", quantize="int8-static", file="onnx/model_qint8_static.onnx", source="onnx-O2", gate="int8",
    calibrated=True,
)  # fmt: skip
EXPORT_VARIANTS.register(
    "openvino-fp32", f"{_BUILDERS}:build_openvino_ir", help="OpenVINO IR converted from the verified fp32 ONNX graph",
    format="openvino", quantize=None, file="openvino/openvino_model.xml", source="onnx-fp32", gate="fp32",
    run_precision="fp32",
)  # fmt: skip
EXPORT_VARIANTS.register(
    # ONNX has no bf16 variant: ONNX Runtime's CPU provider has no bf16 MatMul / attention kernels.
    "openvino-bf16", f"{_BUILDERS}:build_openvino_ir", help="the same IR, gated and served in bf16",
    format="openvino", quantize="bf16", replaces="openvino-fp32", file="openvino/openvino_model.xml",
    source="onnx-fp32", gate="bf16", run_precision="bf16",
)  # fmt: skip
EXPORT_VARIANTS.register(
    "openvino-int8-static", f"{_BUILDERS}:build_nncf_static", help="NNCF quantize: int8 compute (calibrated)",
    format="openvino", quantize="int8-static", file="openvino/openvino_model_qint8_quantized.xml",
    source="openvino-fp32", gate="int8", calibrated=True, searchable=True,
)  # fmt: skip
EXPORT_VARIANTS.register(
    # OpenVINO's CPU plugin has no run-time activation quantisation for these layers: int8-dynamic is int8 weights.
    "openvino-int8-weights", f"{_BUILDERS}:build_nncf_weights", help="NNCF compress_weights: int8 weights",
    format="openvino", quantize="int8-dynamic", file="openvino/openvino_model_qint8_weights.xml",
    source="openvino-fp32", gate="int8",
)  # fmt: skip


def export_formats() -> tuple[str, ...]:
    """The ``--format`` choices: every format an export variant belongs to."""
    return tuple(dict.fromkeys(EXPORT_VARIANTS.entry(name).metadata["format"] for name in EXPORT_VARIANTS))


def export_quantize_choices() -> tuple[str, ...]:
    """The ``--quantize`` choices: ``none`` (the base variants) and every value a variant answers to."""
    values = (EXPORT_VARIANTS.entry(name).metadata.get("quantize") for name in EXPORT_VARIANTS)
    return ("none", *dict.fromkeys(value for value in values if value))


__all__ = [
    "BACKENDS",
    "EVAL_TASKS",
    "EXPORT_VARIANTS",
    "PRECISIONS",
    "Entry",
    "Registry",
    "eval_path_tasks",
    "export_formats",
    "export_quantize_choices",
]
