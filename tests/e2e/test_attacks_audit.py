"""Attacks on the audit trail (issue 15, item 4), against real servers on both backends.

(a) Every admin RPC that changes the store leaves a record; the list of them
    comes from the protos, so a new RPC must be audited (or declared read-only).
(b) Someone with write access to the database but not the master key edits a
    record, recomputes the plain SHA-256 chain and deletes the newest records:
    the keyed chain still shows it.
(c) Deleting only the newest records leaves a chain that checks; the copy kept
    outside the database (--audit-file, --audit-syslog) shows it.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from kms.audit import parse_line, record_hash
from kms.v1 import admin_pb2, enrollment_pb2, enrollment_pb2_grpc
from tests.harness import (
    ServerProcess,
    admin_stub,
    assert_one_line_error,
    execute_sql,
    query,
    short_tmpdir,
)
from tests.pki import csr_der

# Admin RPCs that only read. Every other Admin method must leave an audit record:
# a new method fails test_every_store_changing_admin_rpc_is_audited until it does
# (and has a driver below), or is added here because it changes nothing.
READ_ONLY = {
    "GetCA",
    "ListAgents",
    "ListKeys",
    "GetKey",
    "ListRevocations",
    "ListAudit",
    "VerifyAudit",
    "ListCAs",
}


def _admin_methods() -> set[str]:
    return set(admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods_by_name)


@dataclass
class _Ctx:
    server: ServerProcess
    stub: Any
    rsa_key: Any
    tmp: Path
    serial: str = ""
    seen: dict[str, Any] = field(default_factory=dict)


def _enroll(ctx: _Ctx, token: str) -> str:
    """Enrolls over gRPC (no agent process needed); returns the certificate's serial."""
    ca = (ctx.server.data_dir / "ca.crt").read_bytes()
    with grpc.secure_channel(ctx.server.enroll_address, grpc.ssl_channel_credentials(ca)) as channel:
        reply = enrollment_pb2_grpc.EnrollmentStub(channel).Enroll(
            enrollment_pb2.EnrollRequest(join_token=token, csr_der=csr_der(ctx.rsa_key)), timeout=10
        )
    return format(x509.load_der_x509_certificate(reply.certificate_der).serial_number, "x")


# Each driver makes one store-changing call and says which records it must leave
# (action, a piece of the object). They run in this order: later ones use what
# earlier ones made.
def _create_token(ctx: _Ctx) -> list[tuple[str, str]]:
    reply = ctx.stub.CreateJoinToken(admin_pb2.CreateJoinTokenRequest(name="aud-1"), timeout=10)
    ctx.serial = _enroll(ctx, reply.token)  # for the revocations below
    return [("token.create", "agent:aud-1")]


def _create_key(ctx: _Ctx) -> list[tuple[str, str]]:
    ctx.stub.CreateKey(admin_pb2.CreateKeyRequest(name="aud-key", grants=["group:g"]), timeout=10)
    return [("key.create", "key:aud-key")]


def _grant(ctx: _Ctx) -> list[tuple[str, str]]:
    ctx.stub.GrantKey(admin_pb2.GrantKeyRequest(name="aud-key", grant="agent:aud-1"), timeout=10)
    return [("key.grant", "agent:aud-1")]


def _ungrant(ctx: _Ctx) -> list[tuple[str, str]]:
    ctx.stub.UngrantKey(admin_pb2.GrantKeyRequest(name="aud-key", grant="agent:aud-1"), timeout=10)
    return [("key.ungrant", "agent:aud-1")]


def _rotate(ctx: _Ctx) -> list[tuple[str, str]]:
    ctx.stub.RotateKey(admin_pb2.RotateKeyRequest(name="aud-key"), timeout=10)
    return [("key.rotate", "key:aud-key/v2")]


def _destroy(ctx: _Ctx) -> list[tuple[str, str]]:
    ctx.stub.DestroyKeyVersion(admin_pb2.DestroyKeyVersionRequest(name="aud-key", version=1), timeout=10)
    return [("key.destroy", "key:aud-key/v1")]


