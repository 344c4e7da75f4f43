#!/usr/bin/env bash
# A second, isolated environment in .venv-consumers with the *consumers* of gte-st's models and exports that cannot
# be installed beside sentence-transformers 6 / transformers 5 / huggingface_hub 2 in the main .venv
# (docs/integrations.md lists what each is tested for):
#
# * sentence-transformers' own ONNX backend (`SentenceTransformer(dir, backend="onnx")`, i.e. optimum's
#   ORTModelForFeatureExtraction): its `onnx` extra is optimum-onnx 0.1.0 (the only release), which pins
#   transformers<4.58, while sentence-transformers 6.x needs transformers>=5. The newest sentence-transformers whose
#   ONNX backend installs is 5.7.0; its backend loader (sentence_transformers/backend/load.py) is byte-identical to
#   6.2.0's.
# * sentence-transformers' OpenVINO backend (`backend="openvino"`, optimum-intel's OVModelForFeatureExtraction):
#   optimum-intel pins transformers<5.6; 1.27.0 is the newest release that resolves beside optimum-onnx 0.1.0
#   (optimum 2.1). It reads the IR that `gte-st export --format openvino` writes with the openvino package alone.
# * FastEmbed 0.9.1 (pins huggingface-hub<2), LangChain's HuggingFaceEmbeddings (langchain-huggingface 1.2.3),
#   LlamaIndex's HuggingFaceEmbedding (llama-index-embeddings-huggingface 0.8.0), and three vector stores run in
#   this process with embeddings passed in: qdrant-client 1.20.0 (local mode), lancedb 0.40.0 (embedded, a folder)
#   and chromadb 1.5.9 (in-memory client).
# * sentence-transformers 5.3.0, the last release with the classic module classes and config schema, wheel only in
#   .venv-consumers/st-5.3 (its requirements are met by this environment): `PYTHONPATH=.venv-consumers/st-5.3`.
#
# Everything is pinned in scripts/requirements/consumers.txt (resolving this set from scratch makes pip backtrack for
# many minutes). Idempotent: re-running it is fast. Prints the interpreter's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/client_env.sh
VENV=.venv-consumers
build_client_env "$VENV" scripts/requirements/consumers.txt \
  "import optimum.onnxruntime, optimum.intel.openvino, sentence_transformers, fastembed, langchain_huggingface, \
llama_index.embeddings.huggingface, qdrant_client, lancedb, chromadb"
add_release "$VENV" st-5.3 sentence-transformers==5.3.0 sentence_transformers 5.3.0
echo "$PWD/$VENV/bin/python"
