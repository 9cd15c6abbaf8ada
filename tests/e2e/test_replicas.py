"""Story: two kms-server replicas on one PostgreSQL database act as one deployment.

Replica A is the first server on an empty database (it makes the CA and the master
key); replica B joins with A's master key. Agents enroll through one and are served
by the other; a join token raced through both is used once; revocations issued
through both reach watchers on both, in one order, once each; a watcher whose
replica is SIGKILLed moves to the other and misses nothing; and a PostgreSQL
restart under load is ridden out by both replicas without restarting them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from kms.v1 import admin_pb2
from tests.harness import (
    ServerProcess,
    WatchProcess,
    admin_stub,
    agent,
    assert_one_line_error,
    cluster,
    enroll,
    execute_sql,
    query,
    short_tmpdir,
)

pytestmark = [
    pytest.mark.postgresql_only("replicas share one PostgreSQL database"),
    # Over a minute of replicas, agents and outages: started first, beside the agent daemon.
    pytest.mark.long_running,
]

REPLICA_ARGS = [
    "--heartbeat", "1s",
    # Twenty enrollments (nineteen refused tokens) from one address in a second.
    "--enroll-rate", "100000", "--auth-failure-rate", "100000",
]  # fmt: skip
BAD_TOKEN = "join token is invalid, expired or already used"


def _start_replicas(root: Path, *extra: str) -> tuple[ServerProcess, ServerProcess]:
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


def _stop_all(*servers: ServerProcess) -> None:
    """SIGTERM each one still running and require a clean exit (a killed one is already gone)."""
    codes = {}
    for s in servers:
        try:
            codes[s.data_dir.name] = s.stop()
        finally:
            s.kill()
    assert set(codes.values()) <= {0}, f"exit codes {codes}:\n" + "\n".join(s.output() for s in servers)


@contextmanager
def _replicas(*extra: str) -> Iterator[tuple[ServerProcess, ServerProcess, Path]]:
    root = short_tmpdir("kmsrp")
    a, b = _start_replicas(root, *extra)
    try:
        yield a, b, root
    finally:
        try:
            _stop_all(a, b)
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pair(backend: str) -> Iterator[tuple[ServerProcess, ServerProcess, Path]]:
    """Replicas A and B shared by the first tests of the module (the later ones kill things)."""
    with _replicas() as rig:
        yield rig


def _wait(predicate: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what() if callable(what) else what}")
        time.sleep(0.1)


def _key_events(watcher: WatchProcess, *keys: str) -> list[dict[str, Any]]:
    with watcher._cond:
        return [e for e in watcher.events if e.get("key") in keys]


def _warm_up(server: ServerProcess, watchers: list[WatchProcess], key: str) -> None:
    """One event through server, seen by every watcher: their streams are open and caught up.

    Watchers here are in group watch: key events go only to the key's grantees."""
    server.admin("key", "create", key, "--grant", "group:watch")
    server.admin("revoke", "key", key, "--version", "1")
    for w in watchers:
        w.wait_for(lambda evs: any(e.get("key") == key for e in evs), timeout=30)


def _missing(name: str, watcher: WatchProcess, expected: list[int], *keys: str) -> str:
    """Which of expected a watcher has not printed (only events of keys, if given)."""
    got = [e["seq"] for e in _key_events(watcher, *keys)] if keys else watcher.seqs()
    absent = sorted(set(expected) - set(got))
    return (
        f"watcher on {name} printed {len(got)} of {len(expected)}, first missing {absent[:5]}, "
        f"running={watcher.proc.poll() is None}, stderr={''.join(watcher.stderr[-5:])!r}"
    )


def _errors_logged(*servers: ServerProcess) -> str:
    """Each server's ERROR lines with the exception that ended each traceback, for a failure message."""
    out = []
    for s in servers:
        out.append(f"--- replica {s.data_dir.name}:")
        for line in s.output().splitlines():
            skip = ("Traceback", "20", "kms-server ready", "---")
            if " ERROR " in line or (line and not line[0].isspace() and not line.startswith(skip)):
                out.append(line)
    return "\n".join(out[:60])


