#!/usr/bin/env python
"""Serving roofline: how fast can this CPU encode with this model at all, and where does the time go?

    python scripts/bench_serving_roofline.py --output docs/results/serving_roofline.json

Measures, in one run on the offline all-MiniLM-L6-v2 (``gte_st.default_base_model()``), batch 32, length 256:

1. **Kernel rates.** ``F.linear`` at the model's own linear shapes (batch x length rows; query/key/value/output
   ``h -> h``, feed-forward ``h -> 4h`` and ``4h -> h``) in fp32 and bf16, ``torch._int_mm`` (int8 x int8 -> int32,
   oneDNN) at the same shapes, one large square GEMM of each as the CPU's practical peak, and
   ``scaled_dot_product_attention`` at the model's attention shape (batch x heads x length x head dim, padding mask).
2. **End to end.** Stock ``model.encode`` in fp32 and ``gte_st.encoding.encode(precision="bf16")`` eager and with
   ``compile=True`` on the first ``--docs`` SciFact abstracts, ``--rounds`` interleaved rounds, median docs/s.
3. **The ceilings** from the model's FLOPs per document (from each document's token count): the time per document if
   every linear ran at the measured bf16 (or int8) GEMM rate and attention at the measured bf16 SDPA rate, with all
   other work (embeddings, LayerNorm, GELU, tokenisation, pooling) free; as docs/s and as x stock fp32.
4. **OpenVINO's own split** (``--openvino``, default on): per node type, the time of one batch of the bf16 IR
   (``PERF_COUNT``), exported by ``gte_st.export.export`` into a temporary copy of the model.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import DATA, _docs  # noqa: E402


def _seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_rates(rows: int, shapes: dict[str, tuple[int, int]], repeats: int) -> dict[str, dict[str, float]]:
    """GFLOP/s (GOP/s for int8) of ``rows x K @ K x N`` per shape name and dtype, plus a 4096^3 ``peak`` entry."""
    import torch
    import torch.nn.functional as F

    rates: dict[str, dict[str, float]] = {}
    for name, (k, n) in {**shapes, "peak 4096^3": (4096, 4096)}.items():
        m = 4096 if name.startswith("peak") else rows
        flops = 2 * m * k * n
        x, w, b = torch.randn(m, k), torch.randn(n, k) / k**0.5, torch.randn(n)
        xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
        x8 = torch.randint(-127, 127, (m, k), dtype=torch.int8)
        w8 = torch.randint(-127, 127, (k, n), dtype=torch.int8)
        with torch.inference_mode():
            rates[name] = {
                "fp32": flops / _seconds(functools.partial(F.linear, x, w, b), repeats) / 1e9,
                "bf16": flops / _seconds(functools.partial(F.linear, xb, wb, bb), repeats) / 1e9,
                "int8": flops / _seconds(functools.partial(torch._int_mm, x8, w8), repeats) / 1e9,
            }
    return rates


def attention_rates(batch: int, heads: int, length: int, head_dim: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of ``scaled_dot_product_attention`` (4 * length^2 * head_dim FLOPs per row and head) with an additive
    padding mask, in fp32 and bf16."""
    import torch
    import torch.nn.functional as F

    flops = 4 * batch * heads * length * length * head_dim
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(batch, heads, length, head_dim, dtype=dtype) for _ in range(3))
        mask = torch.zeros(batch, 1, 1, length, dtype=dtype)
        with torch.inference_mode():
            attend = functools.partial(F.scaled_dot_product_attention, q, k, v, attn_mask=mask)
            seconds = _seconds(attend, repeats)
        rates[str(dtype).removeprefix("torch.")] = flops / seconds / 1e9
    return rates


