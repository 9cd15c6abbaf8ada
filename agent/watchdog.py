"""A timer that fires when a stream stays silent too long (sync gRPC has no per-message deadline)."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Watchdog"]


class Watchdog:
    """Calls on_silence when reset() is not called for timeout seconds."""

    def __init__(self, timeout: float, on_silence: Callable[[], object]) -> None:
        self._timeout = timeout
        self._on_silence = on_silence
        self.fired = False
        self._timer: threading.Timer | None = None
        self.reset()

    def _fire(self) -> None:
        self.fired = True
        self._on_silence()

    def reset(self) -> None:
        self.cancel()
        self._timer = threading.Timer(self._timeout, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