def _disable(ctx: _Ctx) -> list[tuple[str, str]]:
    ctx.stub.DisableKey(admin_pb2.DisableKeyRequest(name="aud-key", reason="audit test"), timeout=10)
    return [("key.disable", "key:aud-key reason:audit test")]


def _enable(ctx: _Ctx) -> list[tuple[str, str]]:
    ctx.stub.EnableKey(admin_pb2.EnableKeyRequest(name="aud-key"), timeout=10)
    return [("key.enable", "key:aud-key")]


def _set_key(ctx: _Ctx) -> list[tuple[str, str]]:
    ctx.stub.SetKey(admin_pb2.SetKeyRequest(name="aud-key", rotate_every=86_400), timeout=10)
    return [("key.set", "key:aud-key rotate_every:1d")]


def _revoke_key(ctx: _Ctx) -> list[tuple[str, str]]:
    # v2 is current: the compromise and the new version that replaces it are both recorded.
    reply = ctx.stub.RevokeKey(
        admin_pb2.RevokeKeyRequest(name="aud-key", version=2, reason="keyCompromise"), timeout=10
    )
    assert not reply.already_revoked
    return [("revoke.key", "key:aud-key/v2 reason:keyCompromise"), ("key.rotate", "key:aud-key/v3")]


def _release_cert(ctx: _Ctx) -> list[tuple[str, str]]:
    # A hold, then its release: both recorded (before the final revocations below).
    hold = admin_pb2.RevokeCertificateRequest(serial=ctx.serial, reason="certificateHold")
    ctx.stub.RevokeCertificate(hold, timeout=10)
    ctx.stub.ReleaseCertificate(admin_pb2.ReleaseCertificateRequest(serial=ctx.serial), timeout=10)
    return [
        ("revoke.cert", f"serial:{ctx.serial} reason:certificateHold"),
        ("release.cert", f"serial:{ctx.serial}"),
    ]


def _release_agent(ctx: _Ctx) -> list[tuple[str, str]]:
    ctx.stub.RevokeAgent(admin_pb2.RevokeAgentRequest(name="aud-1", reason="certificateHold"), timeout=10)
    ctx.stub.ReleaseAgent(admin_pb2.ReleaseAgentRequest(name="aud-1"), timeout=10)
    return [
        ("revoke.agent", "agent:aud-1 reason:certificateHold"),
        ("release.agent", f"serials:{ctx.serial}"),
    ]


def _revoke_cert(ctx: _Ctx) -> list[tuple[str, str]]:
    ctx.stub.RevokeCertificate(
        admin_pb2.RevokeCertificateRequest(serial=ctx.serial, reason="superseded"), timeout=10
    )
    return [("revoke.cert", f"serial:{ctx.serial}")]


def _revoke_agent(ctx: _Ctx) -> list[tuple[str, str]]:
    ctx.stub.RevokeAgent(admin_pb2.RevokeAgentRequest(name="aud-1", reason="superseded"), timeout=10)
    return [("revoke.agent", "agent:aud-1")]


def _backup(ctx: _Ctx) -> list[tuple[str, str]]:
    # The store does not change, but a copy of every sealed key leaves it. PostgreSQL
    # refuses (pg_dump is its backup): a refusal changes nothing and records nothing.
    target = ctx.tmp / "backup.tar"
    try:
        ctx.stub.Backup(admin_pb2.BackupRequest(path=str(target)), timeout=30)
    except grpc.RpcError as exc:
        assert ctx.server.backend == "postgresql" and exc.code() == grpc.StatusCode.FAILED_PRECONDITION
        return []
    return [("backup", f"file:{target}")]


def _rotate_ca(ctx: _Ctx) -> list[tuple[str, str]]:
    ctx.stub.RotateCA(admin_pb2.RotateCARequest(), timeout=30)
    return [("ca.rotate", "ca:2 ")]


