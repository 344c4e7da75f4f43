"""Export a sentence-transformers model to ONNX (fp32 and dynamically quantised int8), verified before it is written.

The ONNX file follows the layout that optimum's ``feature-extraction`` export produces and that sentence-transformers
(``backend="onnx"``), FastEmbed, Infinity and TEI read: ``<model_dir>/onnx/model.onnx`` next to the tokenizer files at
the root, inputs ``input_ids`` / ``attention_mask`` / ``token_type_ids`` (int64, dynamic batch and sequence axes),
output ``last_hidden_state`` (token embeddings). Pooling and normalisation stay with the consumer, as described by
``1_Pooling/config.json`` and ``2_Normalize``.

Every variant is exported into a temporary folder, loaded back with ONNX Runtime, compared with the torch model
(mean cosine similarity over a sample of texts; the minimum is reported too) and only then moved into place; a
variant below the parity threshold is refused and nothing is written.

Python API::

    from gte_st.export import export_onnx, load_onnx_model

    report = export_onnx("my-gte", quantize="int8", sts="stsb/sts-test.csv", retrieval="beir_scifact")
    model = load_onnx_model("my-gte", file_name="onnx/model_qint8.onnx")   # a SentenceTransformer on ONNX Runtime
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

ONNX_FILE_NAMES = {"fp32": "model.onnx", "int8": "model_qint8.onnx"}
PARITY_THRESHOLDS = {"fp32": 0.999, "int8": 0.99}
ONNX_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

# Default parity sample: short and long, several domains, so that padding and truncation are exercised.
DEFAULT_SAMPLE = [
    "A man is playing a guitar.",
    "Hi!",
    "The new movie is awesome and I would watch it again with my whole family this weekend.",
    "How do I reset my bank card PIN?",
    "Glucose uptake in skeletal muscle is regulated by insulin through translocation of GLUT4 transporters "
    "to the plasma membrane, a process impaired in type 2 diabetes.",
    "what is the capital of france",
    "Paris is the capital and most populous city of France.",
    "Two dogs run across a snowy field.",
    "The stock market fell sharply on Tuesday after the central bank raised interest rates.",
    "def add(a, b): return a + b",
    "Ein Mann spielt Gitarre.",
    "I lost my wallet yesterday, can you freeze my account?",
    "Children are playing in the park near the lake while their parents watch.",
    "Quantum entanglement links the states of two particles regardless of distance.",
    "ok",
    "The patient presented with fever, cough and shortness of breath for three days. " * 4,
]


@dataclass
class VariantReport:
    """What one exported variant (fp32 or int8) measured and where it was written."""

    variant: str
    file_name: str
    written: bool
    min_cosine: float
    mean_cosine: float
    threshold: float
    size_mb: float
    export_s: float
    quality: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> {"torch", "onnx", "delta"}
    message: str = ""


@dataclass
class ExportReport:
    model_dir: str
    variants: list[VariantReport]

    @property
    def ok(self) -> bool:
        return all(variant.written for variant in self.variants)

    def to_dict(self) -> dict[str, Any]:
        return {"model_dir": self.model_dir, "ok": self.ok, "variants": [asdict(v) for v in self.variants]}


class ExportParityError(RuntimeError):
    """An exported variant's embeddings differ too much from the torch model's; that variant was not written."""

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message)
        self.report = report


class OnnxRuntimeEncoder(torch.nn.Module):
    """Stands in for the Hugging Face model inside a sentence-transformers ``Transformer`` module: runs an ONNX
    feature-extraction graph with ONNX Runtime and returns ``last_hidden_state`` like the torch model does."""

    def __init__(self, onnx_path: str | Path, config: Any, providers: list[str] | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.config = config
        self.onnx_path = str(onnx_path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            self.onnx_path, options, providers=providers or ort.get_available_providers()
        )
        self.input_names = [node.name for node in self.session.get_inputs()]
        outputs = [node.name for node in self.session.get_outputs()]
        if "last_hidden_state" not in outputs:
            raise ValueError(f"{self.onnx_path}: the graph has outputs {outputs}, expected 'last_hidden_state'.")

    def forward(self, **features: Any) -> dict[str, torch.Tensor]:
        input_ids = features["input_ids"]
        feed = {}
        for name in self.input_names:
            value = features.get(name)
            if value is None and name == "token_type_ids":
                value = torch.zeros_like(input_ids)
            if value is None:
                raise ValueError(f"{self.onnx_path}: the graph needs input {name!r}, which the tokenizer did not give")
            feed[name] = value.detach().cpu().numpy().astype(np.int64)
        (hidden,) = self.session.run(["last_hidden_state"], feed)
        return {"last_hidden_state": torch.from_numpy(hidden)}


def _transformer_subdir(model_dir: Path) -> str:
    """The folder (relative to ``model_dir``) of the model's Transformer module: where ``onnx/`` belongs."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return ""  # a plain Hugging Face model directory
    for module in json.loads(modules_file.read_text()):
        if module["type"].endswith("Transformer"):
            return module.get("path", "")
    raise ValueError(f"{modules_file}: no Transformer module; only transformer encoders can be exported to ONNX.")


