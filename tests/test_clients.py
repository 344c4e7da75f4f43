"""The real third-party clients load what gte-st saves and exports, each in its own environment, offline, on
loopback: every maintained sentence-transformers release, Infinity's server, transformers.js under node, and the
snippets of docs/integrations.md (run as written, in the environment each names).

Each client embeds a text longer than the model's serving length, so a client that truncates anywhere else (the
training length, the tokenizer's stale ``max_length``, the position table) fails. The environments are built by
``scripts/setup_consumers_env.sh``, ``scripts/setup_infinity_env.sh`` and ``scripts/setup_transformers_js.sh``
(``scripts/test.sh`` runs them); a test whose environment is missing is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, build_tiny_bert, stsb_rows

pytestmark = pytest.mark.slow

DOC = REPO_ROOT / "docs" / "integrations.md"
SERVING_LENGTH = 96  # the saved model's serving length: neither the tokenizer's stale max_length nor the positions
POSITIONS = 160
TEXTS = [
    "What is GTE?",
    "A general text embedding model maps a sentence to a vector.",
    " ".join(s1 for _, s1, _ in stsb_rows("train")[:40]),  # about 450 tokens: truncated at SERVING_LENGTH
]
DOC_TEXTS_LINE = 'texts = ["What is GTE?", "A general text embedding model."]'
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "DO_NOT_TRACK": "1",
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    "TOKENIZERS_PARALLELISM": "false",
}

ENVIRONMENTS = {  # name -> (variable scripts/test.sh sets, folder the setup script builds)
    "consumers": ("GTE_ST_CONSUMERS_PYTHON", ".venv-consumers"),
    "infinity": ("GTE_ST_INFINITY_PYTHON", ".venv-infinity"),
}


def _client_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, **OFFLINE, **extra}


def _interpreter(variable: str, venv: str) -> str:
    """The interpreter of a client environment: ``$variable`` (set by scripts/test.sh) or ``REPO/venv``."""
    python = os.environ.get(variable) or str(REPO_ROOT / venv / "bin" / "python")
    if not Path(python).is_file():
        pytest.skip(f"no {venv} environment: run scripts/setup_*_env.sh (scripts/test.sh does)")
    return python


@pytest.fixture(scope="module")
def consumers_python() -> str:
    return _interpreter(*ENVIRONMENTS["consumers"])


@pytest.fixture(scope="module")
def infinity_python() -> str:
    return _interpreter(*ENVIRONMENTS["infinity"])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``my-gte``: a tiny BERT (160 positions) whose tokenizer config carries a stale
    ``max_length: 64``, below the serving length as all-MiniLM-L6-v2's 128 is below its 256, saved at serving length 96, exported to ONNX (fp32,
    fused, int8 + its transformers.js name) and OpenVINO."""
    import gte_st
    from gte_st.export import export

    base = build_tiny_bert(tmp_path_factory.mktemp("base"), max_position_embeddings=POSITIONS)
    tokenizer_config = json.loads((base / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "max_length": 64}))
    root = tmp_path_factory.mktemp("site")
    gte_st.build_model(str(base), max_seq_length=SERVING_LENGTH).save(str(root / "my-gte"))
    export(root / "my-gte", "onnx", "int8-dynamic")
    export(root / "my-gte", "openvino", "none")
    return root