def model_flops(config, token_counts: np.ndarray) -> tuple[float, float]:
    """(linear, attention) FLOPs to encode documents of ``token_counts`` tokens with a BERT-style encoder."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token_linear = 2 * (4 * h * h + 2 * h * inter) * layers
    linear = float(per_token_linear * token_counts.sum())
    attention = float(4 * h * layers * (token_counts.astype(np.float64) ** 2).sum())
    return linear, attention


def openvino_split(model_dir: Path, batch: int, length: int) -> dict[str, float]:
    """Milliseconds per node type (and kernel) for one ``batch x length`` batch of the model's bf16 IR."""
    import openvino as ov

    from gte_st.export import export

    work = Path(tempfile.mkdtemp(prefix="roofline-"))
    try:
        shutil.copytree(model_dir, work / "model")
        export(work / "model", "openvino", "none")
        core = ov.Core()
        ir = core.read_model(str(next((work / "model").rglob("openvino_model.xml"))))
        compiled = core.compile_model(ir, "CPU", {"PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        feed = {port.get_any_name(): np.ones((batch, length), dtype=np.int64) for port in ir.inputs}
        if "token_type_ids" in feed:
            feed["token_type_ids"][:] = 0
        request.infer(feed)
        request.infer(feed)
        split: collections.Counter[str] = collections.Counter()
        for info in request.get_profiling_info():
            split[f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds() * 1000
        return {name: round(ms, 1) for name, ms in split.most_common(10)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA / "beir_scifact" / "corpus.jsonl.gz")
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per kernel (median)")
    parser.add_argument("--openvino", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    import gte_st
    from gte_st.encoding import encode
    from gte_st.hardware import cpu_supports_bf16, load_average, run_record

    model_dir = Path(gte_st.default_base_model())
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = args.max_length
    config = model[0].model.config
    h, inter = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    rows = args.batch_size * args.max_length
    report: dict = {
        **run_record(["openvino"]),
        "bf16_native": cpu_supports_bf16(),
        "model": {
            "path": str(model_dir),
            "hidden": h,
            "intermediate": inter,
            "layers": config.num_hidden_layers,
            "heads": heads,
        },
    }

    shapes = {"qkv/out h->h": (h, h), "ffn up h->4h": (h, inter), "ffn down 4h->h": (inter, h)}
    gemm = gemm_rates(rows, shapes, args.repeats)
    attention = attention_rates(args.batch_size, heads, args.max_length, h // heads, args.repeats)
    report["gemm_gflops"] = {name: {k: round(v, 1) for k, v in r.items()} for name, r in gemm.items()}
    report["sdpa_gflops"] = {k: round(v, 1) for k, v in attention.items()}

    docs = _docs(args.data, args.docs)
    tokens = model.tokenizer(docs, truncation=True, max_length=args.max_length)["input_ids"]
    counts = np.array([len(t) for t in tokens])
    linear_flops, attention_flops = model_flops(config, counts)
    report["docs"] = {"n": len(docs), "mean_tokens": round(float(counts.mean()), 1),
                      "gflop_per_doc": {"linear": round(linear_flops / len(docs) / 1e9, 3),
                                        "attention": round(attention_flops / len(docs) / 1e9, 3)}}  # fmt: skip

    paths = {
        "stock-fp32": lambda: model.encode(docs, batch_size=args.batch_size, normalize_embeddings=True),
        "gte-bf16": lambda: encode(model, docs, batch_size=args.batch_size, precision="bf16"),
        "gte-bf16-compile": lambda: encode(model, docs, batch_size=args.batch_size, precision="bf16", compile=True),
    }
    for fn in paths.values():  # warm-up (and the compile) outside the timed rounds
        fn()
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for round_index in range(args.rounds):
        names = list(paths)[round_index % len(paths) :] + list(paths)[: round_index % len(paths)]
        for name in names:
            start = time.perf_counter()
            paths[name]()
            rates[name].append(len(docs) / (time.perf_counter() - start))
    stock = statistics.median(rates["stock-fp32"])
    total_flops = linear_flops + attention_flops
    report["paths"] = {
        name: {"docs_per_s": round(statistics.median(r), 2), "rounds": [round(x, 2) for x in r],
               "x_stock_fp32": round(statistics.median(r) / stock, 3),
               "achieved_gflops": round(total_flops / len(docs) * statistics.median(r) / 1e9, 1)}
        for name, r in rates.items()
    }  # fmt: skip

    def flop_weighted(dtype: str) -> float:
        """The model's linear FLOPs over the time they take at the measured per-shape rates."""
        per_token = {"qkv/out h->h": 4 * h * h, "ffn up h->4h": h * inter, "ffn down 4h->h": h * inter}
        total = sum(per_token.values())
        return total / sum(f / gemm[name][dtype] for name, f in per_token.items())

    ceilings = {}
    for dtype in ("bf16", "int8"):
        linear_rate = flop_weighted(dtype)
        seconds = (linear_flops / linear_rate + attention_flops / attention["bfloat16"]) / 1e9 / len(docs)
        linear_only = linear_flops / linear_rate / 1e9 / len(docs)
        ceilings[f"linears {dtype} + sdpa bf16"] = {
            "linear_gflops": round(linear_rate, 1), "ms_per_doc": round(seconds * 1000, 2),
            "docs_per_s": round(1 / seconds, 1), "x_stock_fp32": round(1 / seconds / stock, 2),
            "x_stock_fp32_linears_only": round(1 / linear_only / stock, 2)}  # fmt: skip
    report["ceilings"] = ceilings
    if args.openvino:
        report["openvino_bf16_ms_per_batch"] = openvino_split(model_dir, args.batch_size, args.max_length)
    report["loadavg_at_end"] = load_average()

    print(json.dumps(report, indent=1))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
