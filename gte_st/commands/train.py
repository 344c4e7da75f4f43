"""``gte-st train`` (= ``accelerate launch -m gte_st.training``): run a GTE training recipe.

With no arguments it runs the embedded default job offline: the packaged all-MiniLM-L6-v2, weak pairs mined from the
docstrings of the installed Python sources, retrieval nDCG@10 on held-out files before and after, result in ``./gte``.
Options: ``--config recipe.yaml`` plus any ``--key value`` override; ``--help`` lists them all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from transformers import TrainerCallback


def main(argv: list[str], callbacks: Sequence[TrainerCallback] = ()) -> int:
    """Parse and check the recipe, train, print the summary."""
    from accelerate import PartialState

    from gte_st.training.recipe import parse_stages
    from gte_st.training.run import run
    from gte_st.training_summary import format_summary

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stages = parse_stages(argv)
    summary = run(stages, callbacks=callbacks)
    if PartialState().is_main_process:
        print(format_summary(summary, stages[0].final_dir))
    return 0
