"""Story: two kms-server replicas on one PostgreSQL database act as one deployment.

Replica A is the first server on an empty database (it makes the CA and the master
key); replica B joins with A's master key (tests/e2e/replicas.py). Agents enroll
through one and are served by the other; a join token raced through both is used
once; revocations issued through both reach watchers on both, in one order, once
each. What happens when a replica or the database fails: test_replicas_failures.py.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kms.v1 import admin_pb2
from tests.e2e.replicas import key_events, log_seqs, missing, replicas, wait_until, warm_up
from tests.harness import (
    ServerProcess,
    WatchProcess,
    admin_stub,
    agent,
    assert_one_line_error,
    enroll,
    query,
)

pytestmark = [
    pytest.mark.postgresql_only("replicas share one PostgreSQL database"),
    # Over a minute of replicas, agents and outages: started first, beside the agent daemon.
    pytest.mark.long_running,
]

BAD_TOKEN = "join token is invalid, expired or already used"


@pytest.fixture(scope="module")
def pair(backend: str) -> Iterator[tuple[ServerProcess, ServerProcess, Path]]:
    """Replicas A and B shared by the first tests of the module (the later ones kill things)."""
    with replicas() as rig:
        yield rig


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
    wait_until(
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
    b.admin("revoke", "key", "--yes", "opskey", "--version", "1", "--reason", "keyCompromise")
    wait_until(
        lambda: agent(holder, "fetch-key", "opskey", "--version", "1").returncode == 6,
        10,
        "A refuses a version compromised through B",
    )
    assert_one_line_error(agent(holder, "fetch-key", "opskey", "--version", "1"), 6, "compromised")

    # An agent revoked through A: B refuses it.
    a.admin("revoke", "agent", "--yes", "victim", "--reason", "keyCompromise")
    wait_until(lambda: agent(victim, "status").returncode == 11, 10, "B refuses an agent revoked through A")
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
        warm_up(a, [on_a, on_b], "warm-c")
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
        wait_until(
            lambda: all(len(key_events(w, *keys)) >= len(expected) for w in (on_a, on_b)),
            120,
            lambda: (
                "both watchers print all 1,000 revocations: "
                + "; ".join(missing(name, w, expected, *keys) for name, w in (("A", on_a), ("B", on_b)))
            ),
        )
        time.sleep(2.5)  # a couple of heartbeats: nothing more (no duplicate) may come
        got_a, got_b = key_events(on_a, *keys), key_events(on_b, *keys)
        assert [e["seq"] for e in got_a] == sorted(acked), "watcher on A: not every event once, in order"
        assert [e["seq"] for e in got_b] == sorted(acked), "watcher on B: not every event once, in order"
        assert got_a == got_b
        assert {(e["kind"], e["key"]) for e in got_a} == {("key", k) for k in keys}
        for w in (on_a, on_b):
            seqs = w.seqs()
            assert seqs == sorted(set(seqs))
        assert log_seqs(a) == log_seqs(b)
    finally:
        on_a.stop()
        on_b.stop()
