"""Run exported artifacts inside a sentence-transformers pipeline: ONNX Runtime and OpenVINO encoders, and loaders.

:func:`load_onnx_model` / :func:`load_openvino_model` return a :class:`~sentence_transformers.SentenceTransformer`
built from the model directory's own tokenizer, pooling and normalisation modules, whose transformer runs the
exported graph instead of torch. Where sentence-transformers' own backend is installed (optimum-onnx for
``backend="onnx"``, optimum-intel for ``backend="openvino"``) that backend is used instead; the exported files are the
ones it reads either way.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gte_st.hardware import isa_limit_allows_bf16
from gte_st.model import usable_positions
from gte_st.registry import BACKENDS, EXPORT_VARIANTS

ONNX_DIR, OPENVINO_DIR = "onnx", "openvino"
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "f32": "f32"}


def transformer_subdir(model_dir: Path) -> str:
    """The folder (relative to ``model_dir``) of the model's Transformer module: where ``onnx/`` and ``openvino/``
    belong."""
    modules_file = Path(model_dir) / "modules.json"
    if not modules_file.is_file():
        return ""  # a plain Hugging Face model directory
    for module in json.loads(modules_file.read_text()):
        if module["type"].endswith("Transformer"):
            return module.get("path", "")
    raise ValueError(f"{modules_file}: no Transformer module; only transformer encoders can be exported.")


def _feed(features: dict[str, Any], input_names: list[str], where: str) -> dict[str, np.ndarray]:
    input_ids = features["input_ids"]
    feed = {}
    for name in input_names:
        value = features.get(name)
        if value is None and name == "token_type_ids":
            value = torch.zeros_like(input_ids)
        if value is None:
            raise ValueError(f"{where}: the graph needs input {name!r}, which the tokenizer did not give")
        feed[name] = value.detach().cpu().numpy().astype(np.int64)
    return feed


class OnnxRuntimeEncoder(torch.nn.Module):
    """Stands in for the Hugging Face model inside a sentence-transformers ``Transformer`` module: runs an ONNX
    feature-extraction graph with ONNX Runtime and returns ``last_hidden_state`` like the torch model does.

    Args:
        onnx_path: The ``.onnx`` file (inputs ``input_ids`` / ``attention_mask`` [/ ``token_type_ids``], output
            ``last_hidden_state``).
        config: The Hugging Face config of the exported model (read by the pooling and by sentence-transformers).
        providers: ONNX Runtime execution providers (default: all available).
        num_threads: Intra-op threads (default: ONNX Runtime's, one per physical core).
    """

    def __init__(
        self, onnx_path: str | Path, config: Any, providers: list[str] | None = None, num_threads: int | None = None
    ) -> None:
        super().__init__()
        import onnxruntime as ort

        self.config = config
        self.onnx_path = str(onnx_path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if num_threads:
            options.intra_op_num_threads = num_threads
        self.session = ort.InferenceSession(
            self.onnx_path, options, providers=providers or ort.get_available_providers()
        )
        self.input_names = [node.name for node in self.session.get_inputs()]
        outputs = [node.name for node in self.session.get_outputs()]
        if "last_hidden_state" not in outputs:
            raise ValueError(f"{self.onnx_path}: the graph has outputs {outputs}, expected 'last_hidden_state'.")

    def forward(self, **features: Any) -> dict[str, torch.Tensor]:
        (hidden,) = self.session.run(["last_hidden_state"], _feed(features, self.input_names, self.onnx_path))
        return {"last_hidden_state": torch.from_numpy(hidden)}


class OpenVINOEncoder(torch.nn.Module):
    """The OpenVINO counterpart of :class:`OnnxRuntimeEncoder`: compiles an IR (``.xml`` + ``.bin``) for the CPU and
    returns ``last_hidden_state``.

    Each batch runs in slices of at most ``slice_rows`` rows, and the first slice shape ``(rows, length)`` that recurs
    gets a compilation of its own with static shapes, which OpenVINO's CPU plugin fuses further than the dynamic-shape
    one (the elementwise work joins the attention and feed-forward subgraphs). For a corpus truncated at the model's
    length that shape is ``(slice_rows, max_seq_length)``. Reason: static full slices encoded a corpus faster than
    whole batches on the dynamic compilation, natively and under an AVX-512-VNNI limit (docs/benchmarks.md, "Serving"
    has the figures).

    Args:
        xml_path: The IR's ``.xml`` file.
        config: The Hugging Face config of the exported model.
        precision: ``None`` for OpenVINO's default inference precision on this CPU (bf16 on AMX / AVX512-BF16 CPUs,
            else f32; f32 under an ``ONEDNN_MAX_CPU_ISA`` limit below AVX512-BF16, as on a CPU without it:
            :func:`gte_st.hardware.isa_limit_allows_bf16`), or ``"fp32"`` / ``"bf16"``
            (``INFERENCE_PRECISION_HINT``). It applies to the layers that are not int8-quantised.
        ov_config: More OpenVINO properties (default ``{"PERFORMANCE_HINT": "LATENCY"}``: one stream using every
            core). With ``{"PERFORMANCE_HINT": "THROUGHPUT"}`` OpenVINO compiles several streams (each on its own
            cores); the slices of a batch (at least one per stream) then run at the same time, one infer request
            each.
        device: OpenVINO device name.
        slice_rows: Most rows per inference call (``None``: the whole batch).
        static_shapes: How many slice shapes may get a static-shape compilation (``0``: dynamic shapes only). Each
            costs a compile and its own buffers; the first ``static_shapes`` full-slice shapes (``slice_rows`` rows; any shape when
            ``slice_rows`` is ``None``) to recur ``static_after`` times keep theirs. A smaller slice -- a single
            query above all -- never waits for a compile: the compile would be that call's latency.
        static_after: How often a shape must be run (dynamically) before it is compiled static.
        pad_to_multiple: Pad the sequence axis of every call to a multiple of this many tokens (masked: the
            embeddings do not change), at most to the model's positions; ``None``: no padding. OpenVINO's
            dynamic-shape compilation builds kernels for each new input shape on its first run, which made the
            first query of every new token length several times slower than the next; buckets of 16 tokens leave
            a handful of shapes for short queries instead of one per length.
        bulk_hint: ``None``, or the ``PERFORMANCE_HINT`` of a second compilation that runs the calls of several
            slices (bulk encoding), while a call of one slice (a query) stays on the ``ov_config`` one. With
            ``"THROUGHPUT"`` OpenVINO makes one single-threaded stream per core and the slices of a batch run side by
            side, one per stream, instead of one after the other on every core; the static full-slice shapes are
            compiled under this hint only. Reason: on a 2-core CPU without AMX the int8 IR encoded a corpus faster
            this way, natively and under an AVX-512-VNNI limit, and steadily where one two-threaded stream fell into
            a slow state in some rounds (docs/benchmarks.md, "Serving on CPU", has the figures). ``None``: every call
            on the ``ov_config`` compilation.
    """

    def __init__(
        self,
        xml_path: str | Path,
        config: Any,
        precision: str | None = None,
        ov_config: dict[str, Any] | None = None,
        device: str = "CPU",
        slice_rows: int | None = 8,
        static_shapes: int = 1,
        static_after: int = 8,
        pad_to_multiple: int | None = 16,
        bulk_hint: str | None = "THROUGHPUT",
    ) -> None:
        super().__init__()
        import openvino as ov

        if slice_rows is not None and slice_rows < 1:
            raise ValueError(f"slice_rows must be None or >= 1, got {slice_rows}")
        if pad_to_multiple is not None and pad_to_multiple < 1:
            raise ValueError(f"pad_to_multiple must be None or >= 1, got {pad_to_multiple}")
        if static_shapes < 0 or static_after < 1:
            raise ValueError(f"static_shapes must be >= 0 and static_after >= 1, got {static_shapes}, {static_after}")
        if bulk_hint not in (None, "LATENCY", "THROUGHPUT"):
            raise ValueError(f"bulk_hint must be None, 'LATENCY' or 'THROUGHPUT', got {bulk_hint!r}")
        self.config = config
        self.xml_path = str(xml_path)
        self.slice_rows, self.static_shapes, self.static_after = slice_rows, static_shapes, static_after
        self.pad_to_multiple = pad_to_multiple
        self.max_positions = usable_positions(config)
        self.pad_token_id = getattr(config, "pad_token_id", None) or 0
        self.properties: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", **(ov_config or {})}
        if precision is None and not isa_limit_allows_bf16():
            precision = "fp32"  # OpenVINO decides bf16 from CPUID, which an ONEDNN_MAX_CPU_ISA limit does not change
        if precision is not None:
            if precision not in OPENVINO_PRECISIONS:
                raise ValueError(f"precision must be None, 'fp32' or 'bf16', got {precision!r}")
            self.properties["INFERENCE_PRECISION_HINT"] = OPENVINO_PRECISIONS[precision]
        self.ov_device = device
        self.core = ov.Core()
        ov_model = self.core.read_model(self.xml_path)
        self.input_names = [port.get_any_name() for port in ov_model.inputs]
        outputs = [name for port in ov_model.outputs for name in port.get_names()]
        if "last_hidden_state" not in outputs:
            raise ValueError(f"{self.xml_path}: the IR has outputs {outputs}, expected 'last_hidden_state'.")
        self.compiled = self.core.compile_model(ov_model, device, self.properties)
        self.requests = self._requests(self.compiled)
        self.bulk_hint = bulk_hint
        self.bulk_properties = {**self.properties, "PERFORMANCE_HINT": bulk_hint} if bulk_hint else self.properties
        self.bulk_requests: list[Any] | None = None  # the bulk compilation's, compiled at the first call that needs it
        self.static: dict[tuple[int, int], list[Any]] = {}  # (rows, length) -> infer requests of its compilation
        self.shape_counts: dict[tuple[int, int], int] = {}
        # infer requests are not thread-safe, nor are the shape counts: one forward at a time (each uses every core)
        self._lock = threading.Lock()

    @staticmethod
    def _requests(compiled: Any) -> list[Any]:
        streams = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        return [compiled.create_infer_request() for _ in range(max(1, streams))]

    @property
    def inference_precision(self) -> str:
        """The precision OpenVINO actually runs the non-quantised layers in (e.g. ``"bf16"``, ``"f32"``)."""
        value = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)

    def _bulk(self) -> list[Any]:
        """The infer requests of the dynamic-shape compilation under ``bulk_hint`` (compiled on first use)."""
        if self.bulk_requests is None:
            model = self.core.read_model(self.xml_path)
            self.bulk_requests = self._requests(self.core.compile_model(model, self.ov_device, self.bulk_properties))
        return self.bulk_requests

    def _requests_for(self, shape: tuple[int, int], bulk: bool = False) -> list[Any]:
        """The infer requests a slice of ``shape`` runs on: its static compilation's once the shape has recurred
        ``static_after`` times (while fewer than ``static_shapes`` exist), else the dynamic one's. With a
        ``bulk_hint``, a call of several slices (``bulk``) runs on the compilations under that hint and only those
        get static shapes; a call of one slice runs on the dynamic one of the ``ov_config`` hint."""
        dynamic = self._bulk() if bulk else self.requests
        if self.bulk_hint is not None and not bulk:
            return dynamic
        if shape in self.static:
            return self.static[shape]
        if self.slice_rows is not None and shape[0] != self.slice_rows:
            return dynamic  # only full slices are worth a compile (see static_shapes)
        count = self.shape_counts[shape] = self.shape_counts.get(shape, 0) + 1
        if count >= self.static_after and len(self.static) < self.static_shapes:
            model = self.core.read_model(self.xml_path)  # read again rather than hold the weights for this
            model.reshape({name: list(shape) for name in self.input_names})
            properties = self.bulk_properties if bulk else self.properties
            self.static[shape] = self._requests(self.core.compile_model(model, self.ov_device, properties))
            return self.static[shape]
        return dynamic

    def forward(self, **features: Any) -> dict[str, torch.Tensor]:
        feed = _feed(features, self.input_names, self.xml_path)
        with self._lock:
            return self._forward(feed)

    def _padded(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feed`` with its sequence axis padded to the next multiple of ``pad_to_multiple`` (pad token, mask 0,
        token type 0), within the model's positions."""
        length = feed["input_ids"].shape[1]
        if self.pad_to_multiple is None or length % self.pad_to_multiple == 0:
            return feed
        target = -(-length // self.pad_to_multiple) * self.pad_to_multiple
        if self.max_positions is not None:
            target = min(target, max(length, int(self.max_positions)))
        if target == length:
            return feed
        padded = {}
        for name, value in feed.items():
            fill = self.pad_token_id if name == "input_ids" else 0
            padded[name] = np.pad(value, ((0, 0), (0, target - length)), constant_values=fill)
        return padded

    def _forward(self, feed: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        length = feed["input_ids"].shape[1]
        hidden = self._run(self._padded(feed))
        return {"last_hidden_state": hidden[:, :length] if hidden.shape[1] != length else hidden}

    def _run(self, feed: dict[str, np.ndarray]) -> torch.Tensor:
        rows, length = feed["input_ids"].shape
        size = rows if self.slice_rows is None else self.slice_rows
        bulk = self.bulk_hint is not None and rows > size  # several slices: the bulk compilations' streams
        streams = len(self._bulk() if bulk else self.requests)
        size = max(1, min(size, -(-rows // streams)))  # at least one slice per stream
        bounds = [(start, min(start + size, rows)) for start in range(0, rows, size)]
        hidden = []
        for first in range(0, len(bounds), streams):  # one slice per stream at a time
            running = []
            for stream, (start, end) in enumerate(bounds[first : first + streams]):
                requests = self._requests_for((end - start, length), bulk)
                request = requests[stream % len(requests)]
                request.start_async({name: value[start:end] for name, value in feed.items()})
                running.append(request)
            for request in running:
                request.wait()
                hidden.append(np.array(request.get_tensor("last_hidden_state").data, dtype=np.float32))
        return torch.from_numpy(hidden[0] if len(hidden) == 1 else np.concatenate(hidden))


def _resolve(model_dir: Path, file_name: str) -> Path:
    return Path(file_name) if Path(file_name).is_absolute() else model_dir / transformer_subdir(model_dir) / file_name


def _replace_encoder(model_dir: Path, encoder_factory, backend: str, **kwargs: Any):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", **kwargs)
    transformer = model[0]
    transformer.model = encoder_factory(transformer.model.config)
    transformer.model_forward_params = None
    transformer.backend = model.backend = backend
    return model


def load_onnx_model(
    model_dir: str | Path,
    file_name: str | None = None,
    *,
    providers: list[str] | None = None,
    num_threads: int | None = None,
    **kwargs: Any,
):
    """Load ``model_dir`` as a :class:`~sentence_transformers.SentenceTransformer` whose transformer runs the ONNX file
    ``file_name`` (relative to the transformer folder, or an absolute path) on ONNX Runtime.

    With optimum-onnx installed this is ``SentenceTransformer(model_dir, backend="onnx", model_kwargs={"file_name":
    ...})``; without it (optimum-onnx pins transformers<4.58) the same pipeline is assembled from the model's own
    tokenizer, pooling and normalisation modules with ONNX Runtime in place of the torch encoder. ``file_name``
    defaults to the ONNX backend's default file (:func:`default_file`).
    """
    from sentence_transformers import SentenceTransformer

    file_name = file_name or default_file("onnx")
    model_dir = Path(model_dir)
    onnx_path = _resolve(model_dir, file_name)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} does not exist; create it with `gte-st export {model_dir}`.")
    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError:
        pass
    else:
        if not Path(file_name).is_absolute() and providers is None and num_threads is None:
            return SentenceTransformer(
                str(model_dir),
                backend="onnx",
                model_kwargs={"file_name": file_name, **kwargs.pop("model_kwargs", {})},
                **kwargs,
            )
    return _replace_encoder(
        model_dir,
        lambda config: OnnxRuntimeEncoder(onnx_path, config, providers=providers, num_threads=num_threads),
        "onnx",
        **kwargs,
    )


def load_openvino_model(
    model_dir: str | Path,
    file_name: str | None = None,
    *,
    precision: str | None = None,
    ov_config: dict[str, Any] | None = None,
    encoder_options: dict[str, Any] | None = None,
    **kwargs: Any,
):
    """Load ``model_dir`` as a :class:`~sentence_transformers.SentenceTransformer` whose transformer runs the
    OpenVINO IR ``file_name`` (relative to the transformer folder, or an absolute path).

    Where optimum-intel is installed (it pins transformers<5.6) and none of ``precision``, ``ov_config``,
    ``encoder_options`` is given, this is ``SentenceTransformer(model_dir, backend="openvino", model_kwargs={"file_name":
    ...})``; otherwise the pipeline is assembled with :class:`OpenVINOEncoder` in place of the torch encoder
    (``precision``, ``ov_config``: see there; ``encoder_options``: its other arguments, e.g. ``{"slice_rows": None,
    "static_shapes": 0}`` for whole batches on the dynamic-shape compilation only). ``file_name`` defaults to the
    OpenVINO backend's default file (:func:`default_file`).
    """
    from sentence_transformers import SentenceTransformer

    file_name = file_name or default_file("openvino")
    model_dir = Path(model_dir)
    xml_path = _resolve(model_dir, file_name)
    if not xml_path.is_file() or not xml_path.with_suffix(".bin").is_file():
        raise FileNotFoundError(
            f"{xml_path} (+ .bin) does not exist; create it with `gte-st export {model_dir} --format openvino`."
        )
    try:
        import optimum.intel.openvino  # noqa: F401
    except ImportError:
        pass
    else:
        ours = precision is not None or ov_config is not None or encoder_options is not None
        if not Path(file_name).is_absolute() and not ours:
            return SentenceTransformer(
                str(model_dir),
                backend="openvino",
                model_kwargs={"file_name": file_name, **kwargs.pop("model_kwargs", {})},
                **kwargs,
            )
    return _replace_encoder(
        model_dir,
        lambda config: OpenVINOEncoder(
            xml_path, config, precision=precision, ov_config=ov_config, **(encoder_options or {})
        ),
        "openvino",
        **kwargs,
    )


def backend_of(file_name: str | Path) -> str:
    """``"onnx"`` for ``.onnx`` files, ``"openvino"`` for ``.xml`` IRs."""
    suffix = Path(file_name).suffix
    for name in BACKENDS:
        if BACKENDS.entry(name).metadata.get("suffix") == suffix:
            return name
    raise ValueError(f"{file_name}: not an exported artifact (expected a .onnx file or an OpenVINO .xml)")


def default_file(backend: str) -> str:
    """The default artifact of an exported backend: the file of its base variant (``gte_st.registry`` holds both)."""
    variant = BACKENDS.entry(backend).metadata.get("default_variant") if backend in BACKENDS else None
    if variant is None:
        exported = [name for name in BACKENDS if "default_variant" in BACKENDS.entry(name).metadata]
        raise ValueError(f"backend must be one of {exported} when no file_name is given, got {backend!r}")
    return EXPORT_VARIANTS.entry(variant).metadata["file"]


def load_exported(model_dir: str | Path, file_name: str | None = None, *, backend: str | None = None, **kwargs: Any):
    """Load an exported artifact of ``model_dir``: ``file_name`` (``.onnx`` or ``.xml``) or the default file of
    ``backend`` (``"onnx"``: ``onnx/model.onnx``, ``"openvino"``: ``openvino/openvino_model.xml``)."""
    if file_name is None:
        file_name = default_file(str(backend))
    kind = backend_of(file_name)
    if backend is not None and backend != kind:
        raise ValueError(f"{file_name} is an {kind} artifact, not {backend}")
    loader = load_onnx_model if kind == "onnx" else load_openvino_model
    return loader(model_dir, file_name, **kwargs)


def load_model_dir(model_dir: str | Path, backend: str = "torch", file_name: str | None = None, **kwargs: Any):
    """The model a directory holds, ready for :func:`gte_st.encoding.encode`: its torch weights (``backend="torch"``,
    through :func:`gte_st.load`, so original-layout GTE checkpoints are converted), an exported artifact
    (``file_name``, else the default file of ``backend``; the file's suffix decides the backend), or
    (``backend="auto"``) the fastest verified of them on this CPU (:mod:`gte_st.export.auto`)."""
    BACKENDS.check(backend)
    if backend == "auto" and file_name is not None:
        raise ValueError("backend='auto' chooses the artifact itself; give file_name with backend='torch' or none")
    if backend in ("torch", "auto") and file_name is None:
        return BACKENDS.get(backend)(model_dir, **kwargs)
    return load_exported(model_dir, file_name, backend=None if backend == "torch" else backend, **kwargs)
