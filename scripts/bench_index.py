#!/usr/bin/env python
"""Index benchmark: what a quantised index costs in retrieval quality, and what approximate search costs in recall
and gains in latency, with the offline all-MiniLM-L6-v2 (or ``--model``).

    python scripts/bench_index.py --output index.json

1. **Index precision** (``--sections precision``): the full SciFact corpus (or ``--max-corpus`` documents, all
   relevant ones kept) encoded once in fp32, then indexed as float32, int8 (uint8 scalar quantisation with
   per-dimension ranges) and binary (sign bits); the test queries searched exactly, int8 / binary rescored with the
   float query over 4 x k candidates (sentence-transformers' ``semantic_search_faiss``); nDCG@10, Recall@10 /
   Recall@100 and bytes per document.
2. **ANN** (``--sections ann``): the unique subjects of 20 Newsgroups (``Re:`` prefixes stripped: repeated subjects
   would fill an exact top 10 with ties), ``--ann-queries`` of them as queries and the rest as corpus; flat (exact),
   HNSW (M=32, efSearch 16 / 64 / 128) and IVF-flat (nprobe 1 / 8); recall@10 against the exact top 10 and the
   single-query search latency (query encoding excluded). A timing: run it on a quiet machine.

Results: docs/benchmarks.md (search).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import DATA  # noqa: E402

HNSW_EF_SEARCH = (16, 64, 128)
IVF_NPROBE = (1, 8)


def ndcg_recall(results: list[list[str]], relevant: list[set[str]]) -> dict[str, float]:
    """nDCG@10 (binary relevance), Recall@10 and Recall@100 of ranked id lists, averaged over queries."""
    ndcg, r10, r100 = [], [], []
    for hits, rel in zip(results, relevant):
        dcg = sum(1 / np.log2(rank + 2) for rank, doc in enumerate(hits[:10]) if doc in rel)
        ideal = sum(1 / np.log2(rank + 2) for rank in range(min(len(rel), 10)))
        ndcg.append(dcg / ideal)
        r10.append(len(rel & set(hits[:10])) / len(rel))
        r100.append(len(rel & set(hits[:100])) / len(rel))
    return {
        "ndcg_at_10": float(np.mean(ndcg)),
        "recall_at_10": float(np.mean(r10)),
        "recall_at_100": float(np.mean(r100)),
    }


def index_precision(model, scifact: Path, max_corpus: int | None, work: Path) -> dict:
    """float32 / int8 / binary indexes of the same fp32 SciFact embeddings, searched with the test queries."""
    from gte_st.encoding import encode
    from gte_st.evaluation.readers import read_beir
    from gte_st.search import build_index

    data = read_beir(scifact)
    relevant_ids = {doc for docs in data.qrels.values() for doc in docs}
    ids = list(data.corpus)
    if max_corpus is not None:
        others = [d for d in ids if d not in relevant_ids][: max(0, max_corpus - len(relevant_ids))]
        keep = relevant_ids | set(others)
        ids = [d for d in ids if d in keep]
    texts = [data.corpus[d] for d in ids]
    corpus_emb = encode(model, texts, precision="fp32")
    qids = [q for q in data.queries if data.qrels.get(q)]
    query_emb = encode(model, [data.queries[q] for q in qids], precision="fp32")
    relevant = [data.qrels[q] for q in qids]
    rows = {}
    for precision in ("float32", "int8", "binary"):
        index = build_index(
            (ids, texts), model, work / f"idx-{precision}", precision=precision, embeddings=corpus_emb,
            show_progress_bar=False, encode_precision="fp32",
        )  # fmt: skip
        hits = index.search_embeddings(query_emb, k=100)
        rows[precision] = {
            **{k: round(v, 4) for k, v in ndcg_recall([[h.id for h in r] for r in hits], relevant).items()},
            "embedding_bytes_per_doc": int(index.embeddings[0].nbytes),
        }
        print(precision, rows[precision], flush=True)
    return {"corpus": len(ids), "queries": len(qids), "results": rows}


def ann(model, subjects_file: Path, n_queries: int, max_corpus: int, work: Path) -> dict:
    """Recall@10 against exact search and single-query latency of HNSW and IVF on 20 Newsgroups subjects."""
    from gte_st.encoding import encode
    from gte_st.search import build_index

    with open(subjects_file, encoding="utf8") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        subjects = sorted({row["subject"].removeprefix("Re: ").strip() for row in rows} - {""})
    order = np.random.default_rng(0).permutation(len(subjects))  # disjoint query / corpus subjects
    queries = [subjects[i] for i in order[:n_queries]]
    corpus = [subjects[i] for i in order[n_queries:][:max_corpus]]
    corpus_emb = encode(model, corpus, batch_size=64, precision="auto")
    query_emb = encode(model, queries, precision="auto")
    ids = [str(i) for i in range(len(corpus))]
    settings = {"flat (exact)": ("flat", {})}
    settings |= {f"hnsw M=32 ef={ef}": ("hnsw", {"ef_search": ef}) for ef in HNSW_EF_SEARCH}
    settings |= {f"ivf nprobe={n}": ("ivf", {"nprobe": n}) for n in IVF_NPROBE}
    indexes: dict = {}
    results, exact_ids = {}, None
    for name, (index_type, search_kwargs) in settings.items():
        if index_type not in indexes:
            indexes[index_type] = build_index(
                (ids, corpus), model, work / f"ann-{index_type}", index_type=index_type, embeddings=corpus_emb,
                show_progress_bar=False,
            )  # fmt: skip
        index = indexes[index_type]
        index.search_embeddings(query_emb[:5], k=10, **search_kwargs)  # warm-up
        start = time.perf_counter()
        found = [index.search_embeddings(query_emb[i : i + 1], k=10, **search_kwargs)[0] for i in range(len(queries))]
        latency_ms = (time.perf_counter() - start) / len(queries) * 1000
        found_ids = [[h.id for h in hits] for hits in found]
        exact_ids = exact_ids or found_ids  # the first setting is the exact one
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found_ids, exact_ids)])
        results[name] = {"recall_at_10_vs_exact": round(float(recall), 4), "ms_per_query": round(latency_ms, 3)}
        print(name, results[name], flush=True)
    return {"corpus": len(corpus), "queries": len(queries), "results": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the offline all-MiniLM-L6-v2)")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="folder holding beir_scifact/, twentynewsgroups/")
    parser.add_argument("--sections", nargs="+", choices=["precision", "ann"], default=["precision", "ann"])
    parser.add_argument("--max-corpus", type=int, default=None, help="SciFact documents (all relevant ones kept)")
    parser.add_argument("--ann-corpus", type=int, default=20000, help="20 Newsgroups subjects indexed at most")
    parser.add_argument("--ann-queries", type=int, default=300)
    parser.add_argument("--output", type=Path, default=None, help="JSON results")
    args = parser.parse_args()

    import faiss  # noqa: F401  (every section needs it: missing, the run stops here, not after the encoding)
    from sentence_transformers import SentenceTransformer

    import gte_st
    from gte_st.hardware import load_average, run_record

    report: dict = {
        **run_record(["faiss-cpu"]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    model = SentenceTransformer(args.model or str(gte_st.default_base_model()), device="cpu")
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        if "precision" in args.sections:
            report["index_precision"] = index_precision(model, args.data_dir / "beir_scifact", args.max_corpus, work)
        if "ann" in args.sections:
            subjects = args.data_dir / "twentynewsgroups" / "subjects.tsv"
            report["ann"] = ann(model, subjects, args.ann_queries, args.ann_corpus, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["loadavg_at_end"] = load_average()
    print(json.dumps(report, indent=1))
    if args.output:
        args.output.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