def _cancel_ca(ctx: _Ctx) -> list[tuple[str, str]]:
    ctx.stub.CancelCARotation(admin_pb2.CancelCARotationRequest(), timeout=30)  # after _rotate_ca
    ctx.stub.RotateCA(admin_pb2.RotateCARequest(), timeout=30)  # prepared again, for _activate_ca
    return [("ca.cancel", "ca:2 "), ("ca.rotate", "ca:2 ")]


def _activate_ca(ctx: _Ctx) -> list[tuple[str, str]]:
    ctx.stub.ActivateCA(admin_pb2.ActivateCARequest(now=True), timeout=30)  # after _rotate_ca
    return [("ca.activate", "ca:2 ")]


DRIVERS: dict[str, Callable[[_Ctx], list[tuple[str, str]]]] = {
    "CreateJoinToken": _create_token,
    "CreateKey": _create_key,
    "GrantKey": _grant,
    "UngrantKey": _ungrant,
    "RotateKey": _rotate,
    "DestroyKeyVersion": _destroy,
    "DisableKey": _disable,
    "EnableKey": _enable,
    "SetKey": _set_key,
    "RevokeKey": _revoke_key,
    "ReleaseCertificate": _release_cert,
    "ReleaseAgent": _release_agent,
    "RevokeCertificate": _revoke_cert,
    "RevokeAgent": _revoke_agent,
    "Backup": _backup,
    "RotateCA": _rotate_ca,
    "CancelCARotation": _cancel_ca,
    "ActivateCA": _activate_ca,
}


def _records(stub: Any) -> list[Any]:
    return list(stub.ListAudit(admin_pb2.ListAuditRequest(), timeout=10).records)


# --- servers ----------------------------------------------------------------------


@dataclass
class Audited:
    """A server with both audit devices, and the syslog datagrams it sent."""

    server: ServerProcess
    file: Path
    syslog: list[str]


@pytest.fixture(scope="module")
def audited(backend: str) -> Iterator[Audited]:
    base = short_tmpdir("kmsa")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(base / "log.sock"))
    received: list[str] = []

    def listen() -> None:
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            received.append(data.decode())

    threading.Thread(target=listen, daemon=True).start()
    file = base / "audit" / "audit.jsonl"
    file.parent.mkdir()
    server = ServerProcess(
        base / "d", extra_args=["--audit-file", str(file), "--audit-syslog", str(base / "log.sock")]
    ).start()
    try:
        yield Audited(server, file, received)
    finally:
        code = server.stop()
        sock.close()
        shutil.rmtree(base, ignore_errors=True)
    assert code == 0, server.output()


@pytest.fixture
def fresh(backend: str) -> Iterator[ServerProcess]:
    """A server of its own, for a test that tampers with its store."""
    base = short_tmpdir("kmsf")
    server = ServerProcess(base / "d", extra_args=["--audit-file", str(base / "audit.jsonl")]).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


# --- (a) -------------------------------------------------------------------------


def test_every_store_changing_admin_rpc_is_audited(audited: Audited, rsa_key: Any, tmp_path: Path) -> None:
    changing = _admin_methods() - READ_ONLY
    assert _admin_methods() >= READ_ONLY, "READ_ONLY names a method the Admin service no longer has"
    assert set(DRIVERS) == changing, (
        f"Admin methods without a driver here: {sorted(changing - set(DRIVERS))}: a method that changes the "
        "store must append its audit record in the same transaction (add a driver that checks it); one "
        "that only reads goes in READ_ONLY"
    )
    stub = admin_stub(audited.server)
    ctx = _Ctx(audited.server, stub, rsa_key, tmp_path)
    for method, drive in DRIVERS.items():
        before = _records(stub)
        expected = drive(ctx)
        new = _records(stub)[len(before) :]
        if expected:
            assert new, f"Admin.{method} changed the store and left no audit record"
        for action, piece in expected:
            assert any(r.action == action and piece in r.object and r.outcome == "ok" for r in new), (
                f"Admin.{method}: no {action} record naming {piece!r} in {[(r.action, r.object) for r in new]}"
            )

    # The read-only ones add nothing (an honest READ_ONLY). Only the administrator's records count:
    # the server's own work goes on meanwhile (a CA retired once its last certificate is revoked,
    # say, audited by "ca").
    def admins() -> list[Any]:
        return [r for r in _records(stub) if r.actor == "admin"]

    before = len(admins())
    for method in sorted(READ_ONLY):
        request = admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods_by_name[method].input_type
        request_class = getattr(admin_pb2, request.name)
        named = {"name": "aud-key"} if "name" in request.fields_by_name else {}  # GetKey: one key
        getattr(stub, method)(request_class(**named), timeout=10)
    assert len(admins()) == before
    assert audited.server.admin("audit", "verify").stdout.startswith("audit trail intact")


