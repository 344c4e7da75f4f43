"""The ``gte-st`` command line: a thin dispatcher over the package's command modules.

Every sub-command lives in the module that implements its concept and exposes ``main(argv) -> int``;
this module only maps names to those modules and imports the chosen one lazily, so ``gte-st --help``
stays fast and the core modules never depend on the CLI.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module exposing ``main(argv)``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("gte_st.train", "train a GTE model (same as `accelerate launch -m gte_st.train`)"),
    "eval": ("gte_st.evaluation.cli", "evaluate a model on STS, retrieval, classification, ... files"),
    "push": ("gte_st.hub", "publish a model directory to the Hugging Face Hub with a model card"),
    "pull": ("gte_st.hub", "download a model snapshot from the Hub (or the offline cache)"),
    "export": ("gte_st.export", "export a model to ONNX (fp32 / int8) and verify parity"),
    "index": ("gte_st.search", "encode a corpus into an embeddings + FAISS index directory"),
    "search": ("gte_st.search", "query an index directory (optionally BM25 -> GTE re-ranking)"),
    "dedup": ("gte_st.mining", "mine paraphrases / near-duplicates from a text file"),
    "cluster": ("gte_st.mining", "group texts into k topics with k-means on embeddings"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: gte-st <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `gte-st <command> --help` for the options of one command."]
    return "\n".join(lines)


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
        print(f"gte-st: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    # Modules that serve several commands (hub: push/pull; search: index/search; mining: dedup/cluster)
    # expose ``main(argv, command=...)``.
    if COMMANDS[name][0] in {COMMANDS[n][0] for n in COMMANDS if n != name}:
        return int(module.main(rest, command=name) or 0)
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
