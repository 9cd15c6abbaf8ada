"""Story: kms-agent watch and kms-agent run follow a list of addresses across failovers.

On SQLite, one server is stopped and started again on another address of the list,
on the same data directory (the same CA and event log, as replicas share them). On
PostgreSQL, the story runs against two true replicas of one database.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from kms.v1 import admin_pb2
from tests.e2e.failover_addresses import enroll_listed, free_address
from tests.harness import (
    ServerProcess,
    WatchProcess,
    admin_stub,
    agent,
    exe,
)

SERVER_ARGS = ["--heartbeat", "1s"]


def _revoke(server: ServerProcess, key: str, count: int) -> list[int]:
    """count events (key versions compromised, each rotating the key); their sequence numbers."""
    stub = admin_stub(server)
    stub.CreateKey(admin_pb2.CreateKeyRequest(name=key, grants=[]), timeout=10)
    return [
        stub.RevokeKey(admin_pb2.RevokeKeyRequest(name=key, version=v), timeout=10).event.seq
        for v in range(1, count + 1)
    ]


class _Followers:
    """Two agents enrolled with the same address list: one runs kms-agent watch, one kms-agent run.

    The second keeps a key file (fetch-key --out) that kms-agent run re-fetches after each rotation.
    """

    def __init__(
        self, root: Path, server: ServerProcess, servers: list[str], enroll_servers: list[str]
    ) -> None:
        self.root = root
        for name in ("w", "r"):
            result = enroll_listed(
                server,
                root / name,
                name,
                "--server",
                ",".join(servers),
                "--enroll-server",
                ",".join(enroll_servers),
            )
            assert result.returncode == 0, result.stderr
        server.admin("key", "create", "app", "--grant", "group:web")
        self.key_file = root / "app.hex"
        fetched = agent(root / "r", "fetch-key", "app", "--out", str(self.key_file), "--format", "hex")
        assert fetched.returncode == 0, fetched.stderr
        self.made: list[int] = []
        self.rotations = 0
        self.watcher = WatchProcess(root / "w")
        self.daemon = subprocess.Popen(
            [exe("kms-agent"), "run", "--no-listen", "--dir", str(root / "r")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def events_through(self, server: ServerProcess, key: str, *, rotate: bool = True) -> None:
        """Three revocations and a rotation of app through server; waits until both agents acted on them."""
        stub = admin_stub(server)
        stub.CreateKey(admin_pb2.CreateKeyRequest(name=key, grants=["group:web"]), timeout=10)
        self.made += [
            stub.RevokeKey(admin_pb2.RevokeKeyRequest(name=key, version=v), timeout=10).event.seq
            for v in (1, 2, 3)
        ]
        if rotate:
            server.admin("key", "rotate", "app")
            self.rotations += 1
        self.watcher.wait_for(lambda evs: len(evs) >= len(self.made) + self.rotations, timeout=40)
        if rotate:  # kms-agent run heard the rotation and re-fetched its key file
            current = agent(self.root / "w", "fetch-key", "app", "--format", "hex").stdout
            deadline = time.monotonic() + 30
            while self.key_file.read_text() != current and time.monotonic() < deadline:
                time.sleep(0.3)
            assert self.key_file.read_text() == current, "kms-agent run did not re-fetch app"

    def check_and_stop(self, *moved_to: str) -> None:
        """Every event once, in order (no gap, no repeat); the watcher moved to each of moved_to."""
        time.sleep(1.5)  # a heartbeat or two: nothing more may come
        assert [e["seq"] for e in self.watcher.events if e["kind"] == "key"] == self.made
        seqs = self.watcher.seqs()
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        log = "".join(self.watcher.stderr)
        for address in moved_to:
            assert f"next: {address}" in log, log
        assert self.watcher.stop() == 0
        self.daemon.terminate()
        assert self.daemon.wait(20) == 0, self.daemon.stderr.read() if self.daemon.stderr else ""

    def kill(self) -> None:
        for proc in (self.watcher.proc, self.daemon):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.sqlite_only("true replicas need PostgreSQL: test_watch_and_run_follow_true_replicas")
def test_watch_and_run_move_to_the_next_address_and_resume(tmpdir_short: Path) -> None:
    """One server killed and back on the second address, then stopped and back on the first."""
    data = tmpdir_short / "d"
    first = ServerProcess(data, extra_args=SERVER_ARGS).start()
    second_address = free_address()
    server = first
    followers: _Followers | None = None
    try:
        followers = _Followers(tmpdir_short, server, [first.address, second_address], [first.enroll_address])
        followers.events_through(server, "k1", rotate=False)
        # Killed outright; back on the second address (same data: same CA, same event log).
        server.kill()
        server = ServerProcess(data, extra_args=SERVER_ARGS, listen=second_address).start()
        followers.events_through(server, "k2")  # made while the agents are away, or just back
        # Stopped cleanly; back on the first address.
        assert server.stop() == 0
        server = ServerProcess(
            data, extra_args=SERVER_ARGS, listen=first.address, enroll_listen=first.enroll_address
        ).start()
        followers.events_through(server, "k3")
        followers.check_and_stop(second_address, first.address)
    finally:
        if followers is not None:
            followers.kill()
        server.kill()


@pytest.mark.postgresql_only("replicas share one PostgreSQL database")
def test_watch_and_run_follow_true_replicas(tmpdir_short: Path) -> None:
    """Two replicas of one database: one is killed, agents move to the other; it comes back, the other stops."""
    args = [*SERVER_ARGS, "--master-key-file", str(tmpdir_short / "master.key")]
    one = ServerProcess(tmpdir_short / "d1", extra_args=args).start()
    two = ServerProcess(tmpdir_short / "d2", extra_args=args, database=one.database).start()
    servers = [one, two]
    followers: _Followers | None = None
    try:
        assert two.fingerprint == one.fingerprint
        followers = _Followers(
            tmpdir_short, one, [one.address, two.address], [one.enroll_address, two.enroll_address]
        )
        followers.events_through(one, "k1", rotate=False)

        one.kill()
        followers.events_through(two, "k2")
        # With the first replica gone, a new agent enrolls through the second, and commands fail over.
        late = tmpdir_short / "late"
        result = enroll_listed(
            two,
            late,
            "late",
            "--server",
            f"{one.address},{two.address}",
            "--enroll-server",
            f"{one.enroll_address},{two.enroll_address}",
        )
        assert result.returncode == 0, result.stderr
        assert agent(late, "fetch-key", "app").returncode == 0

        one = ServerProcess(
            tmpdir_short / "d1",
            extra_args=args,
            database=two.database,
            listen=one.address,
            enroll_listen=one.enroll_address,
        ).start()
        servers.append(one)
        assert two.stop() == 0
        followers.events_through(one, "k3")
        followers.check_and_stop(two.address, one.address)
    finally:
        if followers is not None:
            followers.kill()
        for server in servers:
            server.kill()
