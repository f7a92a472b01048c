"""How the entry scripts end on a known error: one line ``error: ...`` on stderr and exit status 2, no traceback.

``--debug`` on the command line or ``LAVILA_DEBUG=1`` in the environment re-raises instead, so the traceback shows.
Which exceptions count as known is the caller's list (each entry script's layer knows its own error types); anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

EXIT_ERROR = 2  # what argparse uses for a bad command line


def debug_enabled(argv: Sequence[str] | None = None) -> bool:
    """``--debug`` among the arguments (``sys.argv`` when ``argv`` is None) or ``LAVILA_DEBUG`` set to a true value."""
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get("LAVILA_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def one_line(text: str) -> str:
    """A message on one line (multi-line messages, e.g. a strict-load report, joined with '; ')."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    return "; ".join(parts) if parts else "unknown error"


def report(message: str) -> int:
    """Print ``error: <message>`` (one line) on stderr; returns the exit status to use."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()
    return EXIT_ERROR


def run_main(body: Callable[[], int], known: tuple[type[BaseException], ...], argv: Sequence[str] | None = None,
             describe: Callable[[BaseException], str] = str) -> int:
    """Run ``body()``; a ``known`` exception becomes one ``error:`` line and status 2 (re-raised under debug)."""
    try:
        return body()
    except known as exc:
        if debug_enabled(argv):
            raise
        return report(describe(exc))
