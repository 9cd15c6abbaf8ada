"""Which worker process holds a connection: read from /proc, so tests of `--workers N` are deterministic.

The kernel spreads connections over the workers' SO_REUSEPORT sockets by a hash
of the addresses; a test opens channels one by one and asks, for each, which
worker accepted it, until it has one on every worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc

from tests.harness import ServerProcess

__all__ = [
    "channel_on_each_worker",
    "children",
    "connections",
    "held",
    "on_worker",
    "socket_inodes",
    "worker_index",
    "worker_pids",
]

T = TypeVar("T")


def children(supervisor: int) -> list[int]:
    """The workers' pids, the primary's first (it is started first)."""
    return sorted(int(p) for p in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split())


def worker_index(pid: int) -> int | None:
    """Which worker pid is (0: the primary), from the role its supervisor started it with (None:
    not started yet, between fork and exec, or gone)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(b"SEED_KMS_WORKER="):
            return int(entry.split(b"=", 1)[1].split(b":", 1)[0])
    return None


def worker_pids(server: ServerProcess, count: int, timeout: float = 10.0) -> list[int]:
    """The supervisor's children (its workers), once there are count of them."""
    assert server.proc is not None
    deadline = time.monotonic() + timeout
    while True:
        roles = {pid: worker_index(pid) for pid in children(server.proc.pid)}
        if (len(roles) == count and None not in roles.values()) or time.monotonic() > deadline:
            return sorted(roles, key=lambda pid: roles[pid] if roles[pid] is not None else count)
        time.sleep(0.05)


def connections() -> Iterator[tuple[int, int, int]]:
    """(local port, remote port, inode) of every established TCP socket of the host's namespace."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "01":  # ESTABLISHED
                continue
            local, remote = (int(a.rsplit(":", 1)[1], 16) for a in (fields[1], fields[2]))
            yield local, remote, int(fields[9])


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _own_ports(server_port: int) -> set[int]:
    """The local ports of this process's connections to server_port."""
    mine = socket_inodes(os.getpid())
    return {local for local, remote, inode in connections() if remote == server_port and inode in mine}


def held(supervisor: int, port: int) -> dict[int, set[int]]:
    """Per worker pid: the client ports of the connections to port it holds."""
    ends = {inode: remote for local, remote, inode in connections() if local == port}
    return {pid: {ends[i] for i in socket_inodes(pid) if i in ends} for pid in children(supervisor)}


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


def _worker_of(client_port: int, server_port: int, pids: list[int]) -> int | None:
    inodes = {
        inode for local, remote, inode in connections() if local == server_port and remote == client_port
    }
    for pid in pids:
        if inodes & socket_inodes(pid):
            return pid
    return None


def _who_am_i(channel: grpc.Channel) -> None:
    from kms.v1 import identity_pb2, identity_pb2_grpc

    identity_pb2_grpc.IdentityStub(channel).WhoAmI(identity_pb2.WhoAmIRequest(), timeout=10)


def _ca_bundle(channel: grpc.Channel) -> None:
    from kms.v1 import enrollment_pb2, enrollment_pb2_grpc

    enrollment_pb2_grpc.EnrollmentStub(channel).GetCABundle(enrollment_pb2.GetCABundleRequest(), timeout=10)


def channel_on_each_worker(
    server: ServerProcess,
    credentials: grpc.ChannelCredentials,
    count: int,
    tries: int = 64,
    *,
    enrollment: bool = False,
) -> dict[int, grpc.Channel]:
    """One open channel accepted by each of the server's count workers (by worker pid): to the
    mTLS port with an agent's credentials, or (enrollment) to the enrollment port.

    Raises:
        AssertionError: after tries channels, some worker still has none (odds 2**-63 for 2).
    """
    address = server.enroll_address if enrollment else server.address
    probe = _ca_bundle if enrollment else _who_am_i
    port = int(address.rsplit(":", 1)[1])
    pids = worker_pids(server, count)
    found: dict[int, grpc.Channel] = {}
    spare: list[Any] = []
    for _ in range(tries):
        before = _own_ports(port)
        # A subchannel pool of its own: a new TCP connection, not one shared with earlier channels.
        channel = grpc.secure_channel(address, credentials, options=[("grpc.use_local_subchannel_pool", 1)])
        probe(channel)
        new = _own_ports(port) - before
        assert len(new) == 1, f"expected one new connection, saw {sorted(new)}"
        pid = _worker_of(new.pop(), port, pids)
        if pid is not None and pid not in found:
            found[pid] = channel
            if len(found) == count:
                break
        else:
            spare.append(channel)
    for channel in spare:
        channel.close()
    assert len(found) == count, f"connections reached only workers {sorted(found)} of {pids}"
    return found