@pytest.fixture(scope="module")
def reference(site: Path) -> np.ndarray:
    """``SentenceTransformer("my-gte")`` in this environment (sentence-transformers 6.x) on :data:`TEXTS`; the
    long text is truncated at the serving length (checked against a model cut elsewhere)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(site / "my-gte"), device="cpu")
    assert model.max_seq_length == SERVING_LENGTH
    embeddings = model.encode(TEXTS)
    assert len(model.tokenizer(TEXTS[-1])["input_ids"]) > POSITIONS > 128 > SERVING_LENGTH
    for other in (64, 128, POSITIONS):
        model.max_seq_length = other
        assert float(model.encode(TEXTS[-1:])[0] @ embeddings[-1]) < 0.999, other
    return embeddings


def _embed(python: str, model_dir: Path, out: Path, pythonpath: str | None = None) -> dict:
    script = Path(__file__).with_name("consumers_check.py")
    env = _client_env(**({"PYTHONPATH": pythonpath} if pythonpath else {}))
    done = subprocess.run(
        [python, str(script), "st-load", str(model_dir), "-", str(out), *TEXTS],
        capture_output=True, text=True, env=env, timeout=600, cwd=out.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(Path(f"{out}st_load.json").read_text())


def _cosines(embeddings, reference: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    assert embeddings.shape == reference.shape
    embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    return (embeddings * reference).sum(1)


# release -> (environment, folder of the release's wheel under it): one per maintained major, 6.x is this environment
RELEASES = {
    "3.4.1": ("infinity", None),
    "4.1.0": ("infinity", "st-4.1"),
    "5.3.0": ("consumers", "st-5.3"),
    "5.7.0": ("consumers", None),
    "6.x": ("main", None),
}
VERSION_NOTICE = re.compile(r"(created with|was created with) (Sentence Transformers )?version \d")


@pytest.mark.parametrize("release", list(RELEASES))
def test_sentence_transformers_release_loads_the_saved_model(release, site, reference, tmp_path):
    """Every maintained sentence-transformers major loads the saved folder from its own environment: the stock
    modules, the serving length, embeddings within 1e-5 of this environment's, and nothing said while loading but
    the notice that the model was saved by a newer release."""
    where, extra = RELEASES[release]
    python = sys.executable if where == "main" else _interpreter(*ENVIRONMENTS[where])
    pythonpath = str(Path(python).parent.parent / extra) if extra else None
    report = _embed(python, site / "my-gte", tmp_path / "emb_", pythonpath)
    if release != "6.x":
        assert report["version"] == release, report
    assert report["modules"] == ["Transformer", "Pooling", "Normalize"]
    assert report["max_seq_length"] == SERVING_LENGTH
    said = [line for line in report["warnings"] + report["log"] if not VERSION_NOTICE.search(line)]
    assert said == [], said
    embeddings = np.load(tmp_path / "emb_st.npy")
    print(f"sentence-transformers {report['version']}: max |difference| {np.abs(embeddings - reference).max():.2e}")
    np.testing.assert_allclose(embeddings, reference, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _doc_blocks() -> dict[str, tuple[str, str, str]]:
    """The tested blocks of docs/integrations.md: name -> (environment, language, code)."""
    pattern = re.compile(r"<!-- tested: (\S+) (\S+) -->\n```(\w+)\n(.*?)```", re.S)
    blocks = {name: (where, language, code) for where, name, language, code in pattern.findall(DOC.read_text())}
    server = re.search(r"<!-- tested: infinity-server -->\n```bash\n(.*?)```", DOC.read_text(), re.S)
    if server:
        blocks["infinity-server"] = ("infinity", "bash", server.group(1))
    return blocks


def _with_test_texts(code: str, line: str) -> str:
    """The snippet with the test's texts (the long one included) in place of its two example texts."""
    assert line in code, f"the snippet no longer holds {line!r}"
    return code.replace(line, line.split("[")[0] + json.dumps(TEXTS) + (";" if line.endswith(";") else ""))


def _run_snippet(python: str, name: str, site: Path, tmp_path: Path, port: int | None = None) -> dict:
    """Run the Python block ``name`` of the doc as a file in ``site``, with the test's texts (and ``port`` in place of
    the documented 7997)."""
    where, language, code = _doc_blocks()[name]
    assert language == "python"
    if port is not None:
        assert "7997" in code
        code = code.replace("7997", str(port))
    if DOC_TEXTS_LINE in code:
        code = _with_test_texts(code, DOC_TEXTS_LINE)
    snippet = tmp_path / f"{name}.py"
    snippet.write_text(code)
    out = tmp_path / f"{name}.json"
    done = subprocess.run(
        [python, str(Path(__file__).with_name("snippet_runner.py")), str(snippet), str(out)],
        capture_output=True, text=True, cwd=site, timeout=600, env=_client_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


SNIPPET_MIN_COSINE = {"st-onnx": 0.999, "st-openvino": 0.99, "fastembed": 0.999, "langchain": 0.999}
VECTOR_STORES = ["qdrant", "lancedb", "chroma"]  # the snippets that store gte-st embeddings and rank by a query


def test_every_doc_snippet_is_tested():
    """Each block docs/integrations.md marks as tested is run by a test here (a new block needs its test)."""
    tested = {
        *SNIPPET_MIN_COSINE,
        "llamaindex",
        *VECTOR_STORES,
        "infinity-server",
        "infinity-client",
        "transformers-js",
    }
    assert set(_doc_blocks()) == tested


@pytest.mark.parametrize("name", [*SNIPPET_MIN_COSINE, "llamaindex"])
def test_doc_snippet(name, consumers_python, site, reference, tmp_path):
    """The snippet of docs/integrations.md for a client of .venv-consumers, run as written in a folder holding
    ``my-gte``, embeds like sentence-transformers at the serving length (the long text included).

    OpenVINO runs its fp32 IR in bf16 by default on CPUs with bf16 units, hence 0.99 there."""
    result = _run_snippet(consumers_python, name, site, tmp_path)
    assert result["texts"] == TEXTS
    cosines = _cosines(result["embeddings"], reference)
    print(f"{name}: min cosine {cosines.min():.6f}")
    assert cosines.min() >= SNIPPET_MIN_COSINE.get(name, 0.999), cosines


@pytest.mark.parametrize("name", VECTOR_STORES)
def test_doc_snippet_vector_store(name, consumers_python, site, tmp_path):
    """The vector-store snippet of docs/integrations.md (Qdrant's local mode, LanceDB embedded in a folder, Chroma's
    in-memory client), run as written with the real client, ranks all its documents as exact cosine search with this
    environment's model: the same ids in the same order. It runs in a folder of its own that links ``my-gte``, as
    LanceDB writes its tables where it runs."""
    from sentence_transformers import SentenceTransformer

    workdir = tmp_path / "cwd"
    workdir.mkdir()
    (workdir / "my-gte").symlink_to(site / "my-gte")
    result = _run_snippet(consumers_python, name, workdir, tmp_path)
    model = SentenceTransformer(str(site / "my-gte"), device="cpu")
    scores = model.encode(result["texts"]) @ model.encode(result["query"])
    print(f"{name}: hits {result['hits']}, cosines {np.round(scores, 4).tolist()}")
    assert result["hits"] == [int(i) for i in np.argsort(-scores)], scores


def _wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"no answer from {url} in {timeout} s:\n{log.read_text()[-3000:]}")


