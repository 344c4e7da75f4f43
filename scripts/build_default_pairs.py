"""Build the default job's shipped docstring pairs (gte_st/default_pairs/) from the installed Python sources.

Mines (summary -> documentation) pairs with :func:`gte_st.default_data.mine_docstring_pairs` from the standard
library and :data:`gte_st.default_data.DEFAULT_PACKAGES`, writes them as a byte-reproducible gzipped JSON Lines file
and writes a ``NOTICE`` beside it naming every source, its installed version and its licence (the pairs are excerpts
of those sources and stay under their licences). The default job then reads that file, so its data does not change
with the versions a machine has installed; rebuild only to move to new sources on purpose, and re-measure the default
job (docs/benchmarks.md, "Default job") when you do.

    python scripts/build_default_pairs.py                 # rewrites gte_st/default_pairs/
    python scripts/build_default_pairs.py --out-dir DIR   # somewhere else
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections import Counter
from pathlib import Path

# Licence of each mined source (its distribution name, for the version, and its licence as its project states it).
SOURCES = {
    "stdlib": ("Python", "PSF-2.0"),
    "sentence_transformers": ("sentence-transformers", "Apache-2.0"),
    "datasets": ("datasets", "Apache-2.0"),
    "accelerate": ("accelerate", "Apache-2.0"),
    "huggingface_hub": ("huggingface_hub", "Apache-2.0"),
    "numpy": ("numpy", "BSD-3-Clause"),
    "sklearn": ("scikit-learn", "BSD-3-Clause"),
    "tqdm": ("tqdm", "MPL-2.0 AND MIT"),
}


def version_of(root: str) -> str:
    from importlib.metadata import version

    if root == "stdlib":
        return ".".join(map(str, sys.version_info[:3]))
    return version(SOURCES[root][0])


def notice(splits: dict, data: bytes) -> str:
    counts = {split: Counter(p.source.split("/")[0] for p in pairs) for split, pairs in splits.items()}
    lines = [
        "docstring_pairs.jsonl.gz: the gte-st default job's training and held-out pairs.",
        "",
        "Each row is an excerpt of a documented function or class of the source named in its 'source' field (a",
        "docstring's summary line, and its qualified name, signature and remaining docstring), and stays under that",
        "source's licence. Written by scripts/build_default_pairs.py (gte_st.default_data.mine_docstring_pairs).",
        f"sha256 of the file: {hashlib.sha256(data).hexdigest()}",
        "",
        "source                   version      licence            train   held-out",
    ]
    for root, (name, licence) in SOURCES.items():
        train, test = counts["train"].get(root, 0), counts["test"].get(root, 0)
        if train or test:
            lines.append(f"{name:<24} {version_of(root):<12} {licence:<18} {train:>5}   {test:>8}")
    lines.append(f"{'all':<24} {'':<12} {'':<18} {len(splits['train']):>5}   {len(splits['test']):>8}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from gte_st.default_data import DEFAULT_PACKAGES, DEFAULT_PAIRS_FILE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir", type=Path, default=DEFAULT_PAIRS_FILE.parent, help="folder for the pairs and NOTICE"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(DEFAULT_PACKAGES) - set(SOURCES))
    if unknown:  # every mined source needs a stated licence before its text is shipped
        parser.error(f"no licence recorded in SOURCES for {unknown}; add them before building")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        parser.error(f"--out-dir {args.out_dir} is a file, not a folder")

    from gte_st.default_data import mine_docstring_pairs, source_roots, write_docstring_pairs
    from gte_st.errors import UsageError
    from gte_st.files import atomic_write_text, check_output_path

    try:  # the output folder is this script's own: never inside, equal to or holding a source it mines
        check_output_path(
            args.out_dir,
            {f"{name} sources": root for name, root in source_roots(DEFAULT_PACKAGES)},
            option="--out-dir",
        )
    except UsageError as error:
        parser.error(str(error))

    splits = mine_docstring_pairs(DEFAULT_PACKAGES)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    data = write_docstring_pairs(splits, args.out_dir / DEFAULT_PAIRS_FILE.name)
    atomic_write_text(args.out_dir / "NOTICE", notice(splits, data))
    print(f"{len(splits['train'])} train / {len(splits['test'])} held-out pairs -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
