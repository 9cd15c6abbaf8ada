"""Story: two replicas of one PostgreSQL database ride out failures.

A watcher whose replica is SIGKILLed moves to the other and misses nothing; a
PostgreSQL restart under load is ridden out by both replicas without restarting
them; and a replica stops when the shared event log is rewritten under it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time

import grpc
import pytest

from kms.v1 import admin_pb2
from tests.e2e.replicas import (
    errors_logged,
    log_seqs,
    missing,
    port_of,
    remote_ports,
    replicas,
    start_replicas,
    wait_until,
    warm_up,
)
from tests.harness import (
    WatchProcess,
    admin_stub,
    agent,
    assert_one_line_error,
    cluster,
    enroll,
    execute_sql,
    short_tmpdir,
)

pytestmark = [
    pytest.mark.postgresql_only("replicas share one PostgreSQL database"),
    # Over a minute of replicas, agents and outages: started first, beside the agent daemon.
    pytest.mark.long_running,
]


def test_watcher_moves_to_b_when_a_is_killed_and_misses_nothing() -> None:
    with replicas() as (a, b, root):
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
            warm_up(a, [watcher], "warm-d")
            wait_until(
                lambda: port_of(a.address) in remote_ports(watcher.proc.pid),
                10,
                "the watcher streams from A, the first address",
            )
            writer.start()
            wait_until(lambda: len(acked) >= 20, 20, "20 revocations through B")
            assert a.proc is not None
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            killed_at = len(acked)
            wait_until(
                lambda: len(acked) >= killed_at + 50, 30, "50 more revocations through B after the kill"
            )
            stop.set()
            writer.join(15)
            assert not failures, failures

            logged = log_seqs(b)
            assert set(acked) <= set(logged)
            watcher.wait_for(lambda evs: len(evs) >= len(logged), timeout=40)
            time.sleep(1.5)
            assert watcher.seqs() == logged, "the watcher must hold the whole log, once each, in order"
            assert port_of(b.address) in remote_ports(watcher.proc.pid), "the watcher should be on B now"
            assert watcher.proc.poll() is None
        finally:
            stop.set()
            if writer.is_alive():
                writer.join(15)
            watcher.stop()
            a.kill()


def test_postgresql_restart_under_load_is_ridden_out_without_restarting_replicas() -> None:
    pg = cluster()
    with replicas() as (a, b, root):
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
            warm_up(a, [on_a, on_b], "warm-e")
            for w in workers:
                w.start()
            wait_until(lambda: len(acked) >= 20, 30, "20 revocations before the restart")
            pg.restart()  # pg_ctl restart -m fast: every connection of both replicas is cut
            restarted_at = len(acked)
            wait_until(
                lambda: len(acked) >= restarted_at + 20, 30, "revocations succeed again after the restart"
            )

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
            wait_until(
                lambda: len(acked) >= resumed_at + 20, 30, "revocations succeed again after the outage"
            )
            stop.set()
            for w in workers:
                w.join(30)

            # Both replicas are the processes that were started, and both serve.
            assert (a.proc and a.proc.poll() is None) and (b.proc and b.proc.poll() is None)
            assert pids == (a.proc.pid, b.proc.pid)
            assert agent(state, "renew").returncode == 0
            for server in (a, b):
                server.admin("key", "create", f"after-{server.data_dir.name}", "--grant", "group:watch")
                server.admin("revoke", "key", "--yes", f"after-{server.data_dir.name}", "--version", "1")

            # Calls during the outages failed as UNAVAILABLE, nothing else.
            assert rpc_errors, "the load never met the outage"
            other = {(c.name, d) for c, d in rpc_errors if c != grpc.StatusCode.UNAVAILABLE}
            assert not other, f"{other}\n{errors_logged(a, b)}"
            for r in cli:
                if r.returncode != 0:
                    assert_one_line_error(r, 8)

            # Every acknowledged revocation is in the log, which has no hole, the same from both;
            # both watchers (their replicas re-listened) end with the whole log, in order.
            logged = log_seqs(a)
            assert logged == log_seqs(b)
            assert set(acked) <= set(logged)
            assert logged == list(range(1, len(logged) + 1))  # no hole
            wait_until(
                lambda: all(len(w.seqs()) >= len(logged) for w in (on_a, on_b)),
                60,
                lambda: (
                    "both watchers end with the whole log: "
                    + "; ".join(missing(name, w, logged) for name, w in (("A", on_a), ("B", on_b)))
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
    a, b = start_replicas(root)
    try:
        for key in ("r1", "r2", "r3"):  # A sends these out itself, as they commit
            a.admin("key", "create", key)
            a.admin("revoke", "key", "--yes", key, "--version", "1")
        restore_point = log_seqs(a)[0]
        execute_sql(a, "DELETE FROM events WHERE seq > ?", restore_point)
        execute_sql(a, "UPDATE counters SET value = ? WHERE name = 'events'", restore_point)
        # A new revocation takes the lost number, and wakes A. B heard A's events too, so its own
        # poll may find the log rewritten first and stop B before that: A stops either way.
        if b.admin("key", "create", "r4", check=False).returncode == 0:
            b.admin("revoke", "key", "--yes", "r4", "--version", "1", check=False)
        assert a.proc is not None
        assert a.proc.wait(30) == 1, a.output()
        assert "no longer holds event" in a.output() and "start every replica again" in a.output()
        # B stops too if it had heard A's events before the restore; if not, its memory
        # matches the log and it may go on.
    finally:
        a.kill()
        b.kill()
        shutil.rmtree(root, ignore_errors=True)
