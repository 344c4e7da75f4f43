#!/usr/bin/env bash
# A second, isolated environment in .venv-st-onnx in which sentence-transformers' own ONNX backend
# (`SentenceTransformer(dir, backend="onnx")`, i.e. optimum's ORTModelForFeatureExtraction) is installable.
#
# Why a second environment: sentence-transformers 6.x needs transformers>=5, while its `onnx` extra
# (optimum-onnx 0.1.0, the only release) pins transformers<4.58, so the two cannot share the main .venv.
# The newest sentence-transformers whose ONNX backend installs is 5.7.0; its backend loader
# (sentence_transformers/backend/load.py) is byte-identical to 6.2.0's. The test suite uses this
# environment to check that what `gte-st export` writes loads through that real loader.
# Idempotent: re-running it is fast. Prints the interpreter's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${GTE_ST_TORCH:-torch==2.13.0}"
ST_ONNX_SPEC="${GTE_ST_ONNX_BACKEND_SPEC:-sentence-transformers[onnx]==5.7.0}"
VENV=.venv-st-onnx
if ! "$VENV/bin/python" -c "import optimum.onnxruntime, sentence_transformers" 2>/dev/null; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  "${PIP[@]}" install "$TORCH_SPEC" 2>&1 | { grep -v "^WARNING: Location" || true; }
  "${PIP[@]}" install "$ST_ONNX_SPEC" 2>&1 | { grep -v "^WARNING: Location" || true; }
  "$VENV/bin/python" -c "import optimum.onnxruntime, sentence_transformers" \
    || { echo "setup_onnx_backend: installing $ST_ONNX_SPEC failed" >&2; exit 1; }
fi
echo "$PWD/$VENV/bin/python"
