"""What every command shares: an argument parser that raises instead of exiting, and loading the model a user named."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from gte_st.errors import GteStError, UsageError
from gte_st.files import check_output_path
from gte_st.loading import check_model_location


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors raise :class:`~gte_st.errors.UsageError` (``gte_st.cli`` prints them
    as one line) instead of printing the usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def existing_path(value: str) -> str:
    """argparse type: a path that exists."""
    if not Path(value).expanduser().exists():
        raise argparse.ArgumentTypeError(f"{value} does not exist")
    return value


def check_outputs(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, Any]) -> None:
    """The one rule of every command: it owns its outputs and never its inputs. Each output option
    (``{"--out": path}``) is checked against every input (``{"corpus": path, "data file": [paths]}``) with
    :func:`gte_st.files.check_output_path`, before any work."""
    flat: dict[str, Any] = {}
    for what, value in inputs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        flat.update({(what if len(values) == 1 else f"{what} #{i + 1}"): v for i, v in enumerate(values)})
    for option, output in outputs.items():
        if output is not None:
            check_output_path(output, flat, option=option)


def add_backend_arguments(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--backend`` / ``--file-name``: what runs the model -- torch, an exported artifact (see ``gte-st export``),
    or (``auto``) the fastest verified of them on this CPU (:mod:`gte_st.export.auto`)."""
    from gte_st.registry import BACKENDS

    parser.add_argument(
        "--backend", default=default, choices=BACKENDS.names(),
        help=f"what runs the model (default {default}): {BACKENDS.help_table()} (create artifacts with "
        "`gte-st export`; --compile selects torch)",
    )  # fmt: skip
    parser.add_argument("--file-name", help="the artifact inside the model directory, e.g. onnx/model_O2.onnx")


def add_precision_argument(
    parser: argparse.ArgumentParser, option: str = "--precision", default: str = "auto"
) -> None:
    """The encode precision of torch models (``gte_st.registry.PRECISIONS``)."""
    from gte_st.registry import PRECISIONS

    parser.add_argument(
        option, default=default, choices=PRECISIONS.names(), help=f"encode precision: {PRECISIONS.help_table()}"
    )


def add_compile_argument(parser: argparse.ArgumentParser, what: str = "the texts") -> None:
    """``--compile``: encode with a ``torch.compile``'d copy of the model (see :func:`gte_st.encoding.encode`)."""
    parser.add_argument(
        "--compile", action="store_true",
        help=f"encode {what} with a torch.compile'd model: about a minute to compile, then ~15%% faster on CPU",
    )  # fmt: skip


def add_truncate_dim_argument(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--truncate-dim``: keep the first D dimensions of every embedding (a Matryoshka-trained model)."""
    parser.add_argument(
        "--truncate-dim", type=positive_int, default=None, metavar="D",
        help=help or "keep the first D embedding dimensions, re-normalised (Matryoshka models; default: the model's "
        "own truncate_dim, else all)",
    )  # fmt: skip


def check_compile(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--compile`` is for the torch backend: it selects it over ``--backend auto``, and is a one-line usage error
    with an exported artifact (``--backend onnx|openvino`` / ``--file-name``)."""
    if args.compile and args.backend == "auto" and not args.file_name:
        args.backend = "torch"
    if args.compile and (args.backend != "torch" or args.file_name):
        parser.error("--compile applies to the torch backend, not to an exported artifact (--backend/--file-name)")


def load_model(
    name_or_path: str,
    *,
    device: str | None = None,
    max_seq_length: int | None = None,
    trust_remote_code: bool = False,
    backend: str = "torch",
    file_name: str | None = None,
    truncate_dim: int | None = None,
    torch_precision: str = "auto",
) -> Any:
    """The SentenceTransformer a user named: a local directory or a Hub id, loaded with :func:`gte_st.load` (so
    original-layout GTE checkpoints are converted, never run as remote code); a clear error when it cannot be.
    ``truncate_dim`` becomes the model's ``truncate_dim`` (checked against its dimension), which every encode
    honours.

    ``backend="auto"`` runs the fastest verified path on this CPU for a local directory (torch at
    ``torch_precision``, or an exported artifact: :func:`gte_st.export.auto.choose_backend`) and prints the choice
    and its reason on stderr; anything else runs on torch."""
    from gte_st.loading import load

    check_model_location(name_or_path)
    local = Path(name_or_path).expanduser()
    if backend == "auto" and not file_name:
        backend = "torch"
        if local.is_dir() and not trust_remote_code:
            from gte_st.export.auto import choose_backend, load_choice

            choice = choose_backend(local, torch_precision=torch_precision)
            print(f"backend auto: {choice.describe()}", file=sys.stderr)
            if choice.backend != "torch":
                model = load_choice(local, choice)
                if max_seq_length is not None:
                    model.max_seq_length = max_seq_length
                return set_truncate_dim(model, truncate_dim)
    if backend != "torch" or file_name:
        from gte_st.export import load_model_dir

        if not local.is_dir():
            raise FileNotFoundError(f"--backend {backend}: {name_or_path} is not a local model directory")
        model = load_model_dir(local, backend, file_name)
        if max_seq_length is not None:
            model.max_seq_length = max_seq_length
        return set_truncate_dim(model, truncate_dim)
    try:
        source = str(local) if local.exists() else name_or_path
        if trust_remote_code:  # the user asked for the checkpoint's own code: plain sentence-transformers loading
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(source, device=device, trust_remote_code=True)
        else:
            model = load(source, device=device)
    except GteStError:
        raise  # already names the file at fault
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = " (HF_HUB_OFFLINE is set)" if offline else ""
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(f"could not load model {name_or_path!r}{hint}: {first_line}") from exc
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return set_truncate_dim(model, truncate_dim)


def set_truncate_dim(model: Any, truncate_dim: int | None) -> Any:
    """``model`` with ``truncate_dim`` set (``None``: unchanged), or a one-line error naming ``--truncate-dim``."""
    from gte_st.encoding import output_dimension

    if truncate_dim is None:
        return model
    try:
        output_dimension(model, truncate_dim)
    except ValueError as exc:
        raise ValueError(f"--truncate-dim: {exc}") from None
    model.truncate_dim = truncate_dim
    return model