# --- (c) -------------------------------------------------------------------------


def test_every_record_is_copied_outside_the_database_before_the_action_is_answered(audited: Audited) -> None:
    for args in (
        ("token", "create", "--name", "copied-1"),
        ("key", "create", "copied-key"),
        ("key", "rotate", "copied-key"),
    ):
        audited.server.admin(*args)
        # Answered: its record is in the file already, as the newest line.
        newest = json.loads(audited.server.admin("audit", "list", "--json").stdout)[-1]
        last_line = audited.file.read_text().splitlines()[-1]
        assert parse_line(last_line).seq == newest["seq"] and newest["action"] in last_line

    assert audited.file.stat().st_mode & 0o777 == 0o600
    stored = _records(admin_stub(audited.server))
    in_file = [parse_line(line) for line in audited.file.read_text().splitlines()]
    assert [(r.seq, r.hash) for r in in_file] == [(r.seq, r.hash) for r in stored]
    assert in_file[0].action == "audit.keyed"  # the first record of a new store begins the keyed chain

    # Syslog carries the same records, one message each (tag seed-kms-audit, facility auth).
    deadline = time.monotonic() + 5
    while len(audited.syslog) < len(in_file) and time.monotonic() < deadline:
        time.sleep(0.05)  # sent before each answer; our reader thread may lag a moment
    assert all("seed-kms-audit: {" in m for m in audited.syslog)
    assert [parse_line(m) for m in audited.syslog] == in_file
    syslog_copy = audited.file.parent / "syslog.txt"
    syslog_copy.write_text("\n".join(m.rstrip("\x00") for m in audited.syslog) + "\n")

    for copy in (audited.file, syslog_copy):
        ok = audited.server.admin("audit", "verify", "--against", str(copy))
        assert f"all {len(stored)} records of {copy} are in it, unchanged" in ok.stdout


def test_deleting_the_newest_records_is_caught_against_the_audit_file(
    fresh: ServerProcess, tmp_path: Path
) -> None:
    for i in range(3):
        fresh.admin("token", "create", "--name", f"victim-{i}")
    file = fresh.data_dir.parent / "audit.jsonl"
    newest = len(file.read_text().splitlines())
    # Restarted, it appends to the same file and does not key the chain again.
    fresh.stop()
    fresh.start()
    fresh.admin("key", "create", "after-restart")
    lines = file.read_text().splitlines()
    assert len(lines) == newest + 1 and [parse_line(x).seq for x in lines] == list(range(1, newest + 2))
    assert fresh.admin("audit", "verify", "--against", str(file)).returncode == 0

    # The intruder removes the two newest records: the chain that is left still checks...
    execute_sql(fresh, "DELETE FROM audit WHERE seq > ?", newest - 1)
    # ...but the file outside the database still has them.
    assert_one_line_error(
        fresh.admin("audit", "verify", "--against", str(file), check=False),
        10,
        f"records {newest}..{newest + 1} are in the file but not in the store",
    )
    # And a server started on that store says so at once.
    fresh.stop()
    fresh.start()
    assert f"the audit file's newest record ({newest + 1}) is not in the store" in fresh.output()
    # A file that is not an audit file is one clear line, not a traceback.
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    assert_one_line_error(fresh.admin("audit", "verify", "--against", str(junk), check=False), 2, "line 1")


