"""Preemption signals: SIGTERM, SIGUSR1 and Ctrl-C (SIGINT; a second one aborts at once) set a flag that the
training loop reads at the next optimiser-step boundary (``lavila.train.loop`` then saves ``checkpoint.pt`` and
returns ``{"status": "preempted", ...}``); data-loader workers ignore Ctrl-C so the main process decides.
"""
from __future__ import annotations

import signal
import sys
from typing import Any


class PreemptionFlag:
    """Records SIGTERM / SIGUSR1 / SIGINT (Ctrl-C) so the loop can checkpoint at the next step boundary; a second
    Ctrl-C aborts at once (KeyboardInterrupt, no checkpoint)."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            if self.signal == signal.SIGINT:
                raise KeyboardInterrupt("second Ctrl-C: aborted without saving")
            print("Ctrl-C: saving a checkpoint at the next step, then stopping (Ctrl-C again aborts at once)",
                  file=sys.stderr, flush=True)
        self.signal = signum

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handler)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask the loop to stop at the next step boundary (what the signal handler does)."""
        self.signal = signum


def ignore_sigint(worker_id: int) -> None:
    """Ctrl-C reaches the loader workers too (one process group): the main process decides when to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
