"""Story: a key is disabled (FetchKey refused, granted watchers told, kms-agent run keeps its key
files), rotated while disabled, then enabled (releases resume, the files catch up); plus the bad
input around disable and enable."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.rig import Rig
from tests.harness import RunProcess, ServerProcess, WatchProcess, agent, assert_one_line_error

RIG = Rig(
    "kmsdis",
    ("--heartbeat", "1s"),
    agents=(("web-1", ("web",)), ("web-2", ("web",)), ("db-1", ("db",))),
    keys=(("app", "group:web"), ("probe", "group:web")),
)


def _keys(server: ServerProcess) -> dict[str, dict[str, Any]]:
    return {k["name"]: k for k in json.loads(server.admin("key", "list", "--json").stdout)}


@pytest.mark.sqlite_only(
    "the release refusal's store part runs on both backends in tests/unit/server/test_key_disable.py"
    " (on PostgreSQL: releases racing a disable on two replicas)"
)
def test_disable_refuses_every_release_until_enabled(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    web, web2, db = root / "web-1", root / "web-2", root / "db-1"
    key_file = root / "app.key"
    assert agent(web2, "fetch-key", "app", "--out", str(key_file)).returncode == 0
    v1 = key_file.read_bytes()
    plain, sealed = root / "plain.txt", root / "plain.kms"
    plain.write_text("written before the key was disabled\n")
    assert agent(web, "encrypt", "--key", "app", str(plain), str(sealed)).returncode == 0
    insider, outsider = WatchProcess(web), WatchProcess(db)
    daemon = RunProcess(web2)
    try:
        done = server.admin("key", "disable", "app", "--reason", "suspected misuse by web-3")
        assert done.stdout.startswith(
            "key app disabled: no version is released until kms-server key enable app"
        )
        # Every version, to every granted agent, is refused; the outsider learns nothing of the state.
        for args in (("app",), ("app", "--version", "1")):
            assert_one_line_error(
                agent(web, "fetch-key", *args),
                6,
                "key app is disabled (suspected misuse by web-3)",
                "key enable app",
            )
        assert_one_line_error(agent(db, "fetch-key", "app"), 4, "not granted key 'app'")
        listed = _keys(server)["app"]
        assert (listed["state"], listed["disabled_reason"]) == ("disabled", "suspected misuse by web-3")
        assert _keys(server)["probe"]["state"] == "enabled"
        table = server.admin("key", "list").stdout
        assert "disabled (suspected misuse by web-3)" in table and "STATE" in table
        # Again: exit 0, nothing changed, the first reason stays.
        again = server.admin("key", "disable", "app", "--reason", "other", "--json")
        assert json.loads(again.stdout)["changed"] is False
        assert _keys(server)["app"]["disabled_reason"] == "suspected misuse by web-3"

        insider.wait_for(lambda evs: any(e["kind"] == "disable" and e["key"] == "app" for e in evs))
        event = next(e for e in insider.events if e["kind"] == "disable")
        assert (event["reason"], event["version"]) == ("suspected misuse by web-3", 1)
        # kms-agent run keeps its key file: disabling is not a compromise.
        daemon.wait_for("disable", "app")
        assert key_file.read_bytes() == v1

        # A rotation while disabled makes v2, released to nobody yet; the daemon's file stays v1.
        server.admin("key", "rotate", "app")
        daemon.wait_for("rotate", "app")
        assert_one_line_error(agent(web, "fetch-key", "app"), 6, "key app is disabled")
        time.sleep(0.5)
        assert key_file.read_bytes() == v1
        # encrypt and decrypt fetch the key: refused alike.
        assert_one_line_error(
            agent(web, "decrypt", str(sealed), str(root / "out.bin")), 6, "key app is disabled"
        )
        # A compromise is still a compromise: the v1 file goes, disabled or not.
        server.admin("revoke", "key", "--yes", "app", "--version", "1", "--reason", "keyCompromise")
        daemon.wait_for("key", "app")
        deadline = time.monotonic() + 10
        while key_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not key_file.exists()

        done = server.admin("key", "enable", "app")
        assert done.stdout.strip() == "key app enabled: its versions are released again"
        assert "was not disabled" in server.admin("key", "enable", "app").stdout
        fetched = agent(web, "fetch-key", "app", "--json")
        assert fetched.returncode == 0 and json.loads(fetched.stdout)["version"] == 2
        assert _keys(server)["app"]["state"] == "enabled"
        insider.wait_for(lambda evs: any(e["kind"] == "enable" for e in evs))
        # The daemon's file comes back, at the version made while the key was disabled.
        deadline = time.monotonic() + 20
        while not key_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert key_file.read_bytes() == bytes.fromhex(
            agent(web2, "fetch-key", "app", "--format", "hex").stdout.strip()
        )

        # The outsider, not granted app, heard none of it (a later event it does hear proves it is live).
        server.admin("key", "grant", "probe", "group:db")
        server.admin("key", "rotate", "probe")
        outsider.wait_for(lambda evs: any(e.get("key") == "probe" for e in evs))
        assert not [e for e in outsider.events if e.get("key") == "app"], outsider.events

        audit = json.loads(server.admin("audit", "list", "--json").stdout)
        mine = [(r["actor"], r["action"], r["outcome"]) for r in audit if "key:app" in r["object"]]
        assert ("admin", "key.disable", "ok") in mine and ("admin", "key.enable", "ok") in mine
        assert sum(a == "key.disable" for _, a, _ in mine) == 1  # the repeat changed nothing
        assert any(r["action"] == "key.release" and r["outcome"] == "disabled" for r in audit)
        assert all(
            e["kind"] not in ("disable", "enable")
            for e in json.loads(server.admin("revocations", "list", "--json").stdout)
        )
    finally:
        assert daemon.stop() == 0, daemon.proc.stderr.read() if daemon.proc.stderr else ""
        insider.stop()
        outsider.stop()


def test_bad_input_is_one_line_and_changes_nothing(rig: tuple[ServerProcess, Path]) -> None:
    server, _ = rig
    before = _keys(server)
    events = server.admin("revocations", "list", "--json").stdout
    assert_one_line_error(
        server.admin("key", "disable", "nope", "--reason", "x", check=False), 5, "no key named 'nope'"
    )
    assert_one_line_error(server.admin("key", "enable", "nope", check=False), 5, "no key named 'nope'")
    assert_one_line_error(server.admin("key", "disable", "probe", check=False), 2, "--reason")
    assert_one_line_error(
        server.admin("key", "disable", "probe", "--reason", " ", check=False), 2, "needs --reason"
    )
    assert_one_line_error(
        server.admin("key", "disable", "probe", "--reason", "a\nb", check=False),
        2,
        "one line of printable text",
    )
    assert_one_line_error(server.admin("key", "disable", "Bad Name!", "--reason", "x", check=False), 2)
    assert _keys(server) == before
    assert server.admin("revocations", "list", "--json").stdout == events
