"""``python -m gte_st.training`` / ``accelerate launch -m gte_st.training``: the same as ``gte-st train``."""

import sys

from gte_st.cli import run_command

sys.exit(run_command("train", sys.argv[1:]))
