"""A test module's shared server: what it starts with (its RIG) and starting it.

The one `rig` fixture (tests/e2e/conftest.py) reads the module's RIG, so each story
says only what differs: its flags, the agents enrolled and the keys made up front,
and any stand-ins its tests need beside the server.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from kms.v1 import admin_pb2
from tests.harness import ServerProcess, enroll, short_tmpdir

__all__ = ["Rig", "started"]


class _Closeable(Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True)
class Rig:
    """The shared server of a module: (server, root, *stand_ins) for its tests.

    root is a short temporary directory (socket paths stay short): the server's data
    dir is root/d, each agent's state dir root/NAME.
    """

    prefix: str
    args: tuple[str, ...] = ()
    # (name, groups): enrolled once the server is up, in this order.
    agents: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # (name, grant): made after the agents enroll.
    keys: tuple[tuple[str, str], ...] = ()
    # Made after the keys, handed to the tests after root, closed before the server stops.
    stand_ins: tuple[Callable[[], _Closeable], ...] = ()


@contextmanager
def started(spec: Rig) -> Iterator[tuple[Any, ...]]:
    """Starts the server as spec says; stops it at the end and requires a clean exit."""
    root = short_tmpdir(spec.prefix)
    server = ServerProcess(root / "d", extra_args=list(spec.args)).start()
    stand_ins: list[_Closeable] = []
    try:
        for name, groups in spec.agents:
            result = enroll(server, root / name, server.token(name, *groups))
            assert result.returncode == 0, result.stderr
        for key, grant in spec.keys:  # set-up, over the admin socket (no process to start)
            server.stub.CreateKey(admin_pb2.CreateKeyRequest(name=key, grants=[grant]), timeout=30)
        stand_ins = [make() for make in spec.stand_ins]
        yield (server, root, *stand_ins)
    finally:
        for stand_in in stand_ins:
            stand_in.close()
        code = server.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert code == 0, server.output()
