"""Which worker of a `kms-server run --workers N` holds a connection: read from /proc.

The supervisor's children are its workers; a worker holds a connection when one
of its descriptors is the server's end of it (the socket's inode, in
/proc/net/tcp{,6}: local port the server's, remote port the client's).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["held", "on_worker", "worker_pids"]

T = TypeVar("T")
_ESTABLISHED = "01"


def worker_pids(supervisor: int) -> list[int]:
    """The workers' pids, the primary's first (it is started first)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return sorted(int(pid) for pid in children)


def _inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def _client_ports(port: int) -> dict[str, int]:
    """Inode of each established server-side socket on port -> the client's port."""
    ends: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if state == _ESTABLISHED and int(local.rsplit(":", 1)[1], 16) == port:
                    ends[inode] = int(remote.rsplit(":", 1)[1], 16)
    return ends


def held(supervisor: int, port: int) -> dict[int, set[int]]:
    """Per worker pid: the client ports of the connections to port it holds."""
    ends = _client_ports(port)
    return {pid: {ends[i] for i in _inodes(pid) if i in ends} for pid in worker_pids(supervisor)}


def on_worker(supervisor: int, port: int, want: int, open_one: Callable[[], T], tries: int = 40) -> T:
    """Opens connections (open_one connects and returns something to keep or close) until one lands
    on worker pid want; returns that one, having closed the others (their close())."""
    for _ in range(tries):
        before = held(supervisor, port)
        made = open_one()
        deadline = time.monotonic() + 5
        while True:
            after = held(supervisor, port)
            new = {pid for pid in after if after[pid] - before.get(pid, set())}
            if new or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if new == {want}:
            return made
        made.close()  # type: ignore[attr-defined]
    raise AssertionError(f"no connection to port {port} landed on worker {want} in {tries} tries")
