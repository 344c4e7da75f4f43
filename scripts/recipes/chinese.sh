#!/usr/bin/env bash
# Chinese recipe (docs/chinese.md; measured in docs/benchmarks.md, "Chinese"): teach the offline English
# all-MiniLM-L6-v2 the Chinese characters it reads as [UNK] and train it on Chinese train splits, keeping English STS.
#
#   scripts/recipes/chinese.sh [gte-st train options]   # run from anywhere; writes chinese/ in the checkout
#
# 1. build the training files from train splits only: STS-B-zh train and ATEC train (Chinese), English STS-B train
#    (replay), as scored pairs (scripts/recipes/build_chinese_pairs.py);
# 2. train scripts/recipes/chinese.yaml: --extend_vocab auto, then CoSENT on the three sources. Options after the
#    script name override the recipe (e.g. --seed 2 --output_dir chinese/seed2).
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
cd "$(dirname "$0")/../.."
python scripts/recipes/build_chinese_pairs.py --out-dir chinese/data
python -m gte_st.training --config scripts/recipes/chinese.yaml "$@"
echo "evaluate: python scripts/bench_chinese.py (every set), or gte-st eval chinese/model --task sts --data" \
  "../shared/data/zh_pairs/stsb_zh/STS-B.test.data ../shared/data/zh_pairs/lcqmc/test.txt"
