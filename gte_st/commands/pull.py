"""``gte-st pull REPO_ID``: download and verify a model snapshot (from the local cache when offline)."""

from __future__ import annotations

import logging

from gte_st.commands._args import ArgumentParser


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="gte-st pull", description="Download and verify a model snapshot (from the cache when offline)."
    )
    parser.add_argument("repo_id", help="namespace/name on the Hub; REPO_ID@REVISION is accepted too")
    parser.add_argument("--revision", help="branch, tag or commit (default: main)")
    parser.add_argument("--local-dir", help="download into this directory instead of the Hugging Face cache")
    return parser


def main(argv: list[str]) -> int:
    from gte_st.errors import UsageError
    from gte_st.hub import pull_model, split_repo_revision

    args = build_parser().parse_args(argv)
    try:
        repo_id, revision = split_repo_revision(args.repo_id)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if revision and args.revision and revision != args.revision:
        raise UsageError(f"{args.repo_id} names revision {revision!r} but --revision is {args.revision!r}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(pull_model(repo_id, revision=args.revision or revision, local_dir=args.local_dir))
    return 0