def _log(server: ServerProcess) -> list[int]:
    return [e["seq"] for e in json.loads(server.admin("revocations", "list", "--json").stdout)]


def _remote_ports(pid: int) -> set[int]:
    """The remote TCP ports of pid's established connections (to tell which replica it talks to)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# --- one deployment, two doors ------------------------------------------------------


def test_enroll_through_a_fetch_key_through_b(pair: tuple[ServerProcess, ServerProcess, Path]) -> None:
    a, b, root = pair
    # Enrolled on A's enrollment port; every later call goes to B (and the other way round).
    via_a, via_b = root / "via-a", root / "via-b"
    result = enroll(a, via_a, a.token("cross-a", "web"), server=b.address)
    assert result.returncode == 0, result.stderr
    result = enroll(b, via_b, b.token("cross-b", "web"), server=a.address)
    assert result.returncode == 0, result.stderr

    a.admin("key", "create", "shared", "--grant", "group:web")
    key_b = agent(via_a, "fetch-key", "shared", "--format", "hex")  # served by B
    key_a = agent(via_b, "fetch-key", "shared", "--format", "hex")  # served by A
    assert key_b.returncode == 0, key_b.stderr + b.output()
    assert key_a.returncode == 0, key_a.stderr + a.output()
    assert key_a.stdout == key_b.stdout and len(bytes.fromhex(key_a.stdout.strip())) == 32

    status = agent(via_a, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["name"] == "cross-a"
    # Both replicas list both agents and both releases: one store.
    for server in (a, b):
        names = {x["name"] for x in json.loads(server.admin("agents", "list", "--json").stdout)}
        assert {"cross-a", "cross-b"} <= names
    releases = query(a, "SELECT agent_name FROM key_releases WHERE key_name = ?", "shared")
    assert {r[0] for r in releases} == {"cross-a", "cross-b"}
    assert a.admin("audit", "verify").returncode == 0 and b.admin("audit", "verify").returncode == 0

    # A rotation through B is served by A (within a moment: replicas hear of it through the database).
    b.admin("key", "rotate", "shared")
    _wait(
        lambda: json.loads(agent(via_b, "fetch-key", "shared", "--json").stdout or "{}").get("version") == 2,
        10,
        "A serves version 2 after B rotated",
    )


def test_revocations_through_one_replica_are_enforced_by_the_other(
    pair: tuple[ServerProcess, ServerProcess, Path],
) -> None:
    a, b, root = pair
    victim, holder = root / "victim", root / "holder"
    assert enroll(a, victim, a.token("victim", "ops"), server=b.address).returncode == 0  # served by B
    assert enroll(b, holder, b.token("holder", "ops"), server=a.address).returncode == 0  # served by A
    a.admin("key", "create", "opskey", "--grant", "group:ops")
    assert agent(victim, "fetch-key", "opskey").returncode == 0
    assert agent(holder, "fetch-key", "opskey", "--version", "1").returncode == 0

    # A key version compromised through B: A stops releasing it.
    b.admin("revoke", "key", "opskey", "--version", "1", "--reason", "keyCompromise")
    _wait(
        lambda: agent(holder, "fetch-key", "opskey", "--version", "1").returncode == 6,
        10,
        "A refuses a version compromised through B",
    )
    assert_one_line_error(agent(holder, "fetch-key", "opskey", "--version", "1"), 6, "compromised")

    # An agent revoked through A: B refuses it.
    a.admin("revoke", "agent", "victim", "--reason", "keyCompromise")
    _wait(lambda: agent(victim, "status").returncode == 11, 10, "B refuses an agent revoked through A")
    assert_one_line_error(agent(victim, "fetch-key", "opskey"), 11, "was revoked")


def test_one_token_raced_through_both_replicas_is_used_once(
    pair: tuple[ServerProcess, ServerProcess, Path],
) -> None:
    a, b, root = pair
    token = a.token("racer")
    token_id = token.split(".")[0]
    racers = 20
    barrier = threading.Barrier(racers)

    def race(i: int) -> subprocess.CompletedProcess[str]:
        server = a if i % 2 == 0 else b  # ten through A, ten through B
        barrier.wait()
        return enroll(server, root / f"race-{i}", token)

    with ThreadPoolExecutor(racers) as pool:
        results = list(pool.map(race, range(racers)))

    winners = [i for i, r in enumerate(results) if r.returncode == 0]
    assert len(winners) == 1, [(r.returncode, r.stderr) for r in results]
    for i, r in enumerate(results):
        if i not in winners:
            assert_one_line_error(r, 3, BAD_TOKEN)
            assert not (root / f"race-{i}" / "agent.json").exists()
    serial = json.loads(agent(root / f"race-{winners[0]}", "status", "--json").stdout)["serial"]

    # In the database: exactly one certificate for the token, and the token names it.
    issued = query(a, "SELECT serial, agent_name FROM certificates WHERE token_id = ?", token_id)
    assert len(issued) == 1 and issued[0][1] == "racer", issued
    assert int(issued[0][0], 16) == int(serial, 16)
    used = query(a, "SELECT used_by_serial FROM join_tokens WHERE token_id = ?", token_id)
    assert used == [(issued[0][0],)]


@pytest.mark.timeout(300)
def test_revocations_through_both_reach_watchers_on_both_in_one_order(
    pair: tuple[ServerProcess, ServerProcess, Path],
) -> None:
    a, b, root = pair
    assert enroll(a, root / "wa", a.token("watch-a", "watch")).returncode == 0
    assert enroll(b, root / "wb", b.token("watch-b", "watch")).returncode == 0
    on_a, on_b = WatchProcess(root / "wa"), WatchProcess(root / "wb")
    try:
        _warm_up(a, [on_a, on_b], "warm-c")
        per_key = 500
        keys = ("churn-1", "churn-2")
        for key in keys:
            a.admin("key", "create", key, "--grant", "group:watch")
        acked: list[int] = []
        lock = threading.Lock()
        errors: list[BaseException] = []

        def revoke_all(key: str, first: int) -> None:
            # Each revocation of the current version rotates to the next; replicas alternate.
            stubs = [admin_stub(a), admin_stub(b)]
            try:
                for version in range(1, per_key + 1):
                    stub = stubs[(version + first) % 2]
                    resp = stub.RevokeKey(
                        admin_pb2.RevokeKeyRequest(name=key, version=version, reason="keyCompromise"),
                        timeout=30,
                    )
                    assert not resp.already_revoked
                    with lock:
                        acked.append(resp.event.seq)
            except BaseException as exc:
                errors.append(exc)

        # Two writers at once, each alternating A and B: the replicas race for sequence numbers.
        writers = [threading.Thread(target=revoke_all, args=(key, n)) for n, key in enumerate(keys)]
        for w in writers:
            w.start()
        for w in writers:
            w.join(120)
        assert not errors, errors
        assert len(acked) == 2 * per_key == len(set(acked))

        expected = sorted(acked)
        _wait(
            lambda: all(len(_key_events(w, *keys)) >= len(expected) for w in (on_a, on_b)),
            120,
            lambda: (
                "both watchers print all 1,000 revocations: "
                + "; ".join(_missing(name, w, expected, *keys) for name, w in (("A", on_a), ("B", on_b)))
            ),
        )
        time.sleep(2.5)  # a couple of heartbeats: nothing more (no duplicate) may come
        got_a, got_b = _key_events(on_a, *keys), _key_events(on_b, *keys)
        assert [e["seq"] for e in got_a] == sorted(acked), "watcher on A: not every event once, in order"
        assert [e["seq"] for e in got_b] == sorted(acked), "watcher on B: not every event once, in order"
        assert got_a == got_b
        assert {(e["kind"], e["key"]) for e in got_a} == {("key", k) for k in keys}
        for w in (on_a, on_b):
            seqs = w.seqs()
            assert seqs == sorted(set(seqs))
        assert _log(a) == _log(b)
    finally:
        on_a.stop()
        on_b.stop()


# --- failures -----------------------------------------------------------------------


def test_watcher_moves_to_b_when_a_is_killed_and_misses_nothing() -> None:
    with _replicas() as (a, b, root):
        state = root / "w"
        result = enroll(a, state, a.token("mover", "watch"), server=f"{a.address},{b.address}")
        assert result.returncode == 0, result.stderr
        b.admin("key", "create", "during", "--grant", "group:watch")
        watcher = WatchProcess(state)
        acked: list[int] = []
        stop = threading.Event()
        failures: list[str] = []

        def revoke_through_b() -> None:
            stub = admin_stub(b)
            version = 1
            while not stop.is_set():
                try:
                    resp = stub.RevokeKey(
                        admin_pb2.RevokeKeyRequest(name="during", version=version), timeout=10
                    )
                except grpc.RpcError as exc:  # B must keep working while A dies
                    failures.append(f"{exc.code()}: {exc.details()}")
                    return
                acked.append(resp.event.seq)
                version += 1
                time.sleep(0.01)

        writer = threading.Thread(target=revoke_through_b)
        try:
            _warm_up(a, [watcher], "warm-d")
            _wait(
                lambda: _port(a.address) in _remote_ports(watcher.proc.pid),
                10,
                "the watcher streams from A, the first address",
            )
            writer.start()
            _wait(lambda: len(acked) >= 20, 20, "20 revocations through B")
            assert a.proc is not None
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            killed_at = len(acked)
            _wait(lambda: len(acked) >= killed_at + 50, 30, "50 more revocations through B after the kill")
            stop.set()
            writer.join(15)
            assert not failures, failures

            logged = _log(b)
            assert set(acked) <= set(logged)
            watcher.wait_for(lambda evs: len(evs) >= len(logged), timeout=40)
            time.sleep(1.5)
            assert watcher.seqs() == logged, "the watcher must hold the whole log, once each, in order"
            assert _port(b.address) in _remote_ports(watcher.proc.pid), "the watcher should be on B now"
            assert watcher.proc.poll() is None
        finally:
            stop.set()
            if writer.is_alive():
                writer.join(15)
            watcher.stop()
            a.kill()


def test_postgresql_restart_under_load_is_ridden_out_without_restarting_replicas() -> None:
    pg = cluster()
    with _replicas() as (a, b, root):
        state = root / "loader"
        result = enroll(a, state, a.token("loader", "web"), server=f"{a.address},{b.address}")
        assert result.returncode == 0, result.stderr
        a.admin("key", "create", "load", "--grant", "group:web")
        a.admin("key", "create", "pg", "--grant", "group:watch")
        assert enroll(a, root / "wa", a.token("wa", "watch")).returncode == 0
        assert enroll(b, root / "wb", b.token("wb", "watch")).returncode == 0
        on_a, on_b = WatchProcess(root / "wa"), WatchProcess(root / "wb")
        pids = (a.proc.pid if a.proc else 0, b.proc.pid if b.proc else 0)

        acked: list[int] = []
        rpc_errors: list[tuple[grpc.StatusCode, str]] = []
        cli: list[subprocess.CompletedProcess[str]] = []
        stop = threading.Event()

        def revoke_loop() -> None:
            stubs = [admin_stub(a), admin_stub(b)]
            version, turn = 1, 0
            while not stop.is_set():
                turn += 1
                try:
                    resp = stubs[turn % 2].RevokeKey(
                        admin_pb2.RevokeKeyRequest(name="pg", version=version), timeout=10
                    )
                except grpc.RpcError as exc:
                    # Maybe committed, maybe not: the same version is asked again, which is
                    # idempotent (an already revoked version answers with its event).
                    rpc_errors.append((exc.code(), exc.details() or ""))
                    time.sleep(0.05)
                    continue
                acked.append(resp.event.seq)
                version += 1

        def fetch_loop() -> None:
            while not stop.is_set():
                cli.append(agent(state, "fetch-key", "load"))

        workers = [threading.Thread(target=revoke_loop), threading.Thread(target=fetch_loop)]
        try:
            _warm_up(a, [on_a, on_b], "warm-e")
            for w in workers:
                w.start()
            _wait(lambda: len(acked) >= 20, 30, "20 revocations before the restart")
            pg.restart()  # pg_ctl restart -m fast: every connection of both replicas is cut
            restarted_at = len(acked)
            _wait(lambda: len(acked) >= restarted_at + 20, 30, "revocations succeed again after the restart")

            # A longer outage, to see what callers get while the database is down.
            pg.stop()
            try:
                down = agent(state, "renew")
                assert_one_line_error(down, 8)
                refused = a.admin("token", "create", "--name", "during-outage", check=False)
                assert_one_line_error(refused, 8)
            finally:
                pg.start()
            resumed_at = len(acked)
            _wait(lambda: len(acked) >= resumed_at + 20, 30, "revocations succeed again after the outage")
            stop.set()
            for w in workers:
                w.join(30)

            # Both replicas are the processes that were started, and both serve.
            assert (a.proc and a.proc.poll() is None) and (b.proc and b.proc.poll() is None)
            assert pids == (a.proc.pid, b.proc.pid)
            assert agent(state, "renew").returncode == 0
            for server in (a, b):
                server.admin("key", "create", f"after-{server.data_dir.name}", "--grant", "group:watch")
                server.admin("revoke", "key", f"after-{server.data_dir.name}", "--version", "1")

            # Calls during the outages failed as UNAVAILABLE, nothing else.
            assert rpc_errors, "the load never met the outage"
            other = {(c.name, d) for c, d in rpc_errors if c != grpc.StatusCode.UNAVAILABLE}
            assert not other, f"{other}\n{_errors_logged(a, b)}"
            for r in cli:
                if r.returncode != 0:
                    assert_one_line_error(r, 8)

            # Every acknowledged revocation is in the log, which has no hole, the same from both;
            # both watchers (their replicas re-listened) end with the whole log, in order.
            logged = _log(a)
            assert logged == _log(b)
            assert set(acked) <= set(logged)
            assert logged == list(range(1, len(logged) + 1))  # no hole
            _wait(
                lambda: all(len(w.seqs()) >= len(logged) for w in (on_a, on_b)),
                60,
                lambda: (
                    "both watchers end with the whole log: "
                    + "; ".join(_missing(name, w, logged) for name, w in (("A", on_a), ("B", on_b)))
                ),
            )
            time.sleep(1.5)
            assert on_a.seqs() == logged and on_b.seqs() == logged
        finally:
            stop.set()
            for w in workers:
                if w.is_alive():
                    w.join(30)
            on_a.stop()
            on_b.stop()
            if not pg.running():
                pg.start()


def test_a_replica_stops_when_the_shared_event_log_is_rewritten() -> None:
    """A restored database (or a failover that lost commits) hands lost sequence numbers out
    again: a replica that sent out the old events cannot match what it holds in memory (the
    revoked serials, the events it published, its streams' positions) to the log, so it
    stops with exit status 1 and says why, rather than take a new revocation for a repeat."""
    root = short_tmpdir("kmsrw")
    a, b = _start_replicas(root)
    try:
        for key in ("r1", "r2", "r3"):  # A sends these out itself, as they commit
            a.admin("key", "create", key)
            a.admin("revoke", "key", key, "--version", "1")
        restore_point = _log(a)[0]
        execute_sql(a, "DELETE FROM events WHERE seq > ?", restore_point)
        execute_sql(a, "UPDATE counters SET value = ? WHERE name = 'events'", restore_point)
        b.admin("key", "create", "r4")
        b.admin("revoke", "key", "r4", "--version", "1")  # takes the lost number, and wakes A
        assert a.proc is not None
        assert a.proc.wait(30) == 1, a.output()
        assert "no longer holds event" in a.output() and "start every replica again" in a.output()
        # B stops too if it had heard A's events before the restore; if not, its memory
        # matches the log and it may go on.
    finally:
        a.kill()
        b.kill()
        shutil.rmtree(root, ignore_errors=True)
