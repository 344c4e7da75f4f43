"""Run by a *second* interpreter (scripts/setup_onnx_backend.sh, sentence-transformers 5.7 + optimum-onnx +
transformers 4.57): load a gte-st model directory with sentence-transformers' torch backend and with its own ONNX
backend, and save both embeddings so the test can compare them with the torch model of the main environment.

    python st_onnx_backend_check.py MODEL_DIR ONNX_FILE_NAME OUT_PREFIX TEXT [TEXT ...]
"""

import sys

import numpy as np
from sentence_transformers import SentenceTransformer

model_dir, file_name, out_prefix, *texts = sys.argv[1:]
torch_model = SentenceTransformer(model_dir, device="cpu")
np.save(f"{out_prefix}torch.npy", torch_model.encode(texts, convert_to_numpy=True))
onnx_model = SentenceTransformer(model_dir, backend="onnx", device="cpu", model_kwargs={"file_name": file_name})
backend_model = type(onnx_model[0].auto_model).__name__
assert backend_model == "ORTModelForFeatureExtraction", backend_model
np.save(f"{out_prefix}onnx.npy", onnx_model.encode(texts, convert_to_numpy=True))
print([type(module).__name__ for module in onnx_model], backend_model)
