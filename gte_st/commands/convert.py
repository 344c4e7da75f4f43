"""``gte-st convert SRC [DST]``: turn a GTE checkpoint in the original remote-code layout into a native one."""

from __future__ import annotations

import logging
from pathlib import Path

from gte_st.commands._args import ArgumentParser


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="gte-st convert",
        description=(
            "Convert a GTE checkpoint in the original remote-code layout (model_type 'new': gte-base/large-en-v1.5, "
            "gte-multilingual-base, their fine-tunes) into a native sentence-transformers directory (model_type "
            "'gte') that loads without trust_remote_code. Never imports or runs the remote code."
        ),
    )
    parser.add_argument(
        "src", help="a local checkpoint directory, or a Hub id (namespace/name) when the Hub is reachable"
    )
    parser.add_argument("dst", nargs="?", help="output directory (default: ./<name of SRC>-native)")
    parser.add_argument("--revision", help="Hub branch, tag or commit of SRC")
    parser.add_argument("--overwrite", action="store_true", help="replace DST when it exists and is not empty")
    return parser


def main(argv: list[str]) -> int:
    from gte_st.convert import convert_checkpoint

    args = build_parser().parse_args(argv)
    dst = args.dst or f"{Path(args.src.rstrip('/')).name}-native"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = convert_checkpoint(args.src, dst, revision=args.revision, overwrite=args.overwrite)
    print(out)
    print(f"Load it with: SentenceTransformer({str(out)!r})  # no trust_remote_code")
    return 0
