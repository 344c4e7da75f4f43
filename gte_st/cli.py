"""The ``gte-st`` command line: maps command names to their modules and owns turning errors into messages.

Each command lives in ``gte_st.commands.<name>`` with ``main(argv) -> int``; the chosen one is imported lazily so
``gte-st --help`` stays fast. Problems a user can fix -- a missing file, a bad row, an unknown option -- end as one
line on stderr, ``gte-st <command>: error: <what and where>``, with exit code 2 for usage errors and 1 otherwise;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

# name -> one-line help; the implementation is gte_st.commands.<name> (module "eval" for `gte-st eval`).
COMMANDS: dict[str, str] = {
    "train": "train a GTE model (same as `accelerate launch -m gte_st.training`)",
    "eval": "evaluate a model on STS, retrieval, classification, ... files",
    "push": "publish a model directory to the Hugging Face Hub with a model card",
    "pull": "download a model snapshot from the Hub (or the offline cache)",
    "export": "export a model to ONNX / OpenVINO (fp32, bf16, int8) and verify parity",
    "convert": "convert an original-layout GTE checkpoint (remote code) to the native layout",
    "index": "encode a corpus into an embeddings + FAISS index directory",
    "search": "query an index directory (optionally BM25 -> GTE re-ranking)",
    "dedup": "mine paraphrases / near-duplicates from a text file",
    "cluster": "group texts into k topics with k-means on embeddings",
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: gte-st <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_text}" for name, help_text in COMMANDS.items()]
    lines += ["", "Run `gte-st <command> --help` for the options of one command."]
    return "\n".join(lines)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that are a user's to fix (reported in one line, no traceback)."""
    from gte_st.errors import GteStError

    errors: list[type[BaseException]] = [GteStError, ValueError, OSError, ImportError, RuntimeError, KeyError]
    try:
        from huggingface_hub.errors import HfHubHTTPError

        errors.append(HfHubHTTPError)
    except ImportError:
        pass
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and exc.args:
        text = f"missing key {exc.args[0]!r}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines)


def run_command(name: str, argv: list[str]) -> int:
    """Run ``gte-st <name> <argv>``: the command's exit code, or 1/2 with a one-line message for a user error."""
    from gte_st.errors import UsageError

    module = importlib.import_module(f"gte_st.commands.{name}")
    try:
        return int(module.main(argv) or 0)
    except SystemExit as exc:  # --help, or a library that exits by itself
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        print(f"gte-st {name}: interrupted", file=sys.stderr)
        return 130
    except user_errors() as exc:
        logging.getLogger("gte_st").debug("gte-st %s failed", name, exc_info=True)
        print(f"gte-st {name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from gte_st import __version__

        print(f"gte-st {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"gte-st: error: unknown command {name!r} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    return run_command(name, rest)


if __name__ == "__main__":
    sys.exit(main())
