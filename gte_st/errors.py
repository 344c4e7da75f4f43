"""The exceptions gte-st raises for problems a user can fix (bad input, missing files, wrong settings).

``gte_st.cli`` turns these (and ``ValueError`` / ``OSError`` / ``ImportError``) into a one-line message naming the
file, row or option at fault and a non-zero exit code; library callers catch them as usual.
"""

from __future__ import annotations


class GteStError(Exception):
    """Base class of gte-st's own errors."""


class UsageError(GteStError, ValueError):
    """A command-line option is missing, unknown or has a bad value (exit code 2)."""


__all__ = ["GteStError", "UsageError"]
