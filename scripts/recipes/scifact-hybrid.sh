#!/usr/bin/env bash
# SciFact in-domain recipe (docs/benchmarks.md, "SciFact recipe"): from the offline
# all-MiniLM-L6-v2, on train-side data only (SciFact's corpus and train claims, STS-B train; general replay text),
# on this 2-core CPU.
#
#   scripts/recipes/scifact-hybrid.sh            # run from the repository root; writes scifact-hybrid/
#
# 1. build the training files: hard negatives mined with the BM25 + dense hybrid teacher (w = 0.4, chosen on the
#    SciFact train queries), with its scores (scripts/recipes/build_scifact_distillation.py);
# 2. train scripts/recipes/scifact-hybrid.yaml: 3 epochs on the claims with those negatives, then 45 CoSENT steps on
#    the STS-B train scores; a fifth of the claims stage's batches are general text
#    (scripts/recipes/build_general_pairs.py: SNLI, WikiQA/MRPC/STS-B train, the default job's train docstrings)
#    in equal shares, trained only to keep the base model's embeddings of it (weight 3), the docstring and WikiQA
#    pairs with the claims' loss (keeps general quality; chosen on dev data).
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,14s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
cd "$(dirname "$0")/../.."
python scripts/recipes/build_scifact_distillation.py --out-dir scifact-hybrid/data "$@"
python scripts/recipes/build_general_pairs.py --out-dir scifact-hybrid/general
python -m gte_st.training --config scripts/recipes/scifact-hybrid.yaml
echo "evaluate: gte-st eval scifact-hybrid/model --task retrieval --data ../shared/data/beir_scifact --max-seq-length 256"
