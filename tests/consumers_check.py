"""Run by the *consumers* interpreter (scripts/setup_consumers_env.sh: sentence-transformers 5.7 + optimum-onnx +
optimum-intel + transformers 4.57, FastEmbed 0.9): load a gte-st model directory the way a consumer does and save the
embeddings, so the test can compare them with the torch model of the main environment.

    python consumers_check.py st-onnx     MODEL_DIR ONNX_FILE OUT_PREFIX TEXT [TEXT ...]
    python consumers_check.py st-openvino MODEL_DIR XML_FILE  OUT_PREFIX TEXT [TEXT ...]
    python consumers_check.py fastembed   MODEL_DIR ONNX_FILE OUT_PREFIX TEXT [TEXT ...]
    python consumers_check.py st-load     MODEL_DIR -         OUT_PREFIX TEXT [TEXT ...]
    python consumers_check.py st-torch    MODEL_DIR -         OUT_PREFIX TEXT [TEXT ...]

``st-onnx`` loads the directory with sentence-transformers' torch backend (``OUT_PREFIX + "torch.npy"``) and with
its ONNX backend (``"onnx.npy"``); ``st-openvino`` with its OpenVINO backend (``"openvino.npy"``); ``fastembed``
registers the directory as a custom mean-pooled, normalised model and embeds with FastEmbed (``"fastembed.npy"``);
``st-load`` loads the directory with whichever sentence-transformers release the interpreter imports (``"st.npy"``)
and writes what it said while loading -- warnings and log records of level WARNING and above -- with its version and
``max_seq_length`` to ``"st_load.json"``.
``st-torch`` loads it with sentence-transformers' torch backend (``"torch.npy"``) and prints each text's tokens as
JSON.
"""

import json
import sys
from pathlib import Path

import numpy as np

consumer, model_dir, file_name, out_prefix, *texts = sys.argv[1:]

if consumer == "st-onnx":
    from sentence_transformers import SentenceTransformer

    torch_model = SentenceTransformer(model_dir, device="cpu")
    np.save(f"{out_prefix}torch.npy", torch_model.encode(texts, convert_to_numpy=True))
    onnx_model = SentenceTransformer(model_dir, backend="onnx", device="cpu", model_kwargs={"file_name": file_name})
    backend_model = type(onnx_model[0].auto_model).__name__
    assert backend_model == "ORTModelForFeatureExtraction", backend_model
    np.save(f"{out_prefix}onnx.npy", onnx_model.encode(texts, convert_to_numpy=True))
    print([type(module).__name__ for module in onnx_model], backend_model)
elif consumer == "st-openvino":
    from sentence_transformers import SentenceTransformer

    ov_model = SentenceTransformer(model_dir, backend="openvino", device="cpu", model_kwargs={"file_name": file_name})
    backend_model = type(ov_model[0].auto_model).__name__
    assert backend_model == "OVModelForFeatureExtraction", backend_model
    np.save(f"{out_prefix}openvino.npy", ov_model.encode(texts, convert_to_numpy=True))
    print([type(module).__name__ for module in ov_model], backend_model)
elif consumer == "fastembed":
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    pooling = json.loads((Path(model_dir) / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True
    TextEmbedding.add_custom_model(
        model="local/gte-st-export",
        pooling=PoolingType.MEAN,
        normalization=(Path(model_dir) / "2_Normalize").is_dir(),
        sources=ModelSource(hf="local/gte-st-export"),
        dim=pooling["word_embedding_dimension"],
        model_file=file_name,
    )
    model = TextEmbedding(model_name="local/gte-st-export", specific_model_path=model_dir)
    np.save(f"{out_prefix}fastembed.npy", np.array(list(model.embed(texts))))
    print("fastembed", type(model.model).__name__)
elif consumer == "st-load":
    import logging
    import warnings

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import sentence_transformers
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(model_dir, device="cpu")
    np.save(f"{out_prefix}st.npy", model.encode(texts, convert_to_numpy=True))
    report = {
        "version": sentence_transformers.__version__,
        "file": sentence_transformers.__file__,
        "max_seq_length": model.max_seq_length,
        "modules": [type(module).__name__ for module in model],
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
        "log": [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records],
    }
    Path(f"{out_prefix}st_load.json").write_text(json.dumps(report))
    print(report["version"])
elif consumer == "st-torch":
    from sentence_transformers import SentenceTransformer

    torch_model = SentenceTransformer(model_dir, device="cpu")
    np.save(f"{out_prefix}torch.npy", torch_model.encode(texts, convert_to_numpy=True))
    print(json.dumps([torch_model.tokenizer.tokenize(text) for text in texts], ensure_ascii=False))
else:
    raise SystemExit(f"unknown consumer {consumer!r}")