# --- (b) -------------------------------------------------------------------------


def _recompute(server: ServerProcess, from_seq: int, edit: Callable[[str], str] = lambda obj: obj) -> int:
    """Rewrites records from from_seq on as the unkeyed chain hashed them (SHA-256, no key); returns their count."""
    rows = query(
        server,
        "SELECT seq, at, actor, action, object, outcome FROM audit WHERE seq >= ? ORDER BY seq",
        from_seq,
    )
    before = query(server, "SELECT hash FROM audit WHERE seq = ?", from_seq - 1)
    prev = bytes(before[0][0]) if before else bytes(32)
    for seq, at, actor, action, obj, outcome in rows:
        obj = edit(obj)
        digest = record_hash(prev, seq, at, actor, action, obj, outcome)
        execute_sql(
            server,
            "UPDATE audit SET object = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            obj,
            prev,
            digest,
            seq,
        )
        prev = digest
    return len(rows)


def test_an_edit_with_recomputed_hashes_and_the_newest_records_deleted_is_caught(
    fresh: ServerProcess,
) -> None:
    fresh.admin("key", "create", "k0")
    fresh.admin("token", "create", "--name", "web-1")
    for name in ("k1", "k2", "k3"):
        fresh.admin("key", "create", name)
    rows = query(fresh, "SELECT seq, object FROM audit ORDER BY seq")
    edited = next(seq for seq, obj in rows if "agent:web-1" in obj)
    assert 1 < edited < len(rows) - 2  # a middle record

    # Offline, with write access to the database but not the master key: edit the
    # record, recompute every hash after it as the unkeyed chain did, drop the newest two.
    _recompute(fresh, edited, lambda obj: obj.replace("agent:web-1", "agent:evil-1"))
    execute_sql(fresh, "DELETE FROM audit WHERE seq > ?", len(rows) - 2)
    assert_one_line_error(
        fresh.admin("audit", "verify", check=False), 10, f"broken at record {edited}", "edited"
    )

    # Nor can the intruder pass the whole trail off as older than the keyed chain
    # (all of it rehashed, the marker moved past its end): the keyed chain begins
    # with a record that the server wrote and that must be there.
    left = _recompute(fresh, 1)
    execute_sql(fresh, "UPDATE meta SET value = ? WHERE key = 'audit_keyed_from'", str(left + 1))
    assert_one_line_error(
        fresh.admin("audit", "verify", check=False), 10, f"broken at record {left + 1}", "missing"
    )
    execute_sql(fresh, "DELETE FROM meta WHERE key = 'audit_keyed_from'")
    assert_one_line_error(fresh.admin("audit", "verify", check=False), 10, "broken at record 1", "marker")


def test_a_trail_passed_off_as_never_keyed_stops_the_next_start(fresh: ServerProcess) -> None:
    # Rewritten with plain hashes and the marker set back to "pending" (as a store from before
    # the keyed chain): a server would key it again from its end and call it intact. The data
    # dir, which the database does not hold, remembers where keying began.
    fresh.admin("token", "create", "--name", "web-1")
    _recompute(fresh, 1)
    execute_sql(fresh, "UPDATE meta SET value = 'pending' WHERE key = 'audit_keyed_from'")
    assert fresh.stop() == 0
    with pytest.raises(AssertionError, match="never keyed, but this server saw it keyed from record 1"):
        fresh.start()
    # The operator who accepts the database as it is says so by removing the witness.
    (fresh.data_dir / "audit-keyed-from").unlink()
    fresh.start()
    assert "the audit chain is keyed from record" in fresh.output()  # and says so
    assert (fresh.data_dir / "audit-keyed-from").exists()
