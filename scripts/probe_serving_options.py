"""Serving probe (issue 13): do OpenVINO's THROUGHPUT streams, torch.compile or the batch size buy speed?

Interleaved rounds over the first N SciFact documents (length 256), ratios against stock fp32 ``encode``; the
minimum cosine against stock fp32 per row. Results: docs/benchmarks.md ("Serving probe").

    N=300 python scripts/probe_serving_options.py [DATA_DIR] [WORK_DIR]
"""

import gzip
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch._inductor.config
from sentence_transformers import SentenceTransformer

import gte_st
from gte_st.encoding import encode
from gte_st.export import export, load_exported

N = int(os.environ.get("N", 300))
docs = []
with gzip.open(
    Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data") / "beir_scifact" / "corpus.jsonl.gz", "rt"
) as f:
    for line in f:
        d = json.loads(line)
        docs.append((d.get("title", "") + " " + d["text"]).strip())
        if len(docs) >= N:
            break
work = Path(sys.argv[2] if len(sys.argv) > 2 else "probe-serving")
if not (work / "model" / "openvino").exists():
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(gte_st.default_base_model(), work / "model")
    export(work / "model", "openvino", "int8-dynamic", thresholds={"fp32": 0, "bf16": 0, "int8": 0})
print(sorted(str(p.relative_to(work)) for p in (work / "model" / "openvino").glob("*.xml")), flush=True)
m = SentenceTransformer(str(work / "model"), device="cpu")
m.max_seq_length = 256
fns = {}
fns["stock-fp32"] = lambda t: m.encode(t, batch_size=32, normalize_embeddings=True)
fns["gte-bf16"] = lambda t: encode(m, t, batch_size=32, precision="bf16")
fns["gte-bf16-b16"] = lambda t: encode(m, t, batch_size=16, precision="bf16")
fns["gte-bf16-b64"] = lambda t: encode(m, t, batch_size=64, precision="bf16")
# torch.compile of a bf16 copy
mc = SentenceTransformer(str(work / "model"), device="cpu")
mc.max_seq_length = 256
mc.to(torch.bfloat16)
torch._inductor.config.freezing = True
mc[0].model = torch.compile(mc[0].model, dynamic=True)


def comp(t):
    with torch.inference_mode():
        return encode(mc, t, batch_size=32, precision="fp32")


fns["compile-bf16"] = comp
for xml in ["openvino/openvino_model.xml", "openvino/openvino_model_qint8_weights.xml"]:
    if (work / "model" / xml).is_file():
        for hint in ["LATENCY", "THROUGHPUT"]:
            try:
                mo = load_exported(work / "model", xml, ov_config={"PERFORMANCE_HINT": hint})
            except TypeError as e:
                print("ov_config unsupported", e)
                break
            mo.max_seq_length = 256
            print(hint, "requests", len(mo[0].model.requests), flush=True)
            fns[f"ov-{Path(xml).stem}-{hint}"] = lambda t, mo=mo: encode(mo, t, batch_size=32)
ref = np.asarray(fns["stock-fp32"](docs), dtype=np.float32)
for n, fn in fns.items():
    t0 = time.perf_counter()
    fn(docs[:32])
    print("warm", n, f"{time.perf_counter() - t0:.1f}s", flush=True)
times = {n: [] for n in fns}
for r in range(3):
    for n, fn in fns.items():
        t0 = time.perf_counter()
        out = np.asarray(fn(docs), dtype=np.float32)
        times[n].append(time.perf_counter() - t0)
        if r == 0:
            cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
            print(n, "min cos", round(float(cos.min()), 4), flush=True)
base = statistics.median(times["stock-fp32"])
for n, ts in times.items():
    med = statistics.median(ts)
    print(f"{n:50s} {N / med:6.1f} docs/s  {base / med:5.2f}x  {[round(t, 1) for t in ts]}", flush=True)
