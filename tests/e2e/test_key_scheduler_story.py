"""Story: the server rotates a key when its rotation falls due (a `rotate` event, and `kms-agent
run` re-fetches its key file), expires it at its expiry (an `expire` event; the files stay),
rotates once after a restart that missed several due times, pauses while the key is disabled
and rotates once when it is enabled, and two replicas on one PostgreSQL make one rotation per
due time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.replicas import key_events, replicas, wait_until
from tests.e2e.rig import Rig
from tests.harness import RunProcess, ServerProcess, WatchProcess, agent, enroll, execute_sql, query

# Periods of seconds: tests lower the server's minimum (1h by default).
POLL = ("--key-schedule-poll", "1s", "--min-rotation-period", "1s")
RIG = Rig(
    "kmssch",
    ("--heartbeat", "1s", *POLL),
    agents=(("web-1", ("web",)), ("web-2", ("web",))),
    keys=(("app", "group:web"), ("late", "group:web")),
)


def _schedule(server: ServerProcess, key: str) -> tuple[int, int | None, int | None, int]:
    """(current_version, rotate_every, rotation_due_at, expiry_notices) as stored."""
    [row] = query(
        server,
        "SELECT current_version, rotate_every, rotation_due_at, expiry_notices FROM keys WHERE name=?",
        key,
    )
    return row


def _scheduler_audit(server: ServerProcess) -> list[tuple[str, str]]:
    records = json.loads(server.admin("audit", "list", "--json").stdout)
    return [(r["action"], r["object"]) for r in records if r["actor"] == "scheduler"]


def test_a_due_rotation_goes_out_as_rotate_and_an_expiry_as_expire(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    key_file = root / "app.key"
    assert agent(root / "web-2", "fetch-key", "app", "--out", str(key_file)).returncode == 0
    v1 = key_file.read_bytes()
    watcher, daemon = WatchProcess(root / "web-1"), RunProcess(root / "web-2")
    try:
        server.admin("key", "set", "app", "--rotate-every", "2s")
        watcher.wait_for(lambda evs: any(e["kind"] == "rotate" and e["key"] == "app" for e in evs))
        server.admin("key", "set", "app", "--no-rotation")
        first = next(e for e in watcher.events if e["kind"] == "rotate")
        assert (first["version"], first["reason"]) == (2, "superseded")
        # kms-agent run re-fetches the file, as after `key rotate`.
        wait_until(
            lambda: daemon.saw("rotate", "app") and key_file.read_bytes() != v1, 20, "the file follows"
        )
        time.sleep(1.5)  # a second rotation, if one slipped in before --no-rotation, is fetched too
        current, every, due, _ = _schedule(server, "app")
        assert (every, due) == (None, None) and current >= 2
        fetched = agent(root / "web-1", "fetch-key", "app", "--format", "hex")
        assert key_file.read_bytes() == bytes.fromhex(fetched.stdout.strip())
        rotations = [o for a, o in _scheduler_audit(server) if a == "key.rotate"]
        assert [o.split(" ")[0] for o in rotations] == [f"key:app/v{v}" for v in range(2, current + 1)]

        # Expiry: every version deactivated (decrypt only), an `expire` event, the files kept.
        # In a few seconds: first the warnings (both due at once: one line), at once.
        server.admin("key", "set", "app", "--expires-in", "3s")
        watcher.wait_for(lambda evs: any(e["kind"] == "expire" and e["key"] == "app" for e in evs))
        expired = next(e for e in watcher.events if e["kind"] == "expire")
        assert (expired["version"], expired["reason"]) == (current, "expired")
        wait_until(lambda: daemon.saw("expire", "app"), 20, "kms-agent run hears the expiry")
        [app] = [k for k in json.loads(server.admin("key", "list", "--json").stdout) if k["name"] == "app"]
        assert [v["state"] for v in app["versions"]] == ["deactivated"] * current
        assert _schedule(server, "app")[3] == 7  # both warnings and the expiry: given once
        assert [a for a, _ in _scheduler_audit(server)].count("key.expire") == 1
        assert "key app expires within 1 day" in server.output()  # warned before it expired
        time.sleep(0.5)
        assert key_file.exists() and _schedule(server, "app")[0] == current  # no rotation after expiry
    finally:
        watcher.stop()
        assert daemon.stop() == 0, daemon.proc.stderr.read() if daemon.proc.stderr else ""


def test_a_server_down_through_several_due_times_rotates_once(rig: tuple[ServerProcess, Path]) -> None:
    server, _ = rig
    server.admin("key", "set", "late", "--rotate-every", "60s")
    assert server.stop() == 0
    # As if it had been down for five and a half periods: five due times missed.
    missed = int(time.time()) - 5 * 60 - 30
    execute_sql(server, "UPDATE keys SET rotation_due_at=? WHERE name='late'", missed)
    server.start()
    wait_until(lambda: _schedule(server, "late")[0] > 1, 20, "the overdue rotation")
    time.sleep(2)  # two more polls: nothing more
    assert _schedule(server, "late")[:3] == (2, 60, missed + 6 * 60)
    assert [o for a, o in _scheduler_audit(server) if "key:late" in o] == [
        f"key:late/v2 due:{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(missed))}"
    ]


@pytest.mark.sqlite_only(
    "the pause and the single catch-up are the store's due query and rotate_if_due, run on both"
    " backends in tests/unit/server/test_key_scheduler.py; this is the CLI and the scheduler end to end"
)
def test_scheduled_rotation_pauses_while_disabled_and_catches_up_once(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, _ = rig
    period = 4
    server.admin("key", "create", "paused", "--grant", "group:web")
    server.admin("key", "disable", "paused", "--reason", "maintenance window")
    server.admin("key", "set", "paused", "--rotate-every", f"{period}s")  # set while disabled
    current, every, due0, _ = _schedule(server, "paused")
    assert (current, every) == (1, period) and due0 is not None
    # Disabled through two due times: no rotation, and the due time stays where it was.
    time.sleep(max(0.0, due0 + period + 0.2 - time.time()))  # due0 and due0 + period passed
    assert _schedule(server, "paused")[:3] == (1, period, due0)
    assert not [o for _, o in _scheduler_audit(server) if o.startswith("key:paused/")]

    # Enabled just after the second missed due time (the next one is a period away): it rotates
    # once, at once, for the first due time missed, and the grid moves past both.
    server.admin("key", "enable", "paused")
    wait_until(lambda: _schedule(server, "paused")[0] > 1, 10, "the rotation after enable")
    time.sleep(1)  # a poll: a rotation per missed due time would have come by now (they were all due)
    after = _schedule(server, "paused")[:3]
    assert time.time() < due0 + 2 * period, "too slow to tell: the next due time came before the check"
    assert after == (2, period, due0 + 2 * period)
    server.admin("key", "set", "paused", "--no-rotation")
    label = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(due0))
    assert [o for a, o in _scheduler_audit(server) if o.startswith("key:paused/")] == [
        f"key:paused/v2 due:{label}"
    ]


@pytest.mark.postgresql_only("replicas share one PostgreSQL database")
def test_two_replicas_make_one_rotation_per_due_time() -> None:
    with replicas(*POLL) as (a, b, root):
        assert enroll(a, root / "w", a.token("w", "web")).returncode == 0
        watcher = WatchProcess(root / "w")  # on A: B's rotations reach it through A's follower
        try:
            keys = ("r1", "r2", "r3")
            for key in keys:
                a.admin("key", "create", key, "--grant", "group:web", "--rotate-every", "1s")
            a.admin("key", "create", "x1", "--grant", "group:web", "--expires-in", "3s")
            time.sleep(4)
            for key in keys:
                b.admin("key", "set", key, "--no-rotation")
            time.sleep(1.5)  # a rotation in flight commits
            audit = [o for action, o in _scheduler_audit(b) if action == "key.rotate"]
            logged = {s.data_dir.name: s.output().count("key rotated on schedule") for s in (a, b)}
            versions = {key: _schedule(a, key)[0] for key in keys}
            for key, version in versions.items():
                dues = [o.split(" due:")[1] for o in audit if o.startswith(f"key:{key}/")]
                assert version >= 3, (key, version)  # about one a second, for four seconds
                assert len(dues) == len(set(dues)) == version - 1, (key, dues)  # one per due time
            assert sum(logged.values()) == len(audit), logged
            # Every rotation and the expiry, whichever replica made them, reach the watcher once.
            expected = sorted([("rotate", k, v) for k, n in versions.items() for v in range(2, n + 1)])
            expected.append(("expire", "x1", 1))

            def heard() -> list[tuple[str, str, int]]:
                return sorted((e["kind"], e["key"], e["version"]) for e in key_events(watcher, *keys, "x1"))

            wait_until(lambda: heard() == sorted(expected), 10, lambda: f"watcher on A heard {heard()}")
        finally:
            watcher.stop()
