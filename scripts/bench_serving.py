#!/usr/bin/env python
"""Serving benchmark: CPU encoding speed and parity of every way to serve a GTE model -- stock torch,
gte-st's torch bf16 path, and the exported ONNX / OpenVINO artifacts -- side by side in one run.

    python scripts/bench_serving.py --output docs/results/serving.json                      # this CPU, all ISAs
    python scripts/bench_serving.py --isa avx512_vnni --output docs/results/serving_vnni.json  # as a CPU without AMX

Protocol (the defaults): the first 600 SciFact abstracts (title + text, ../shared/data/beir_scifact/corpus.jsonl.gz),
truncated to 256 tokens, the offline all-MiniLM-L6-v2 (``gte_st.default_base_model()``), batch size 32, every path
encoding all documents once per round, ``--rounds 3`` interleaved rounds whose path order rotates (every path sees
the same mix of machine load); docs/s is the median over rounds, ratios are against ``stock-fp32`` of the same run.

Paths (``--paths``; each artifact is exported by ``gte_st.export.export`` into a temporary copy of the model):

==========================  ================================================================================
stock-fp32                  ``model.encode(docs)``: sentence-transformers' default, torch fp32 (the baseline)
stock-fp32-b8               the same with ``batch_size=8``: what stock torch gains from batches as small as the
                            slices gte-st's OpenVINO encoder runs (not a baseline: ratios stay against stock-fp32)
stock-bf16-autocast         the same under ``torch.autocast("cpu", torch.bfloat16)``
gte-bf16                    ``gte_st.encoding.encode(model, docs, precision="bf16")`` (``fp32`` under --isa)
gte-bf16-compile            the same with ``compile=True`` (compiled during the warm-up, outside the timed rounds;
                            its STS-B figure is the eager path's, its cosines are its own)
gte-auto                    ``encode(model, docs)``: ``precision="auto"``, calibrated on this CPU in this run (the
                            pick is recorded; fp32 under --isa)
auto                        ``encode(load_model_dir(folder, backend="auto"), docs)``: the fastest verified path of the
                            folder on this CPU, measured in this run (choice and reason recorded); the folder is the
                            ``--down-projections search`` export's (int8 IR + fp32 IR) when that path is run, else
                            the one holding every other export
onnx-fp32                   ``onnx/model.onnx`` on ONNX Runtime (plain graph)
onnx-O2                     ``onnx/model_O2.onnx``: fused Attention / SkipLayerNorm / BiasGelu
onnx-int8-dynamic-plain     dynamic int8 of the plain graph (what ``gte-st export --quantize int8`` wrote before)
onnx-int8-dynamic           dynamic int8 of the fused graph (QAttention; today's ``--quantize int8-dynamic``)
onnx-int8-static            static int8 (QDQ, calibrated on the built-in 200-text sample)
openvino                    ``openvino/openvino_model.xml`` at OpenVINO's default precision (bf16 on AMX)
openvino-int8-static        NNCF static int8 IR (same 200 calibration texts)
openvino-int8-static-search the same with ``down_projections="search"``: their outlier input channels split, and
                            the down-projections this model tolerates in int8 (chosen on the selection sample at
                            the default 0.98) quantised too
openvino-int8-weights       NNCF int8 weight compression (``--quantize int8-dynamic``; computed in bf16 / f32)
==========================  ================================================================================

Artifacts run through ``model.encode`` (what a sentence-transformers user gets) and, as ``<path>+gte``, through
``gte_st.encoding.encode`` (token-length-sorted batches; what gte-st's index / search / dedup / eval use). OpenVINO
artifacts also run as ``<path>+whole``: ``model.encode`` on the encoder as it was before slices and static shapes
(``encoder_options={"slice_rows": None, "static_shapes": 0}``: whole batches, the dynamic-shape compilation only),
and as ``<path>+latency``: ``+gte`` with every slice on the LATENCY compilation (``bulk_hint=None``) instead of a
batch's slices side by side on the THROUGHPUT one.

Parity: minimum / mean cosine of each path's document embeddings against stock-fp32, and the minimum over the export
gate's parity sample (one-word, over-long and non-English texts; ``gate`` says whether the variant passes its default
threshold). ``--sts`` adds the STS-B test Spearman and its delta against stock-fp32.

``--isa avx512_vnni`` stands for a CPU without AMX (and without AVX512-BF16): before any library loads it sets
``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI`` (honoured by torch's oneDNN and by OpenVINO's oneDNN-based CPU plugin;
verified below from oneDNN's verbose ISA line and from the kernels OpenVINO compiles), ``MKL_ENABLE_INSTRUCTIONS=
AVX512_E1`` (MKL, torch's fp32 GEMM), runs OpenVINO at ``INFERENCE_PRECISION_HINT=f32`` and gte-st at fp32 (the
defaults such a CPU would get: OpenVINO and torch decide bf16 from CPUID, which the variable does not change) and
skips the torch bf16 rows. ONNX Runtime's MLAS kernels are chosen from CPUID and honour no ISA variable: its rows in
this mode are *not* limited (the report says so); they are kept for reference only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
STOCK = ["stock-fp32", "stock-fp32-b8", "stock-bf16-autocast", "gte-bf16", "gte-bf16-compile"]
AUTO = ["gte-auto", "auto"]
ARTIFACTS = {
    "onnx-fp32": ("onnx", "none", "onnx/model.onnx"),
    "onnx-O2": ("onnx", "none", "onnx/model_O2.onnx"),
    "onnx-int8-dynamic-plain": ("onnx-plain", "int8-dynamic", "onnx/model_qint8.onnx"),
    "onnx-int8-dynamic": ("onnx", "int8-dynamic", "onnx/model_qint8.onnx"),
    "onnx-int8-static": ("onnx", "int8-static", "onnx/model_qint8_static.onnx"),
    "openvino": ("openvino", "none", "openvino/openvino_model.xml"),
    "openvino-int8-static": ("openvino", "int8-static", "openvino/openvino_model_qint8_quantized.xml"),
    "openvino-int8-static-search": ("openvino-search", "int8-static", "openvino/openvino_model_qint8_quantized.xml"),
    "openvino-int8-weights": ("openvino", "int8-dynamic", "openvino/openvino_model_qint8_weights.xml"),
}
ISA_ENV = {"avx512_vnni": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI", "MKL_ENABLE_INSTRUCTIONS": "AVX512_E1"}}


def _docs(path: Path, n: int) -> list[str]:
    """The first ``n`` documents of a BEIR corpus file (all when ``n <= 0``) as ``f"{title} {text}".strip()``: the
    title as written (read_corpus's own ``"title text"`` strips it, which 15 SciFact titles would change)."""
    from gte_st.corpus import read_corpus

    _, titles = read_corpus(path, text_field="title", title_field=None)
    _, texts = read_corpus(path, title_field=None)
    docs = [f"{title} {text}".strip() for title, text in zip(titles, texts)]
    return docs[:n] if n > 0 else docs


def _verify_torch_isa(env: dict[str, str]) -> str:
    """oneDNN's own report of the ISA it dispatches to, from a bf16 matmul in a fresh interpreter."""
    code = "import torch; torch.nn.functional.linear(torch.randn(8, 64).bfloat16(), torch.randn(64, 64).bfloat16())"
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env, "ONEDNN_VERBOSE": "1"}, capture_output=True, text=True
    )
    lines = [line for line in done.stdout.splitlines() if ",isa:" in line]
    return lines[0].split("isa:", 1)[1] if lines else "no oneDNN verbose output"