def load_onnx_model(
    model_dir: str | Path, file_name: str = "onnx/model.onnx", *, providers: list[str] | None = None, **kwargs: Any
):
    """Load ``model_dir`` as a :class:`~sentence_transformers.SentenceTransformer` whose transformer runs the ONNX file
    ``file_name`` (relative to the transformer folder, or an absolute path) on ONNX Runtime.

    With optimum installed this is ``SentenceTransformer(model_dir, backend="onnx", model_kwargs={"file_name": ...})``;
    without it (optimum-onnx pins transformers<4.58) the same pipeline is assembled from the model's own tokenizer,
    pooling and normalisation modules with ONNX Runtime in place of the torch encoder.
    """
    from sentence_transformers import SentenceTransformer

    model_dir = Path(model_dir)
    onnx_path = (
        Path(file_name) if Path(file_name).is_absolute() else model_dir / _transformer_subdir(model_dir) / file_name
    )
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} does not exist; create it with `gte-st export {model_dir} --onnx`.")
    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError:
        pass
    else:
        if not Path(file_name).is_absolute():
            return SentenceTransformer(
                str(model_dir),
                backend="onnx",
                model_kwargs={"file_name": file_name, **kwargs.pop("model_kwargs", {})},
                **kwargs,
            )
    model = SentenceTransformer(str(model_dir), device="cpu", **kwargs)
    transformer = model[0]
    transformer.model = OnnxRuntimeEncoder(onnx_path, transformer.model.config, providers=providers)
    transformer.model_forward_params = None
    transformer.backend = model.backend = "onnx"
    return model


def _export_fp32(model, path: Path, opset: int) -> None:
    """Export the transformer of a SentenceTransformer to ``path`` with torch's ONNX exporter."""
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
        # The eager attention path traces into plain MatMul/Softmax ops that every ONNX Runtime version supports.
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


def _quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the MatMul/Gemm weights (activations quantised at run time), per channel."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger("root").setLevel(logging.ERROR)  # "consider pre-processing" notice
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
        extra_options={"MatMulConstBOnly": True},
    )


def _encode(model, texts: list[str], batch_size: int = 32) -> np.ndarray:
    return model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True)


def parity(reference, candidate, texts: list[str]) -> tuple[float, float]:
    """(minimum, mean) cosine similarity between two models' embeddings of ``texts``."""
    a, b = _encode(reference, texts), _encode(candidate, texts)
    cosines = (a * b).sum(axis=1)
    return float(cosines.min()), float(cosines.mean())


def _quality(model, sts: str | None, retrieval: str | None, max_corpus: int | None) -> dict[str, float]:
    """Main scores of ``model`` on the STS file and the BEIR folder (gte_st.evaluation, contract 2)."""
    if not sts and not retrieval:
        return {}
    try:
        from gte_st.evaluation import evaluate_retrieval, evaluate_sts
    except ImportError as exc:
        logger.warning(f"quality deltas skipped: gte_st.evaluation is not available ({exc})")
        return {}
    scores = {}
    if sts:
        result = evaluate_sts(model, sts)
        scores[f"sts:{Path(sts).name}:{result.main_score}"] = result.metrics[result.main_score]
    if retrieval:
        result = evaluate_retrieval(model, retrieval, max_corpus=max_corpus)
        scores[f"retrieval:{Path(retrieval).name}:{result.main_score}"] = result.metrics[result.main_score]
    return scores


