"""The stop protocol of long library functions: a ``should_stop()`` callable.

    stop = StopRequest()            # the CLI / jobs/ set it from SIGTERM / SIGUSR1 (runtime.stop_on_signals)
    segment(..., should_stop=stop)  # library code only asks it, between steps or blocks
    stop.set("SIGTERM")

Library functions default to ``never`` and install no signal handler, so they run on any
thread.  Dependency-free: every layer may use it.
"""

from __future__ import annotations

import threading


class StopRequest:
    """A thread-safe "please checkpoint and stop" flag; calling it answers ``should_stop()``."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def __call__(self) -> bool:
        return self._event.is_set()

    def set(self, reason: str = "requested") -> None:
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


def never() -> bool:
    """The default ``should_stop``: run to the end."""
    return False
