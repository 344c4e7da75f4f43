#!/usr/bin/env python
"""Benchmark 3 -- encoding throughput on CPU: sentence-transformers' default ``encode`` (fp32) vs gte-st's fast
path, on the SciFact corpus (5183 abstracts, title + text), with the offline all-MiniLM-L6-v2 copy.

    python scripts/bench_encode.py [--max-docs N] [--chunks 8] [--output bench_encode.json]

Paths, all run in the same process on the same documents:

* ``st-fp32``       ``model.encode(docs)`` -- the stock default (batch 32, fp32);
* ``st-autocast``   the same inside ``torch.autocast("cpu", dtype=torch.bfloat16)`` -- the known floor;
* ``gte-bf16``      ``gte_st.encoding.encode(model, docs, precision="bf16")``: token-length-sorted batches, bf16
                     weight copies (every op in bf16, AMX matmuls);
* ``gte-autocast``  ``gte_st.encoding.encode(model, docs, precision="bf16-autocast")``: the same batches under
                     autocast (optional: ``--paths ... gte-autocast``).

The machine is shared, so the documents are split into ``--chunks`` chunks and the paths take turns on each chunk
(rotating the order): every path sees the same mix of load. Wall-clock docs/s and CPU-time docs/s are both reported.
Quality: minimum / mean cosine of each path's embeddings against ``st-fp32``, STS-B test Spearman, and SciFact test
nDCG@10 from each path's corpus embeddings (exact FAISS search; queries encoded by the same path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(DATA))
    parser.add_argument(
        "--max-docs", type=int, default=None, help="N documents: the test-relevant ones, then others (default: all)"
    )
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64, help="gte-st batch size (stock keeps its default 32)")
    parser.add_argument(
        "--paths",
        nargs="+",
        default=["st-fp32", "st-autocast", "gte-bf16"],
        choices=["st-fp32", "st-autocast", "gte-bf16", "gte-autocast"],
    )
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import faiss
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    import gte_st
    from gte_st.encoding import cpu_supports_bf16, encode
    from gte_st.evaluation import evaluate_sts
    from gte_st.evaluation.readers import read_beir
    from gte_st.evaluation.retrieval import limit_corpus

    load = os.getloadavg()
    header = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_at_start": [round(x, 2) for x in load],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, bf16 matmul support: {cpu_supports_bf16()}",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "sentence_transformers": sentence_transformers.__version__,
        "gte_st": gte_st.__version__,
        "command": " ".join(["python", *sys.argv]),
    }
    print(json.dumps(header, indent=1))

    model = SentenceTransformer(gte_st.default_base_model(), device="cpu")
    data = read_beir(Path(args.data_root) / "beir_scifact", "test")
    ids = limit_corpus(data, args.max_docs)  # all, or every relevant document first, then the others in order
    docs = [data.corpus[i] for i in ids]
    queries = [data.queries[q] for q in data.queries]

    def st_fp32(texts: list[str]) -> np.ndarray:
        return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)

    def st_autocast(texts: list[str]) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)

    def gte_bf16(texts: list[str]) -> np.ndarray:
        return encode(model, texts, batch_size=args.batch_size, precision="bf16")

    def gte_autocast(texts: list[str]) -> np.ndarray:
        return encode(model, texts, batch_size=args.batch_size, precision="bf16-autocast")

    paths = {"st-fp32": st_fp32, "st-autocast": st_autocast, "gte-bf16": gte_bf16, "gte-autocast": gte_autocast}
    paths = {name: paths[name] for name in args.paths}
    for fn in paths.values():  # warm-up (oneDNN kernels, allocator)
        fn(docs[:16])

    bounds = np.linspace(0, len(docs), args.chunks + 1).astype(int)
    wall = dict.fromkeys(paths, 0.0)
    cpu = dict.fromkeys(paths, 0.0)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in paths}
    names = list(paths)
    for c in range(args.chunks):
        chunk = docs[bounds[c] : bounds[c + 1]]
        for name in names[c % len(names) :] + names[: c % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            parts[name].append(paths[name](chunk))
            wall[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
        print(f"chunk {c + 1}/{args.chunks}: " + ", ".join(f"{n} {wall[n]:.0f}s" for n in names), flush=True)
    embeddings = {name: np.concatenate(chunks) for name, chunks in parts.items()}

    # Quality: parity, STS-B test, SciFact test nDCG@10 on the corpus that was encoded.
    reference = embeddings.get("st-fp32")
    evaluator = InformationRetrievalEvaluator(
        data.queries, {i: data.corpus[i] for i in ids}, data.qrels, ndcg_at_k=[10], write_csv=False
    )
    rows = {}
    for name, emb in embeddings.items():
        q_emb = paths[name](queries)
        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(np.ascontiguousarray(emb, dtype=np.float32))
        scores, hits = index.search(np.ascontiguousarray(q_emb, dtype=np.float32), 100)
        qid_pos = {q: i for i, q in enumerate(data.queries)}
        results = [
            [{"corpus_id": ids[j], "score": float(s)} for s, j in zip(scores[qid_pos[q]], hits[qid_pos[q]]) if j >= 0]
            for q in evaluator.queries_ids
        ]
        ndcg = evaluator.compute_metrics(results)["ndcg@k"][10]
        precision = {
            "st-fp32": "fp32",
            "st-autocast": "bf16-autocast",
            "gte-bf16": "bf16",
            "gte-autocast": "bf16-autocast",
        }[name]
        sts = evaluate_sts(model, Path(args.data_root) / "stsb" / "sts-test.csv", precision=precision)
        cos = (emb * reference).sum(1) if reference is not None else np.array([np.nan])
        rows[name] = {
            "docs_per_s_wall": len(docs) / wall[name],
            "docs_per_s_cpu": len(docs) / cpu[name],
            "wall_s": wall[name],
            "cpu_s": cpu[name],
            "min_cos_vs_st_fp32": float(cos.min()),
            "mean_cos_vs_st_fp32": float(cos.mean()),
            "stsb_test_spearman": 100 * sts.metrics["spearman"],
            "scifact_test_ndcg_at_10": 100 * ndcg,
        }
    base = rows.get("st-fp32")
    print(f"\n{len(docs)} SciFact documents, {args.chunks} interleaved chunks, load average at start {load[0]:.2f}")
    print(f"{'path':<12} {'docs/s':>8} {'x wall':>7} {'x cpu':>7} {'min cos':>8} {'STS-B':>6} {'SciFact':>8}")
    for name, r in rows.items():
        r["speedup_wall"] = r["docs_per_s_wall"] / base["docs_per_s_wall"] if base else float("nan")
        r["speedup_cpu"] = r["docs_per_s_cpu"] / base["docs_per_s_cpu"] if base else float("nan")
        print(
            f"{name:<12} {r['docs_per_s_wall']:>8.1f} {r['speedup_wall']:>7.2f} {r['speedup_cpu']:>7.2f} "
            f"{r['min_cos_vs_st_fp32']:>8.5f} {r['stsb_test_spearman']:>6.2f} {r['scifact_test_ndcg_at_10']:>8.2f}"
        )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.output:
        Path(args.output).write_text(json.dumps({**header, "docs": len(docs), "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
