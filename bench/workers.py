"""Client processes: each runs one async function, reports ready, waits for go, runs, returns.

Clients are separate processes so the load generator never shares an event
loop (or the GIL) with the coordinator or the server. They are spawned, not
forked: the coordinator holds gRPC channels and gRPC does not survive fork.
All timing uses time.monotonic(): CLOCK_MONOTONIC is system-wide on Linux,
so instants taken in different processes compare directly.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.context
import queue
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from bench.procs import BenchError

__all__ = ["WorkerLink", "WorkerPool", "spawn_context"]

_START_TIMEOUT = 120.0


def spawn_context() -> multiprocessing.context.SpawnContext:
    return multiprocessing.get_context("spawn")


class WorkerLink:
    """The worker's side: tell the coordinator things, hear its commands."""

    def __init__(self, index: int, events: Any, commands: Any) -> None:
        self.index = index
        self._events = events
        self._commands = commands

    def ready(self, info: Any = None) -> None:
        self._events.put(("ready", self.index, info))

    def report(self, data: Any) -> None:
        self._events.put(("report", self.index, data))

    async def command(self) -> Any:
        """The coordinator's next message; waits in a thread so the event loop keeps serving streams."""
        return await asyncio.get_running_loop().run_in_executor(None, self._commands.get)


WorkerFn = Callable[[Any, WorkerLink], Coroutine[Any, Any, Any]]


def _worker_main(fn: WorkerFn, spec: Any, index: int, events: Any, commands: Any) -> None:
    try:
        result: Any = asyncio.run(fn(spec, WorkerLink(index, events, commands)))
        events.put(("result", index, result))
    except BaseException as exc:  # reported to the coordinator, which names the worker
        events.put(("error", index, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"))


class WorkerPool:
    """A set of client processes running fn(spec) for each spec."""

    def __init__(self, fn: WorkerFn, specs: Sequence[Any], label: str) -> None:
        ctx = spawn_context()
        self.label = label
        self.size = len(specs)
        self._events: Any = ctx.Queue()
        self._commands = [ctx.Queue() for _ in specs]
        self._procs = [
            ctx.Process(target=_worker_main, args=(fn, spec, i, self._events, self._commands[i]), daemon=True)
            for i, spec in enumerate(specs)
        ]
        self._results: dict[int, Any] = {}
        self._ready: dict[int, Any] = {}
        self.on_report: Callable[[int, Any], None] = lambda index, data: None

    def __enter__(self) -> WorkerPool:
        for proc in self._procs:
            proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def close(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(5)

    def _poll(self, wait: float) -> bool:
        """Handles at most one event; False if none came within wait seconds."""
        try:
            kind, index, data = self._events.get(timeout=wait)
        except queue.Empty:
            dead = [p for p in self._procs if p.exitcode not in (None, 0)]
            if dead:
                raise BenchError(f"{self.label}: a client process died (exit {dead[0].exitcode})") from None
            return False
        if kind == "error":
            raise BenchError(f"{self.label}: client {index} failed: {data}")
        self._dispatch(kind, index, data)
        return True

    def pump(self, until: Callable[[], bool], timeout: float) -> bool:
        """Handles events (reports go to on_report) until until() holds; False if timeout came first."""
        deadline = time.monotonic() + timeout
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._poll(min(remaining, 0.1))
        return True

    def _dispatch(self, kind: str, index: int, data: Any) -> None:
        if kind == "report":
            self.on_report(index, data)
        elif kind == "result":
            self._results[index] = data
        elif kind == "ready":
            self._ready[index] = data

    def wait_ready(self, timeout: float = _START_TIMEOUT) -> list[Any]:
        if not self.pump(lambda: len(self._ready) == self.size, timeout):
            raise BenchError(f"{self.label}: client processes were not ready within {timeout:.0f}s")
        return [self._ready[i] for i in range(self.size)]

    def send(self, message: Any, index: int | None = None) -> None:
        """A command to one worker, or the same to all."""
        for i in range(self.size) if index is None else [index]:
            self._commands[i].put(message)

    def results(self, timeout: float) -> list[Any]:
        if not self.pump(lambda: len(self._results) == self.size, timeout):
            raise BenchError(f"{self.label}: client processes did not finish within {timeout:.0f}s")
        return [self._results[i] for i in range(self.size)]
