"""Two kms-server replicas on one PostgreSQL database, and what their stories check them with."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.harness import ServerProcess, WatchProcess, short_tmpdir
from tests.workers import connections, socket_inodes

__all__ = [
    "REPLICA_ARGS",
    "errors_logged",
    "key_events",
    "log_seqs",
    "missing",
    "port_of",
    "remote_ports",
    "replicas",
    "start_replicas",
    "stop_all",
    "wait_until",
    "warm_up",
]

REPLICA_ARGS = [
    "--heartbeat", "1s",
    # Twenty enrollments (nineteen refused tokens) from one address in a second.
    "--enroll-rate", "100000", "--auth-failure-rate", "100000",
]  # fmt: skip


def start_replicas(root: Path, *extra: str) -> tuple[ServerProcess, ServerProcess]:
    """A on a fresh database (it makes the CA and master.key), then B on the same one with A's key."""
    a = ServerProcess(root / "a", extra_args=[*REPLICA_ARGS, *extra]).start()
    try:
        b = ServerProcess(
            root / "b",
            extra_args=[*REPLICA_ARGS, *extra, "--master-key-file", str(root / "a" / "master.key")],
            database=a.database,
        ).start()
    except BaseException:
        a.kill()
        raise
    assert a.database and a.database == b.database
    assert a.fingerprint == b.fingerprint, "replicas of one database must serve one CA"
    return a, b


def stop_all(*servers: ServerProcess) -> None:
    """SIGTERM each one still running and require a clean exit (a killed one is already gone)."""
    codes = {}
    for s in servers:
        try:
            codes[s.data_dir.name] = s.stop()
        finally:
            s.kill()
    assert set(codes.values()) <= {0}, f"exit codes {codes}:\n" + "\n".join(s.output() for s in servers)


@contextmanager
def replicas(*extra: str) -> Iterator[tuple[ServerProcess, ServerProcess, Path]]:
    root = short_tmpdir("kmsrp")
    a, b = start_replicas(root, *extra)
    try:
        yield a, b, root
    finally:
        try:
            stop_all(a, b)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what() if callable(what) else what}")
        time.sleep(0.1)


def key_events(watcher: WatchProcess, *keys: str) -> list[dict[str, Any]]:
    with watcher._cond:
        return [e for e in watcher.events if e.get("key") in keys]


def warm_up(server: ServerProcess, watchers: list[WatchProcess], key: str) -> None:
    """One event through server, seen by every watcher: their streams are open and caught up.

    Watchers here are in group watch: key events go only to the key's grantees."""
    server.admin("key", "create", key, "--grant", "group:watch")
    server.admin("revoke", "key", "--yes", key, "--version", "1")
    for w in watchers:
        w.wait_for(lambda evs: any(e.get("key") == key for e in evs), timeout=30)


def missing(name: str, watcher: WatchProcess, expected: list[int], *keys: str) -> str:
    """Which of expected a watcher has not printed (only events of keys, if given)."""
    got = [e["seq"] for e in key_events(watcher, *keys)] if keys else watcher.seqs()
    absent = sorted(set(expected) - set(got))
    return (
        f"watcher on {name} printed {len(got)} of {len(expected)}, first missing {absent[:5]}, "
        f"running={watcher.proc.poll() is None}, stderr={''.join(watcher.stderr[-5:])!r}"
    )


def errors_logged(*servers: ServerProcess) -> str:
    """Each server's ERROR lines with the exception that ended each traceback, for a failure message."""
    out = []
    for s in servers:
        out.append(f"--- replica {s.data_dir.name}:")
        for line in s.output().splitlines():
            skip = ("Traceback", "20", "kms-server ready", "---")
            if " ERROR " in line or (line and not line[0].isspace() and not line.startswith(skip)):
                out.append(line)
    return "\n".join(out[:60])


def log_seqs(server: ServerProcess) -> list[int]:
    return [e["seq"] for e in json.loads(server.admin("revocations", "list", "--json").stdout)]


def remote_ports(pid: int) -> set[int]:
    """The remote TCP ports of pid's established connections (to tell which replica it talks to)."""
    mine = socket_inodes(pid)
    return {remote for _local, remote, inode in connections() if inode in mine}


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])