def export_onnx(
    model_dir: str | Path,
    *,
    quantize: str | None = None,
    sample: list[str] | None = None,
    sts: str | None = None,
    retrieval: str | None = None,
    max_corpus: int | None = None,
    opset: int = 17,
    thresholds: dict[str, float] | None = None,
) -> ExportReport:
    """Export ``model_dir`` to ``onnx/model.onnx`` (and ``onnx/model_qint8.onnx`` with ``quantize="int8"``).

    Args:
        model_dir: A saved sentence-transformers model directory (e.g. a GTE model) or a plain HF encoder directory.
        quantize: ``"int8"`` to also write the dynamically quantised variant.
        sample: Texts for the parity check (default: a built-in mixed sample).
        sts: Optional STS file (STS-B csv, SICK txt, jsonl) whose score is reported for torch and each variant.
        retrieval: Optional BEIR folder (e.g. SciFact) whose nDCG@10 is reported for torch and each variant.
        max_corpus: Limit the BEIR corpus size for speed (the relevant documents are kept).
        opset: ONNX opset.
        thresholds: Minimum mean cosine similarity per variant, default ``{"fp32": 0.999, "int8": 0.99}``.

    Returns:
        An :class:`ExportReport`. Variants that failed parity are reported with ``written=False``.

    Raises:
        ExportParityError: When any variant failed parity (after the passing ones were written).
    """
    from sentence_transformers import SentenceTransformer

    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    thresholds = {**PARITY_THRESHOLDS, **(thresholds or {})}
    texts = list(sample or DEFAULT_SAMPLE)
    target_dir = model_dir / _transformer_subdir(model_dir) / "onnx"

    reference = SentenceTransformer(str(model_dir), device="cpu")
    reference_quality = _quality(reference, sts, retrieval, max_corpus)
    variants = ["fp32"] + ([quantize] if quantize else [])
    reports: list[VariantReport] = []
    with tempfile.TemporaryDirectory(prefix=".gte-st-export-", dir=model_dir) as tmp:
        tmp_dir = Path(tmp)
        for variant in variants:
            start = time.perf_counter()
            path = tmp_dir / ONNX_FILE_NAMES[variant]
            if variant == "fp32":
                _export_fp32(reference, path, opset)
            else:
                _quantize_int8(tmp_dir / ONNX_FILE_NAMES["fp32"], path)
            export_s = time.perf_counter() - start
            candidate = load_onnx_model(model_dir, str(path.resolve()))
            min_cos, mean_cos = parity(reference, candidate, texts)
            report = VariantReport(
                variant=variant,
                file_name=f"onnx/{ONNX_FILE_NAMES[variant]}",
                written=False,
                min_cosine=round(min_cos, 6),
                mean_cosine=round(mean_cos, 6),
                threshold=thresholds[variant],
                size_mb=round(path.stat().st_size / 2**20, 2),
                export_s=round(export_s, 2),
            )
            if mean_cos < thresholds[variant]:
                report.message = (
                    f"refused: {variant} ONNX embeddings have mean cosine {mean_cos:.5f} (min {min_cos:.5f}) with the "
                    f"torch model on {len(texts)} sample texts, below the threshold {thresholds[variant]}; "
                    f"{target_dir / path.name} was not written."
                )
                reports.append(report)
                continue
            onnx_quality = _quality(candidate, sts, retrieval, max_corpus)
            report.quality = {
                task: {"torch": ref, "onnx": onnx_quality[task], "delta": onnx_quality[task] - ref}
                for task, ref in reference_quality.items()
                if task in onnx_quality
            }
            report.written = True
            report.message = f"wrote {target_dir / path.name}"
            reports.append(report)
        # Only verified variants are moved into place, each with an atomic rename on the same file system.
        for report in reports:
            if report.written:
                target_dir.mkdir(parents=True, exist_ok=True)
                os.replace(tmp_dir / Path(report.file_name).name, target_dir / Path(report.file_name).name)
    result = ExportReport(model_dir=str(model_dir), variants=reports)
    if not result.ok:
        raise ExportParityError("\n".join(r.message for r in reports if not r.written), result)
    return result


def _format(report: VariantReport) -> str:
    line = (
        f"{report.variant:>5}  {'ok ' if report.written else 'REFUSED'}  mean cos {report.mean_cosine:.5f} "
        f"(threshold {report.threshold}, min {report.min_cosine:.5f})  {report.size_mb} MB  {report.file_name}"
    )
    for task, scores in report.quality.items():
        line += (
            f"\n       {task}: torch {scores['torch']:.4f}  onnx {scores['onnx']:.4f}  delta {scores['delta']:+.4f}"
        )
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gte-st export", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="saved sentence-transformers / GTE model directory")
    parser.add_argument("--onnx", action="store_true", help="export onnx/model.onnx (fp32)")
    parser.add_argument(
        "--quantize", choices=["int8"], help="also write the dynamically quantised onnx/model_qint8.onnx"
    )
    parser.add_argument("--sample", help="text file (one text per line) for the parity check")
    parser.add_argument("--sts", help="STS file to report the quality delta on (e.g. stsb/sts-test.csv)")
    parser.add_argument("--retrieval", help="BEIR folder to report the nDCG@10 delta on (e.g. beir_scifact)")
    parser.add_argument("--max-corpus", type=int, help="limit the BEIR corpus to N documents for speed")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--report", help="write the export report as JSON to this file")
    args = parser.parse_args(argv)
    if not args.onnx:
        parser.error("nothing to export: pass --onnx")
    sample = None
    if args.sample:
        sample = [line.strip() for line in Path(args.sample).read_text(encoding="utf8").splitlines() if line.strip()]
        if not sample:
            parser.error(f"--sample {args.sample} holds no text")
    try:
        report = export_onnx(
            args.model_dir,
            quantize=args.quantize,
            sample=sample,
            sts=args.sts,
            retrieval=args.retrieval,
            max_corpus=args.max_corpus,
            opset=args.opset,
        )
    except ExportParityError as exc:
        for variant in exc.report.variants:
            print(_format(variant))
        print(f"gte-st export: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as exc:
        print(f"gte-st export: {exc}", file=sys.stderr)
        return 2
    for variant in report.variants:
        print(_format(variant))
    model_dir, file_name = json.dumps(str(args.model_dir)), json.dumps(report.variants[-1].file_name)
    print(
        f"load with: gte_st.export.load_onnx_model({model_dir}, {file_name}), or, where optimum-onnx is installed, "
        f'SentenceTransformer({model_dir}, backend="onnx", model_kwargs={{"file_name": {file_name}}})'
    )
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2))
    return 0


__all__ = [
    "ExportParityError",
    "ExportReport",
    "OnnxRuntimeEncoder",
    "VariantReport",
    "export_onnx",
    "load_onnx_model",
    "main",
    "parity",
]
