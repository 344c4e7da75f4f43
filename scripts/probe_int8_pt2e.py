#!/usr/bin/env python
"""Serving probe (issue 13): int8 AMX linears through PT2E quantisation + inductor, against the compiled bf16 path.

    pip install torchao==0.18.0   # not a gte-st dependency; only this probe needs it
    N=300 ARMS=static,static-keepdown python scripts/probe_int8_pt2e.py

The transformer of the offline all-MiniLM-L6-v2 is exported with ``torch.export`` (dynamic batch and length),
annotated by torchao's ``X86InductorQuantizer`` (every linear int8; the linear+GELU fusion annotation is skipped: it
fails on this graph with an ``IndexError``, and inductor fuses the GELU into the int8 linear anyway), calibrated on
200 SciFact abstracts after the first N (``static``; ``CALIBRATION=builtin``: the 200 texts of the export's
built-in calibration sample instead) or not at all (``dynamic``), converted and compiled by inductor
with frozen weights under bf16 autocast (the non-quantised ops in bf16). Arms (``ARMS``):

* ``static`` / ``dynamic``: every linear int8, static or dynamic activation scales;
* ``static-keepdown``: static, with the feed-forward down-projections left in bf16 (the recipe that passes
  OpenVINO's int8 gate);
* ``autotune``: the bf16 model under ``torch.compile(mode="max-autotune")`` (inductor's AMX GEMM templates).

Rows: stock fp32 ``model.encode`` (the baseline), ``gte_st.encoding.encode`` bf16 eager and ``compile=True``, then the
arms, all through ``gte_st.encoding.encode``'s batches; 3 interleaved rounds over the first N SciFact abstracts at
length 256, median docs/s; min / mean cosine of the document embeddings and the minimum over five short texts
(one-word, Chinese, a question) against stock fp32. Results: docs/benchmarks.md (serving).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
from sentence_transformers import SentenceTransformer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import _docs  # noqa: E402

import gte_st  # noqa: E402
from gte_st.encoding import encode  # noqa: E402

N = int(os.environ.get("N", 300))
ARMS = os.environ.get("ARMS", "static,dynamic").split(",")
SHORT = ["thanks", "ok", "你好世界", "what is the capital of france?", "Gene expression in T cells."]


def load() -> SentenceTransformer:
    model = SentenceTransformer(str(gte_st.default_base_model()), device="cpu")
    model.max_seq_length = 256
    return model.eval()


class Encoder(torch.nn.Module):
    """The Hugging Face model as a function of three tensors, for ``torch.export``."""

    def __init__(self, hf_model: torch.nn.Module) -> None:
        super().__init__()
        self.bert = hf_model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state


class GraphRunner(torch.nn.Module):
    """Stands in for the Hugging Face model inside the sentence-transformers ``Transformer`` module."""

    def __init__(self, fn, config) -> None:
        super().__init__()
        self.fn, self.config = fn, config

    def forward(self, **features):
        token_types = features.get("token_type_ids")
        if token_types is None:
            token_types = torch.zeros_like(features["input_ids"])
        return {"last_hidden_state": self.fn(features["input_ids"], features["attention_mask"], token_types)}


def quantized(kind: str, calibration: list[str]) -> SentenceTransformer:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = load()
    hf_model = model[0].model
    features = model.preprocess(calibration[:32])
    example = (features["input_ids"], features["attention_mask"], features["token_type_ids"])
    dims = {0: torch.export.Dim("batch", min=1, max=1024), 1: torch.export.Dim("length", min=2, max=512)}
    with torch.no_grad():
        graph = torch.export.export(Encoder(hf_model).eval(), example, dynamic_shapes=(dims,) * 3).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer._annotate_linear_unary = lambda *args, **kwargs: None  # IndexError on this graph (see docstring)
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_dynamic=kind == "dynamic"))
    if kind == "static-keepdown":
        for layer in range(hf_model.config.num_hidden_layers):
            quantizer.set_module_name_qconfig(f"bert.encoder.layer.{layer}.output.dense", None)
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for start in range(0, len(calibration) if kind != "dynamic" else 32, 32):
            batch = model.preprocess(calibration[start : start + 32])
            prepared(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    inductor_config.freezing = True
    compiled = torch.compile(converted, dynamic=True)

    def run(input_ids, attention_mask, token_type_ids):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return compiled(input_ids, attention_mask, token_type_ids).float()

    model[0].model = GraphRunner(run, hf_model.config)
    model[0].model_forward_params = None
    return model


def main() -> int:
    texts = _docs(Path("../shared/data/beir_scifact/corpus.jsonl.gz"), N + 200)
    docs, calibration = texts[:N], texts[N:]
    if os.environ.get("CALIBRATION") == "builtin":  # the export's built-in sample: short, long, non-English texts
        from gte_st.export.samples import calibration_sample

        calibration = calibration_sample(200)
    model = load()
    paths = {
        "stock-fp32": lambda t: model.encode(t, batch_size=32, normalize_embeddings=True),
        "gte-bf16": lambda t: encode(model, t, batch_size=32, precision="bf16"),
        "gte-bf16-compile": lambda t: encode(model, t, batch_size=32, precision="bf16", compile=True),
    }
    if "autotune" in ARMS:
        tuned = load().to(torch.bfloat16)
        inductor_config.freezing = True
        tuned[0].model = torch.compile(tuned[0].model, dynamic=True, mode="max-autotune")
        paths["bf16-autotune"] = lambda t: encode(tuned, t, batch_size=32, precision="fp32")
    for kind in [arm for arm in ARMS if arm != "autotune"]:
        int8 = quantized(kind, calibration)
        paths[f"int8-{kind}"] = lambda t, m=int8: encode(m, t, batch_size=32, precision="fp32")

    reference, reference_short = paths["stock-fp32"](docs), paths["stock-fp32"](SHORT)
    for name, fn in paths.items():  # warm-up and compiles, outside the timed rounds
        start = time.perf_counter()
        fn(docs[:64])
        fn(SHORT)
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in paths}
    parity = {}
    for round_index in range(3):
        names = list(paths)[round_index % len(paths) :] + list(paths)[: round_index % len(paths)]
        for name in names:
            start = time.perf_counter()
            embeddings = paths[name](docs)
            rates[name].append(len(docs) / (time.perf_counter() - start))
            if round_index == 0:
                cosines = (embeddings * reference).sum(1)
                short = (paths[name](SHORT) * reference_short).sum(1)
                parity[name] = (float(cosines.min()), float(cosines.mean()), float(short.min()))
    stock = statistics.median(rates["stock-fp32"])
    for name, r in rates.items():
        low, mean, short = parity[name]
        print(f"{name:24s} {statistics.median(r):6.1f} docs/s  x{statistics.median(r) / stock:.2f}  "
              f"cos min/mean {low:.5f}/{mean:.5f}  short min {short:.5f}  rounds {[round(x, 1) for x in r]}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