def _verify_openvino_isa(xml: Path, precision: str | None) -> dict[str, int]:
    """The kernels OpenVINO compiles for the MatMul / FullyConnected layers of ``xml`` at a fixed shape, e.g.
    ``brgemm_avx512_amx_I8`` (AMX) vs ``brgemm_avx512_I8`` (AVX-512 VNNI)."""
    import collections

    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    model.reshape({port.get_any_name(): [8, 128] for port in model.inputs})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision} if precision else {})
    kernels = collections.Counter(
        str(op.get_rt_info()["primitiveType"].astype(str))
        for op in compiled.get_runtime_model().get_ops()
        if str(op.get_rt_info()["layerType"].astype(str)) in ("FullyConnected", "MatMul")
    )
    return dict(kernels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the offline all-MiniLM-L6-v2)")
    parser.add_argument("--corpus", default=str(DATA / "beir_scifact" / "corpus.jsonl.gz"))
    parser.add_argument("--max-docs", type=int, default=600)
    parser.add_argument("--max-length", type=int, default=256, help="tokens per document (truncation)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calibration-size", type=int, default=200, help="static int8 calibration texts (built-in)")
    parser.add_argument(
        "--paths", nargs="+", default=STOCK + list(ARTIFACTS) + AUTO, choices=STOCK + list(ARTIFACTS) + AUTO
    )
    parser.add_argument("--no-gte-encode", action="store_true", help="skip the <artifact>+gte rows")
    parser.add_argument("--isa", choices=["native", "avx512_vnni"], default="native")
    parser.add_argument("--sts", action="store_true", help="also report STS-B test Spearman and its delta")
    parser.add_argument("--output", default=None, help="JSON results (e.g. docs/results/serving.json)")
    args = parser.parse_args()

    isa_env = ISA_ENV.get(args.isa, {})
    os.environ.update(isa_env)  # before torch / OpenVINO / MKL load
    import onnxruntime  # noqa: F401  (the onnx paths need it: missing, the run stops here, before any export)
    import torch
    from sentence_transformers import SentenceTransformer

    import gte_st
    from gte_st.calibration import paired_ratios
    from gte_st.encoding import encode, resolve_precision
    from gte_st.export import PARITY_SAMPLE, PARITY_THRESHOLDS, ExportParityError, export, load_exported
    from gte_st.export.auto import choose_backend, load_choice
    from gte_st.export.runtime import transformer_subdir
    from gte_st.hardware import cpu_supports_bf16, load_average, run_record

    limited = args.isa != "native"
    paths = [p for p in args.paths if not (limited and p in ("stock-bf16-autocast",))]
    for name in ("openvino", "nncf"):
        try:
            __import__(name)
        except ImportError:
            paths = [p for p in paths if not ARTIFACTS.get(p, ("",))[0].startswith("openvino")]
    header = {
        **run_record(["onnxruntime", "openvino", "nncf"]),
        "bf16_native": cpu_supports_bf16(),
        "isa": args.isa,
        "isa_env": isa_env,
        "isa_check": {"torch_onednn": _verify_torch_isa(isa_env)},
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
    }
    if limited:
        header["isa_check"]["onnxruntime"] = "not limited: MLAS dispatches on CPUID and honours no ISA variable"
    print(json.dumps(header, indent=1), flush=True)

    source = Path(args.model or gte_st.default_base_model())
    docs = _docs(Path(args.corpus), args.max_docs)
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    os.environ["GTE_ST_CACHE"] = str(work / "cache")  # "auto" is calibrated afresh in this run
    try:
        model_dir, plain_dir, search_dir = work / "model", work / "model-plain", work / "model-search"
        shutil.copytree(source, model_dir)
        torch_model = SentenceTransformer(str(model_dir), device="cpu")
        torch_model.max_seq_length = args.max_length

        # ---- export every artifact asked for (gates reported, never enforced here: a refused int8 is measured too)
        exports: dict[str, dict] = {}
        no_gate = {"fp32": 0.0, "bf16": 0.0, "int8": 0.0}
        wanted = {ARTIFACTS[p][:2] for p in paths if p in ARTIFACTS}
        # every export of a format also writes its unquantised files (onnx/model.onnx + model_O2.onnx, the fp32 IR)
        wanted -= {(fmt, "none") for fmt, q in list(wanted) if q != "none" and fmt != "onnx-plain"}
        for fmt, quantize in sorted(wanted):
            target, options = model_dir, {"thresholds": no_gate}
            if fmt == "onnx-plain":
                if not plain_dir.exists():
                    shutil.copytree(source, plain_dir)
                target, fmt = plain_dir, "onnx"
            if fmt == "openvino-search":  # the search must choose at the real threshold; its gate is reported as is
                shutil.copytree(source, search_dir)
                target, fmt = search_dir, "openvino"
                options = {"thresholds": {**no_gate, "int8": PARITY_THRESHOLDS["int8"]}, "down_projections": "search"}
            start = time.perf_counter()
            try:
                report = export(
                    target, fmt, quantize, optimize=target is model_dir, calibration_size=args.calibration_size,
                    **options,
                )  # fmt: skip
            except ExportParityError as exc:
                report = exc.report
            for v in report.variants:
                key = f"{target.name}:{v.file_name}"
                exports[key] = {
                    "variant": v.variant,
                    "gate_min_cosine": v.min_cosine,
                    "gate_threshold": PARITY_THRESHOLDS[v.precision],
                    "gate": "pass" if v.min_cosine >= PARITY_THRESHOLDS[v.precision] else "REFUSED by default",
                    "worst_text": v.worst_text,
                    "size_mb": v.size_mb,
                    **{
                        k: v.details[k]
                        for k in ("fused_operators", "calibration_texts", "down_projection_search")
                        if k in v.details
                    },
                }
            print(f"exported {fmt}/{quantize} in {time.perf_counter() - start:.0f}s", flush=True)
        header["exports"] = exports

        ov_precision = "fp32" if limited else None
        if any(ARTIFACTS.get(p, ("",))[0].startswith("openvino") for p in paths):
            for folder in (model_dir, search_dir):
                for rel in ("openvino/openvino_model.xml", "openvino/openvino_model_qint8_quantized.xml"):
                    if (folder / rel).is_file():
                        key = f"openvino:{rel}" if folder is model_dir else f"openvino:{folder.name}/{rel}"
                        header["isa_check"][key] = _verify_openvino_isa(folder / rel, "f32" if limited else None)

        # ---- the encode functions, one per row
        gte_precision = "fp32" if limited else "bf16"
        fns, models = {}, {}
        failed: dict[str, str] = {}

        def stock(m, autocast=False, batch_size=args.batch_size):
            def fn(texts):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    out = m.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
                return np.asarray(out, dtype=np.float32)

            return fn

        for name in paths:
            if name == "stock-fp32":
                fns[name], models[name] = stock(torch_model), (torch_model, "fp32")
            elif name == "stock-fp32-b8":
                fns[name], models[name] = stock(torch_model, batch_size=8), (torch_model, "fp32")
            elif name == "stock-bf16-autocast":
                fns[name], models[name] = stock(torch_model, autocast=True), (torch_model, "bf16-autocast")
            elif name == "gte-bf16":
                row = "gte-bf16" if not limited else "gte-fp32"
                fns[row] = lambda t: encode(torch_model, t, batch_size=args.batch_size, precision=gte_precision)
                models[row] = (torch_model, gte_precision)
            elif name == "gte-auto":
                header["gte_auto_precision"] = resolve_precision("auto", torch_model)
                fns[name] = lambda t: encode(torch_model, t, batch_size=args.batch_size)
                models[name] = (torch_model, "auto")
            elif name == "auto":
                folder = search_dir if search_dir.exists() else model_dir
                start = time.perf_counter()
                choice = choose_backend(folder)
                header["backend_auto"] = {
                    "folder": folder.name, "variant": choice.variant, "precision": choice.precision,
                    "reason": choice.describe(), "choice_s": round(time.perf_counter() - start, 1),
                }  # fmt: skip
                print(f"backend auto: {choice.describe()}", flush=True)
                auto_model = load_choice(folder, choice)
                auto_model.max_seq_length = args.max_length
                fns[name] = lambda t, m=auto_model: encode(m, t, batch_size=args.batch_size)
                models[name] = (auto_model, "auto")
            elif name == "gte-bf16-compile":
                row = "gte-bf16-compile" if not limited else "gte-fp32-compile"
                fns[row] = lambda t: encode(
                    torch_model, t, batch_size=args.batch_size, precision=gte_precision, compile=True
                )
                models[row] = (torch_model, gte_precision)
            else:
                fmt, _, rel = ARTIFACTS[name]
                target = {"onnx-plain": plain_dir, "openvino-search": search_dir}.get(fmt, model_dir)
                if not (target / transformer_subdir(target) / rel).is_file():
                    failed[name] = "not written (refused by its gate)"
                    continue
                kwargs = {"precision": ov_precision} if rel.endswith(".xml") else {}
                m = load_exported(target, rel, **kwargs)
                m.max_seq_length = args.max_length
                fns[name], models[name] = stock(m), (m, "fp32")
                if not args.no_gte_encode:
                    fns[f"{name}+gte"] = lambda t, m=m: encode(m, t, batch_size=args.batch_size)
                    models[f"{name}+gte"] = (m, "fp32")
                if rel.endswith(".xml"):
                    whole = load_exported(
                        target, rel, **kwargs, encoder_options={"slice_rows": None, "static_shapes": 0}
                    )
                    whole.max_seq_length = args.max_length
                    fns[f"{name}+whole"], models[f"{name}+whole"] = stock(whole), (whole, "fp32")
                    latency = load_exported(target, rel, **kwargs, encoder_options={"bulk_hint": None})
                    latency.max_seq_length = args.max_length
                    fns[f"{name}+latency"] = lambda t, m=latency: encode(m, t, batch_size=args.batch_size)
                    models[f"{name}+latency"] = (latency, "fp32")
        for name, fn in list(fns.items()):  # warm-up: kernels, allocators, OpenVINO's shape caches
            try:
                fn(docs[:16])
            except RuntimeError as exc:  # e.g. a runtime with no kernel for this graph under --isa: record, go on
                failed[name] = str(exc).strip().splitlines()[-1][:300]
                print(f"{name}: failed at warm-up, not measured: {failed[name]}", flush=True)
                del fns[name], models[name]
        header["failed"] = failed

        # ---- interleaved rounds
        names = list(fns)
        times: dict[str, list[float]] = {n: [] for n in names}
        embeddings: dict[str, np.ndarray] = {}
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                embeddings[name] = fns[name](docs)
                times[name].append(time.perf_counter() - start)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.1f}s" for n in names), flush=True)

        # ---- parity and quality
        reference = embeddings.get("stock-fp32")
        sample_reference = fns["stock-fp32"](PARITY_SAMPLE) if "stock-fp32" in fns else None
        sts_path = DATA / "stsb" / "sts-test.csv"
        if args.sts:
            from gte_st.evaluation import evaluate_sts
        rows = {}
        for name in names:
            docs_s = [len(docs) / t for t in times[name]]
            row = {
                "docs_per_s": round(statistics.median(docs_s), 2),
                "docs_per_s_rounds": [round(x, 2) for x in docs_s],
            }
            if reference is not None:
                cos = (embeddings[name] * reference).sum(1)
                row.update(min_cos_docs=round(float(cos.min()), 5), mean_cos_docs=round(float(cos.mean()), 5))
                sample_cos = (fns[name](PARITY_SAMPLE) * sample_reference).sum(1)
                row["min_cos_parity_sample"] = round(float(sample_cos.min()), 5)
            base = name.removesuffix("+gte").removesuffix("+whole").removesuffix("+latency")
            if base in ARTIFACTS:
                fmt, _, rel = ARTIFACTS[base]
                row["file"] = rel
                folder = {"onnx-plain": "model-plain", "openvino-search": "model-search"}.get(fmt, "model")
                row["gate"] = exports.get(f"{folder}:{rel}", {}).get("gate")
            if args.sts:
                model, precision = models[name]
                row["stsb_test_spearman"] = round(
                    100 * evaluate_sts(model, sts_path, precision=precision).metrics["spearman"], 2
                )
            rows[name] = row
        if "stock-fp32" in rows:
            base = rows["stock-fp32"]
            for row in rows.values():
                row["vs_stock_fp32"] = round(row["docs_per_s"] / base["docs_per_s"], 2)
                if args.sts:
                    row["stsb_delta"] = round(row["stsb_test_spearman"] - base["stsb_test_spearman"], 2)
        if "auto" in times:
            # auto against every other row, round by round (the same machine load): its docs/s over theirs, the
            # median over rounds; issue 28's goal is auto within 5 % of the fastest row
            paired = paired_ratios(times, "auto")  # their time over auto's = auto's docs/s over theirs
            header["auto_paired"] = {name: round(ratio, 3) for name, ratio in paired.items() if name != "auto"}
            if header["auto_paired"]:
                fastest = min(header["auto_paired"], key=header["auto_paired"].get)
                header["auto_vs_fastest"] = {"path": fastest, "auto_rate_ratio": header["auto_paired"][fastest]}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    header["loadavg_at_end"] = load_average()
    print(f"\n{len(docs)} documents, length {args.max_length}, {args.rounds} interleaved rounds, ISA {args.isa}; "
          f"load average {header['loadavg_at_start'][0]} at start, {header['loadavg_at_end'][0]} at end")  # fmt: skip
    sts_head = f" {'STS-B':>6} {'delta':>6}" if args.sts else ""
    print(
        f"{'path':<30} {'docs/s':>8} {'x fp32':>7} {'min cos':>8} {'mean cos':>9} {'sample min':>10} {'gate':>8}{sts_head}"
    )
    for name, r in rows.items():
        sts_cols = f" {r['stsb_test_spearman']:>6.2f} {r['stsb_delta']:>+6.2f}" if args.sts else ""
        print(
            f"{name:<30} {r['docs_per_s']:>8.1f} {r.get('vs_stock_fp32', float('nan')):>7.2f} "
            f"{r.get('min_cos_docs', float('nan')):>8.4f} {r.get('mean_cos_docs', float('nan')):>9.5f} "
            f"{r.get('min_cos_parity_sample', float('nan')):>10.4f} {str(r.get('gate') or '-')[:8]:>8}{sts_cols}"
        )
    if "auto_vs_fastest" in header:
        best = header["auto_vs_fastest"]
        print(
            f"auto vs the fastest other row ({best['path']}), paired by round: {best['auto_rate_ratio']:.3f}x its docs/s"
        )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({**header, "docs": len(docs), "results": rows}, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
