"""``gte-st push MODEL_DIR REPO_ID``: publish a model directory to the Hub in one commit, with a model card."""

from __future__ import annotations

import logging

from gte_st.commands._args import ArgumentParser


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="gte-st push", description="Publish a model directory to the Hub in one commit, with a model card."
    )
    parser.add_argument("model_dir", help="saved model directory (portable sentence-transformers layout)")
    parser.add_argument("repo_id", help="namespace/name on the Hub (created when missing)")
    parser.add_argument("--revision", help="branch to push to (created when missing; default: main)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--commit-message", help="commit summary")
    parser.add_argument("--license", help="licence (SPDX id) for the card; default: the base model's")
    return parser


def main(argv: list[str]) -> int:
    from gte_st.hub import push_model

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    url = push_model(
        args.model_dir,
        args.repo_id,
        revision=args.revision,
        private=args.private,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
        license=args.license,
    )
    print(url)
    return 0
