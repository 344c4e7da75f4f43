"""``gte-st train`` / ``python -m gte_st.train`` / ``accelerate launch -m gte_st.train``: run a GTE training recipe.

With no arguments it runs the embedded default job offline: the packaged all-MiniLM-L6-v2, weak pairs mined from the
docstrings of the installed Python sources, retrieval nDCG@10 on held-out files before and after, result in ``./gte``.
Options: ``--config recipe.yaml`` plus any ``--key value`` override; ``--help`` lists them all.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from transformers import TrainerCallback


def main(argv: Sequence[str] | None = None, callbacks: Sequence[TrainerCallback] = ()) -> int:
    """Parse the recipe, train, print the summary. Returns a process exit code."""
    from gte_st.data import DataValidationError
    from gte_st.training import NonFiniteLossError, format_summary, parse_stages, run

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        stages = parse_stages(list(sys.argv[1:] if argv is None else argv))
        summary = run(stages, callbacks=callbacks)
    except (DataValidationError, NonFiniteLossError, ValueError, FileNotFoundError) as exc:
        print(f"gte-st train: error: {exc}", file=sys.stderr)
        return 1
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(format_summary(summary, stages[0].final_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