def test_infinity_serves_the_model(infinity_python, site, reference, tmp_path):
    """Infinity (infinity-emb 0.0.78, torch engine, sentence-transformers 3.4.1) started with the documented command
    on 127.0.0.1 serves ``my-gte`` over its OpenAI-compatible ``/embeddings``, queried with the documented client
    code: cosine >= 0.999 with sentence-transformers, the long text cut at the serving length."""
    blocks = _doc_blocks()
    port = _free_port()
    command = shlex.split(blocks["infinity-server"][2].replace("7997", str(port)))
    assert command[0] == "DO_NOT_TRACK=1" and command[1] == "infinity_emb"
    command = [str(Path(infinity_python).with_name("infinity_emb")), *command[2:]]
    log = tmp_path / "infinity.log"
    workdir = tmp_path / "cwd"  # Infinity writes a .infinity_cache folder where it runs
    shutil.copytree(site, workdir, symlinks=True)
    with open(log, "w") as log_file:
        server = subprocess.Popen(command, cwd=workdir, env=_client_env(), stdout=log_file, stderr=subprocess.STDOUT)
        try:
            _wait_for(f"http://127.0.0.1:{port}/health", server, log)
            result = _run_snippet(infinity_python, "infinity-client", workdir, tmp_path, port=port)
        finally:
            server.terminate()
            server.wait(timeout=60)
    cosines = _cosines(result["embeddings"], reference)
    print(f"infinity: min cosine {cosines.min():.6f}")
    assert cosines.min() >= 0.999, cosines


def test_transformers_js_embeds_with_the_export(site, reference, tmp_path):
    """transformers.js (@huggingface/transformers under node, remote models off) runs the documented snippet on the
    export: ``dtype: "fp32"`` (onnx/model.onnx) and ``"q8"`` (onnx/model_quantized.onnx, the int8 graph's second
    name), truncating at the serving length it reads from tokenizer_config.json."""
    node_modules = REPO_ROOT / "tests" / "js" / "node_modules"
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (node_modules / "@huggingface" / "transformers").is_dir():
        pytest.skip("transformers.js is not installed: run scripts/setup_transformers_js.sh")
    where, language, code = _doc_blocks()["transformers-js"]
    assert (where, language) == ("node", "js")
    line = 'const texts = ["What is GTE?", "A general text embedding model."];'
    script_dir = tmp_path / "js"
    script_dir.mkdir()
    (script_dir / "node_modules").symlink_to(node_modules)
    (script_dir / "embed.mjs").write_text(_with_test_texts(code, line))
    for dtype, threshold in (("fp32", 0.999), ("q8", 0.98)):
        done = subprocess.run(
            ["node", str(script_dir / "embed.mjs")],
            capture_output=True, text=True, cwd=site, timeout=300, env=_client_env(DTYPE=dtype),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["texts"] == TEXTS
        cosines = _cosines(result["embeddings"], reference)
        print(f"transformers.js {dtype}: min cosine {cosines.min():.6f}")
        assert cosines.min() >= threshold, (dtype, cosines)
