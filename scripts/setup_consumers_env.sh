#!/usr/bin/env bash
# A second, isolated environment in .venv-consumers with the *consumers* of gte-st's exported models that cannot be
# installed beside sentence-transformers 6 / transformers 5 / huggingface_hub 2 in the main .venv:
#
# * sentence-transformers' own ONNX backend (`SentenceTransformer(dir, backend="onnx")`, i.e. optimum's
#   ORTModelForFeatureExtraction): its `onnx` extra is optimum-onnx 0.1.0 (the only release), which pins
#   transformers<4.58, while sentence-transformers 6.x needs transformers>=5. The newest sentence-transformers whose
#   ONNX backend installs is 5.7.0; its backend loader (sentence_transformers/backend/load.py) is byte-identical to
#   6.2.0's.
# * sentence-transformers' OpenVINO backend (`backend="openvino"`, optimum-intel's OVModelForFeatureExtraction):
#   optimum-intel pins transformers<5.6; 1.27.0 is the newest release that resolves beside optimum-onnx 0.1.0
#   (optimum 2.1). It reads the IR that `gte-st export --format openvino` writes with the openvino package alone.
# * FastEmbed (pins huggingface-hub<2).
#
# The test suite uses this environment to check that what gte-st saves and exports loads in those real consumers.
# Idempotent: re-running it is fast. Prints the interpreter's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${GTE_ST_TORCH:-torch==2.13.0}"
CONSUMER_SPECS=("sentence-transformers[onnx]==5.7.0" "optimum-intel[openvino]==1.27.0" "fastembed==0.9.1")
VENV=.venv-consumers
CHECK="import optimum.onnxruntime, optimum.intel.openvino, sentence_transformers, fastembed"
if ! "$VENV/bin/python" -W ignore -c "$CHECK" 2>/dev/null; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  "${PIP[@]}" install "$TORCH_SPEC" 2>&1 | { grep -v "^WARNING: Location" || true; }
  "${PIP[@]}" install "${CONSUMER_SPECS[@]}" 2>&1 | { grep -v "^WARNING: Location" || true; }
  "$VENV/bin/python" -W ignore -c "$CHECK" \
    || { echo "setup_consumers_env: installing ${CONSUMER_SPECS[*]} failed" >&2; exit 1; }
fi
echo "$PWD/$VENV/bin/python"
