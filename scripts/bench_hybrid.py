#!/usr/bin/env python
"""BM25 -> GTE two-stage retrieval: pure re-scoring vs the hybrid score ``w * BM25 + (1 - w) * cosine``
(``gte_st.search.fuse_scores``), on BEIR SciFact with the offline all-MiniLM-L6-v2 copy.

    python scripts/bench_hybrid.py [--k 100] [--precision fp32] [--cache-dir ~/.cache/gte-st] [--output hybrid.json]

The weight ``w`` is chosen on the SciFact **train** queries (809, disjoint from the 300 test queries) and reported on
the test queries, next to BM25 alone, dense retrieval alone and pure re-scoring (``w = 0``), all in one run on the
full corpus (5,183 documents). Each query's candidates are BM25's top ``--k``; their cosines come from one
encoding of the whole corpus (cached with ``--cache-dir``), exactly what ``gte-st eval --task retrieval
--bm25-rerank K --bm25-weight W`` computes, without re-encoding the candidates for every weight.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WEIGHTS = [round(0.1 * i, 1) for i in range(11)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA / "beir_scifact"))
    parser.add_argument("--model", default=None, help="model directory (default: the offline all-MiniLM-L6-v2)")
    parser.add_argument("--k", type=int, default=100, help="BM25 candidates per query")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--cache-dir", default=None, help="corpus-embedding cache (gte_st.evaluation's)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import faiss
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    import gte_st
    from gte_st.encoding import encode
    from gte_st.evaluation.readers import read_beir
    from gte_st.evaluation.retrieval import encode_corpus_cached
    from gte_st.hardware import run_record
    from gte_st.search import BM25Retriever, fuse_scores

    run = run_record(["faiss-cpu"])
    start = time.time()
    model = SentenceTransformer(args.model or gte_st.default_base_model(), device="cpu")
    splits = {split: read_beir(args.data, split) for split in ("train", "test")}
    corpus = splits["test"].corpus
    ids = list(corpus)
    texts = [corpus[doc] for doc in ids]
    row = {doc: i for i, doc in enumerate(ids)}
    doc_emb, cached = encode_corpus_cached(
        model, ids, texts, cache_dir=args.cache_dir, precision=args.precision, name=Path(args.data).name
    )
    bm25 = BM25Retriever(ids, texts)
    faiss_index = faiss.IndexFlatIP(doc_emb.shape[1])
    faiss_index.add(np.ascontiguousarray(doc_emb, dtype=np.float32))

    def metrics(evaluator, lists: list[list[tuple[str, float]]]) -> dict[str, float]:
        scores = evaluator.compute_metrics([[{"corpus_id": d, "score": float(s)} for d, s in row_] for row_ in lists])
        return {
            "ndcg_at_10": round(float(scores["ndcg@k"][10]), 4),
            "recall_at_10": round(float(scores["recall@k"][10]), 4),
            "recall_at_100": round(float(scores["recall@k"][100]), 4),
        }

    report: dict = {
        **run,
        "settings": vars(args),
        "corpus": len(ids),
        "corpus_embeddings_from_cache": cached,
    }
    for split, data in splits.items():
        evaluator = InformationRetrievalEvaluator(
            data.queries, corpus, data.qrels, ndcg_at_k=[10], precision_recall_at_k=[10, 100], write_csv=False
        )
        qids = evaluator.queries_ids
        q_emb = encode(model, [data.queries[q] for q in qids], precision=args.precision)
        candidates = bm25.search([data.queries[q] for q in qids], args.k)
        cosines, hits = faiss_index.search(np.ascontiguousarray(q_emb), 100)
        rows = {
            "bm25": metrics(evaluator, candidates),
            "dense": metrics(evaluator, [[(ids[j], s) for s, j in zip(cs, hs)] for cs, hs in zip(cosines, hits)]),
        }
        for weight in WEIGHTS:
            fused = []
            for qi, cands in enumerate(candidates):
                docs = [doc for doc, _ in cands]
                dense = doc_emb[[row[doc] for doc in docs]] @ q_emb[qi] if docs else np.zeros(0)
                scores = fuse_scores(np.array([s for _, s in cands]), dense, weight)
                fused.append(sorted(zip(docs, scores.tolist()), key=lambda item: -item[1]))
            rows[f"bm25 top-{args.k} -> hybrid w={weight}"] = metrics(evaluator, fused)
        report[split] = {"queries": len(qids), "results": rows}
        print(split, json.dumps(rows, indent=1), flush=True)

    train = report["train"]["results"]
    best = max(WEIGHTS, key=lambda w: train[f"bm25 top-{args.k} -> hybrid w={w}"]["ndcg_at_10"])
    report["chosen_weight_on_train"] = best
    test = report["test"]["results"]
    print(f"\nweight chosen on train (nDCG@10): {best}")
    print(f"{'test (' + str(report['test']['queries']) + ' queries)':<32} {'nDCG@10':>8} {'R@10':>7} {'R@100':>7}")
    for name in ("bm25", "dense", f"bm25 top-{args.k} -> hybrid w=0.0", f"bm25 top-{args.k} -> hybrid w={best}"):
        m = test[name]
        print(f"{name:<32} {m['ndcg_at_10']:>8.4f} {m['recall_at_10']:>7.4f} {m['recall_at_100']:>7.4f}")
    report["seconds"] = round(time.time() - start, 1)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
