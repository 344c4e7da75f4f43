"""Run one Python snippet of docs/integrations.md the way a user would, then hand its results to the test.

    python snippet_runner.py SNIPPET.py OUT.json

Runs the file as ``__main__`` in the current folder (which holds ``my-gte``) and writes the snippet's ``texts``,
``embeddings`` and, for a vector store, ``query`` and ``hits`` to OUT.json. Run by the interpreter of the client's own
environment (tests/test_clients.py).
"""

import json
import runpy
import sys

import numpy as np

snippet, out = sys.argv[1:]
namespace = runpy.run_path(snippet, run_name="__main__")
result = {"texts": list(namespace["texts"])}
if "embeddings" in namespace:
    result["embeddings"] = np.asarray(namespace["embeddings"], dtype=np.float64).tolist()
if "hits" in namespace:
    result["query"] = namespace["query"]
    result["hits"] = [int(hit) for hit in namespace["hits"]]
with open(out, "w", encoding="utf8") as f:
    json.dump(result, f)
