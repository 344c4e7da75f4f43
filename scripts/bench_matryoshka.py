"""Matryoshka: retrieval and STS quality at every dimension, and index size and search time per dimension.

For each model (the base model and the models ``scripts/bench_train_quality.py`` trained, e.g. its ``mse`` and
``matryoshka`` arms), SciFact (test queries, full corpus) and STS-B test are encoded once at full dimension, in bf16 at
length 256 as benchmark 1 evaluates; every dimension's embeddings are the first d dimensions re-normalised -- exactly
what ``gte_st.encoding.encode(truncate_dim=d)`` (and so ``gte-st eval --truncate-dim d``) returns, which
``--check-dim`` verifies on the first model against ``gte_st.evaluation`` run with the model's ``truncate_dim``.
SciFact nDCG@10 is computed by sentence-transformers' ``InformationRetrievalEvaluator.compute_metrics`` over exact
inner-product search, STS-B as Spearman x 100 of the cosines, as in ``gte_st.evaluation``.

For ``--index-model``, a flat float32 index is built per dimension with ``gte_st.search.build_index`` (from the
truncated embeddings) and its files' size and the time of ``Index.search_embeddings`` over the 300 test queries
(median of ``--repeats``) are reported. Search time is a speed figure: indicative only on a shared machine.

    python scripts/bench_matryoshka.py --models base=BASE mse-seed0=bench-quality/models/60x32/mse-seed0 ... \
        --index-model matryoshka-seed0 --results docs/results/matryoshka.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def truncate(embeddings: np.ndarray, dim: int) -> np.ndarray:
    """The first ``dim`` dimensions, L2-normalised (what ``encode(truncate_dim=dim)`` returns)."""
    head = embeddings[:, :dim].astype(np.float32)
    return head / np.linalg.norm(head, axis=1, keepdims=True)


def scifact_ndcg(query_emb: np.ndarray, doc_emb: np.ndarray, evaluator, corpus_ids: list[str]) -> float:
    scores = query_emb @ doc_emb.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    results = [
        [{"corpus_id": corpus_ids[j], "score": float(row[j])} for j in order] for row, order in zip(scores, top)
    ]
    return 100 * evaluator.compute_metrics(results)["ndcg@k"][10]


def sts_spearman(first: np.ndarray, second: np.ndarray, gold: list[float]) -> float:
    from scipy.stats import spearmanr

    return 100 * float(spearmanr((first * second).sum(axis=1), gold).statistic)


def encode_model(path: str, data: Path, args: argparse.Namespace) -> dict:
    """Full-dimension embeddings of the SciFact queries and corpus and the STS-B test sentences."""
    from sentence_transformers import SentenceTransformer

    from gte_st.encoding import encode
    from gte_st.evaluation.readers import read_beir, read_sts
    from gte_st.evaluation.retrieval import encode_corpus_cached

    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = args.max_seq_length
    beir = read_beir(data / "beir_scifact", "test")
    corpus_ids = list(beir.corpus)
    query_ids = [qid for qid in beir.queries if beir.qrels.get(qid)]
    docs, _ = encode_corpus_cached(
        model, corpus_ids, [beir.corpus[d] for d in corpus_ids], cache_dir=args.cache_dir, precision="bf16",
        name="beir_scifact",
    )  # fmt: skip
    query_prompt = "query" if model.prompts.get("query") else None
    queries = encode(model, [beir.queries[q] for q in query_ids], precision="bf16", prompt_name=query_prompt)
    sts = read_sts(data / "stsb" / "sts-test.csv")
    return {
        "model": model,
        "beir": beir,
        "corpus_ids": corpus_ids,
        "query_ids": query_ids,
        "docs": docs,
        "queries": queries,
        "sts": (encode(model, sts.sentences1, precision="bf16"), encode(model, sts.sentences2, precision="bf16")),
        "sts_gold": sts.scores,
    }


def evaluator_for(encoded: dict):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    beir = encoded["beir"]
    return InformationRetrievalEvaluator(
        queries={q: beir.queries[q] for q in encoded["query_ids"]},
        corpus={d: beir.corpus[d] for d in encoded["corpus_ids"]},
        relevant_docs={q: beir.qrels[q] for q in encoded["query_ids"]},
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[10, 100], map_at_k=[100],
        write_csv=False,
    )  # fmt: skip


def check_dim(encoded: dict, dim: int, data: Path, args: argparse.Namespace, measured: dict) -> dict:
    """gte_st.evaluation with ``model.truncate_dim = dim`` gives the scores computed here from truncated embeddings."""
    from gte_st.evaluation import evaluate_retrieval, evaluate_sts

    model = encoded["model"]
    model.truncate_dim = dim
    try:
        scifact = 100 * evaluate_retrieval(model, data / "beir_scifact", precision="bf16").metrics["ndcg_at_10"]
        sts = 100 * evaluate_sts(model, data / "stsb" / "sts-test.csv", precision="bf16").metrics["spearman"]
    finally:
        model.truncate_dim = None
    return {
        "dim": dim,
        "scifact_ndcg@10": [round(scifact, 4), round(measured["scifact_ndcg@10"], 4)],
        "stsb_test": [round(sts, 4), round(measured["stsb_test"], 4)],
    }


def index_per_dim(encoded: dict, dims: list[int], repeats: int) -> list[dict]:
    from gte_st.search import Index, build_index

    rows = []
    texts = [encoded["beir"].corpus[d] for d in encoded["corpus_ids"]]
    with tempfile.TemporaryDirectory() as tmp:
        for dim in dims:
            out = Path(tmp) / f"index-{dim}"
            build_index(
                (encoded["corpus_ids"], texts), encoded["model"], out, embeddings=truncate(encoded["docs"], dim),
                truncate_dim=dim if dim < encoded["docs"].shape[1] else None, show_progress_bar=False,
            )  # fmt: skip
            index = Index.load(out)
            queries = truncate(encoded["queries"], dim)
            index.search_embeddings(queries, 10)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                index.search_embeddings(queries, 10)
                times.append(time.perf_counter() - start)
            rows.append(
                {
                    "dim": dim,
                    "embeddings_mb": round((out / "embeddings.npy").stat().st_size / 2**20, 3),
                    "faiss_mb": round((out / "index.faiss").stat().st_size / 2**20, 3),
                    "search_ms_per_query": round(1000 * statistics.median(times) / len(queries), 4),
                    "queries": len(queries),
                    "documents": len(texts),
                }
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, metavar="NAME=PATH", help="models to score")
    parser.add_argument("--dims", default="384,256,128,64")
    parser.add_argument("--max-seq-length", type=int, default=256, help="all-MiniLM-L6-v2's own setting")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="the shared data folder")
    parser.add_argument("--cache-dir", default=None, help="corpus embeddings cache (shared with gte_st.evaluation)")
    parser.add_argument("--index-model", default=None, help="NAME of the model whose index is built per dimension")
    parser.add_argument("--repeats", type=int, default=5, help="timed searches per dimension")
    parser.add_argument("--check-dim", type=int, default=None, help="verify one dimension against gte_st.evaluation")
    parser.add_argument("--results", default="docs/results/matryoshka.json", help="JSON results file (merged)")
    args = parser.parse_args()
    dims = [int(d) for d in args.dims.split(",")]
    if malformed := [m for m in args.models if "=" not in m]:
        parser.error(f"--models expects NAME=PATH, got {malformed}")
    from gte_st.hardware import run_record

    data = Path(args.data_dir).resolve()
    results_file = Path(args.results)
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    results["_about"] = run_record(["faiss-cpu"])
    for item in args.models:
        name, path = item.split("=", 1)
        encoded = encode_model(path, data, args)
        evaluator = evaluator_for(encoded)
        scores = {}
        for dim in dims:
            scores[str(dim)] = {
                "scifact_ndcg@10": round(
                    scifact_ndcg(
                        truncate(encoded["queries"], dim),
                        truncate(encoded["docs"], dim),
                        evaluator,
                        encoded["corpus_ids"],
                    ),
                    2,
                ),  # fmt: skip
                "stsb_test": round(
                    sts_spearman(
                        truncate(encoded["sts"][0], dim), truncate(encoded["sts"][1], dim), encoded["sts_gold"]
                    ),
                    2,
                ),  # fmt: skip
            }
        entry = {"path": path, "dims": scores}
        if args.check_dim and item == args.models[0]:
            d = args.check_dim
            unrounded = {
                "scifact_ndcg@10": scifact_ndcg(
                    truncate(encoded["queries"], d), truncate(encoded["docs"], d), evaluator, encoded["corpus_ids"]
                ),
                "stsb_test": sts_spearman(
                    truncate(encoded["sts"][0], d), truncate(encoded["sts"][1], d), encoded["sts_gold"]
                ),
            }
            entry["check"] = check_dim(encoded, d, data, args, unrounded)
            print("check", entry["check"], flush=True)
        if name == args.index_model:
            entry["index"] = index_per_dim(encoded, dims, args.repeats)
        results[name] = entry
        print(name, scores, flush=True)
        results_file.parent.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
