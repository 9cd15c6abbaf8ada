"""Story: keys with an expiry and a rotation schedule (issue 16 §1): created, changed, shown and
listed (text and --json), every bad input refused with one line and nothing changed, and a key
that expires a few seconds ahead: from then on it encrypts nothing but still decrypts."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kms.v1 import admin_pb2, keys_pb2, keys_pb2_grpc
from tests.e2e.rig import Rig
from tests.harness import ServerProcess, admin_stub, agent, assert_one_line_error

RIG = Rig(
    "kmsexp",
    ("--min-rotation-period", "1m", "--http-listen", "127.0.0.1:0"),
    agents=(("web-1", ("web",)),),
    keys=(("plain", "group:web"),),
)

DAY = 86_400


def _show(server: ServerProcess, name: str) -> dict[str, Any]:
    return dict(json.loads(server.admin("key", "show", name, "--json").stdout))


def _stamp(text: str) -> int:
    return int(time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone)


@pytest.mark.sqlite_only("what the admin commands print; the store's part runs on both in unit tests")
def test_schedules_are_set_shown_and_listed(rig: tuple[ServerProcess, Path]) -> None:
    server, _ = rig
    before = int(time.time())
    server.admin(
        "key", "create", "sched", "--grant", "group:web", "--expires-in", "90d", "--rotate-every", "30d"
    )
    shown = _show(server, "sched")
    assert shown["type"] == "aes-256" and shown["state"] == "enabled"
    assert before + 90 * DAY <= _stamp(shown["expires_at"]) <= int(time.time()) + 90 * DAY
    assert (shown["rotate_every"], shown["rotate_every_seconds"]) == ("30d", 30 * DAY)
    assert before + 30 * DAY <= _stamp(shown["rotation_due_at"]) <= int(time.time()) + 30 * DAY
    assert not shown["expired"] and not shown["expires_soon"]
    [v1] = shown["versions"]
    assert v1["activated_at"] == v1["created_at"] and v1["deactivated_at"] is None
    listed = {k["name"]: k for k in json.loads(server.admin("key", "list", "--json").stdout)}
    assert listed["sched"] == shown and listed["plain"]["expires_at"] is None
    assert listed["plain"]["rotate_every"] is None and listed["plain"]["rotation_due_at"] is None

    # An offset is a zone: 2099-06-30T02:00:00+02:00 is midnight UTC.
    server.admin("key", "set", "sched", "--expires", "2099-06-30T02:00:00+02:00", "--no-rotation")
    shown = _show(server, "sched")
    assert shown["expires_at"] == "2099-06-30T00:00:00Z"
    assert shown["rotate_every"] is None and shown["rotation_due_at"] is None
    # Within 7 days: marked in list and show, text and JSON.
    server.admin("key", "set", "sched", "--expires-in", "3d", "--rotate-every", "2h")
    shown = _show(server, "sched")
    assert shown["expires_soon"] and shown["rotate_every"] == "2h"
    text = server.admin("key", "show", "sched").stdout
    assert "(EXPIRES SOON)" in text and "every 2h, next due" in text and "ACTIVATED" in text
    row = [line for line in server.admin("key", "list").stdout.splitlines() if line.startswith("sched ")]
    assert "!EXPIRES-SOON" in row[0] and "2h" in row[0]
    server.admin("key", "set", "sched", "--no-expiry")
    assert _show(server, "sched")["expires_at"] is None and _show(server, "sched")["rotate_every"] == "2h"


# Each refused with one line on stderr (exit 2: bad input; 5: no such key), changing nothing.
BAD = (
    (("create", "bad", "--expires", "2020-01-01T00:00:00Z"), 2, "in the past"),
    (("create", "bad", "--expires", "2099-01-01T00:00:00"), 2, "has no time zone"),
    (("create", "bad", "--rotate-every", "0d"), 2, "longer than zero"),
    (("create", "bad", "--rotate-every", "30s"), 2, "shorter than this server's minimum of 1m"),
    (("create", "bad", "--expires-in", "1d", "--expires", "2099-01-01T00:00:00Z"), 2, "not allowed with"),
    (("set", "plain", "--expires", "2020-01-01T00:00:00+01:00"), 2, "in the past"),
    (("set", "plain", "--rotate-every", "59s"), 2, "shorter than this server's minimum of 1m"),
    (("set", "plain"), 2, "key set needs"),
    (("set", "nope", "--no-expiry"), 5, "no key named 'nope'"),
)


@pytest.mark.sqlite_only("the client's and the server's checks; the store's part runs on both in unit tests")
def test_bad_schedules_are_refused_with_one_line_and_change_nothing(rig: tuple[ServerProcess, Path]) -> None:
    server, _ = rig
    keys = server.admin("key", "list", "--json").stdout
    for args, code, needle in BAD:
        assert_one_line_error(server.admin("key", *args, check=False), code, needle)
    assert server.admin("key", "list", "--json").stdout == keys


@pytest.mark.sqlite_only("the server's checks come before the store; its part runs on both in unit tests")
def test_the_server_checks_schedules_for_every_client(rig: tuple[ServerProcess, Path]) -> None:
    """Not only the CLI: an API client sending a past expiry or a bad period is refused too."""
    server, _ = rig
    stub = admin_stub(server)
    keys = server.admin("key", "list", "--json").stdout
    for request, needle in (
        (admin_pb2.SetKeyRequest(name="plain", expires_at=1), "is not in the future"),
        (admin_pb2.SetKeyRequest(name="plain", rotate_every=-1), "longer than zero"),
        (admin_pb2.SetKeyRequest(name="plain", rotate_every=59), "minimum of 1m"),
        (admin_pb2.SetKeyRequest(name="plain"), "nothing to change"),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            stub.SetKey(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateKey(admin_pb2.CreateKeyRequest(name="api", rotate_every=-30))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.admin("key", "list", "--json").stdout == keys


def _expiring_gauges(server: ServerProcess) -> dict[str, float]:
    text = (
        urllib.request.urlopen(f"http://{server.fields['http-address']}/metrics", timeout=10).read().decode()
    )  # noqa: S310
    return {
        s.labels["within"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "kms_keys_expiring"
        for s in f.samples
    }


def test_an_expired_key_encrypts_nothing_but_still_decrypts(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    web = root / "web-1"
    server.admin("key", "create", "short", "--grant", "group:web", "--expires-in", "20h")
    # The gauges count in the store at each scrape: what key list says, within 24 h and 7 d.
    listed = json.loads(server.admin("key", "list", "--json").stdout)
    now = int(time.time())
    soon = {
        w: sum(1 for k in listed if k["expires_at"] and now < _stamp(k["expires_at"]) <= now + w)
        for w in (DAY, 7 * DAY)
    }
    assert _expiring_gauges(server) == {"24h": soon[DAY], "7d": soon[7 * DAY]} and soon[DAY] >= 1
    plain, sealed = root / "plain.txt", root / "plain.kms"
    plain.write_text("written before the key expired\n")
    # (On SQLite this release is cached: the cache must not let the key through once expired.)
    assert agent(web, "encrypt", "--key", "short", str(plain), str(sealed)).returncode == 0
    server.admin("key", "set", "short", "--expires-in", "3s")
    expires_at = _stamp(_show(server, "short")["expires_at"])
    while time.time() < expires_at + 0.2:
        time.sleep(0.2)

    # Encryption is refused, by time alone (no scheduler needed), naming the expiry.
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at))
    for args in (("encrypt", "--key", "short", str(plain), str(root / "again.kms")), ("fetch-key", "short")):
        assert_one_line_error(agent(web, *args), 6, f"key short expired at {when}", "no longer encrypts")
    assert not (root / "again.kms").exists()
    # Decryption still works: the file names its version, fetched for decryption.
    assert agent(web, "decrypt", str(sealed), str(root / "back.txt")).returncode == 0
    assert (root / "back.txt").read_text() == plain.read_text()
    assert (
        agent(
            web, "fetch-key", "short", "--purpose", "decrypt", "--version", "1", "--out", str(root / "k")
        ).returncode
        == 0
    )
    assert_one_line_error(agent(web, "fetch-key", "short", "--purpose", "decrypt"), 2, "--version N")
    # An agent from before purposes sends none: taken as encryption, it fails closed (any version).
    creds = grpc.ssl_channel_credentials(
        *((web / f).read_bytes() for f in ("ca.crt", "agent.key", "agent.crt"))
    )
    with grpc.secure_channel(server.address, creds) as channel:
        for version in (0, 1):
            with pytest.raises(grpc.RpcError) as refused:
                keys_pb2_grpc.KeysStub(channel).FetchKey(
                    keys_pb2.FetchKeyRequest(name="short", version=version), timeout=10
                )
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert ("kms-reason", "key-expired") in (refused.value.trailing_metadata() or ())

    # Shown as expired; expiry is final.
    shown = _show(server, "short")
    assert shown["expired"] and not shown["expires_soon"]
    assert "(EXPIRED)" in server.admin("key", "show", "short").stdout
    assert "!EXPIRED" in next(
        line for line in server.admin("key", "list").stdout.splitlines() if line.startswith("short ")
    )
    for args in (("--expires-in", "1d"), ("--no-expiry",), ("--rotate-every", "1h")):
        assert_one_line_error(
            server.admin("key", "set", "short", *args, check=False), 6, "expiry is final", "create a new key"
        )
    assert _show(server, "short") == shown
    # Each refused release is audited, as a disabled key's are.
    records = admin_stub(server).ListAudit(admin_pb2.ListAuditRequest(), timeout=10).records
    audited = [
        r for r in records if r.action == "key.release" and r.object == "key:short" and r.outcome == "expired"
    ]
    assert len(audited) == 4
