"""One progress line on stderr while a scenario runs (stdout stays for the table or the JSON)."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Shows ``[scenario] step · elapsed``; rewritten in place on a terminal, one line per step otherwise."""

    def __init__(self, stream: TextIO = sys.stderr, quiet: bool = False) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._quiet = quiet
        self._scenario = ""
        self._step = ""
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, scenario: str) -> None:
        self._scenario = scenario
        self._started = time.monotonic()
        self._stop.clear()
        if self._tty and not self._quiet:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        self.step("starting")

    def step(self, text: str) -> None:
        with self._lock:
            self._step = text
            self._draw(newline=not self._tty)

    def done(self, summary: str) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            self._step = summary
            self._draw(newline=True)

    def _draw(self, *, newline: bool) -> None:
        if self._quiet:
            return
        elapsed = time.monotonic() - self._started
        line = f"[{self._scenario}] {self._step} · {elapsed:.1f}s"
        if self._tty:
            self._stream.write("\r\x1b[K" + line + ("\n" if newline else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def _tick(self) -> None:
        # The elapsed time moves even while a step waits on client processes.
        while not self._stop.wait(0.5):
            with self._lock:
                self._draw(newline=False)
