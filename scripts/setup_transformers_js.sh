#!/usr/bin/env bash
# transformers.js (@huggingface/transformers, pinned in tests/js/package-lock.json) in tests/js/node_modules, for the
# test that runs it under node against gte-st's ONNX export. Offline-safe: onnxruntime-node ships its CPU binaries in
# the npm package; its install script only downloads the optional CUDA provider, which ONNXRUNTIME_NODE_INSTALL=skip
# (and --ignore-scripts) leave out. Does nothing without node / npm (the test then skips). Idempotent. Prints the
# node_modules folder on its last line when it is installed.
set -euo pipefail
cd "$(dirname "$0")/../tests/js"
command -v node >/dev/null && command -v npm >/dev/null || exit 0
if ! node -e 'require.resolve("@huggingface/transformers")' 2>/dev/null; then
  ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2
fi
echo "$PWD/node_modules"
