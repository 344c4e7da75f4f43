#!/usr/bin/env bash
# The environment of Infinity (infinity-emb 0.0.78 with its server and torch engine), in .venv-infinity: it pins
# sentence-transformers<4 (3.4.1), transformers<5 (4.57.6) and numpy<2, so it lives apart from the main .venv.
# It also holds sentence-transformers 4.1.0, wheel only, in .venv-infinity/st-4.1 (its requirements are met by this
# environment): `PYTHONPATH=.venv-infinity/st-4.1` runs it instead of 3.4.1. Together with .venv-consumers (5.3.0,
# 5.7.0) and the main .venv (6.x), the suite loads a saved model in every maintained sentence-transformers major.
#
# Everything is pinned in scripts/requirements/infinity.txt. Idempotent. Prints the interpreter's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/client_env.sh
VENV=.venv-infinity
build_client_env "$VENV" scripts/requirements/infinity.txt "import infinity_emb, sentence_transformers, uvicorn"
add_release "$VENV" st-4.1 sentence-transformers==4.1.0 sentence_transformers 4.1.0
echo "$PWD/$VENV/bin/python"
