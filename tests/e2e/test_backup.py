"""Backup under load, restore into a new directory, and a working server with everything in it."""

from __future__ import annotations

import json
import tarfile
import threading
from pathlib import Path

import grpc
import pytest

from kms.v1 import admin_pb2, enrollment_pb2, enrollment_pb2_grpc
from tests.harness import ServerProcess, admin_stub, agent, assert_one_line_error, enroll, exe, run
from tests.pki import csr_der


@pytest.mark.sqlite_only("kms-server backup/restore copy the embedded SQLite store; PostgreSQL uses pg_dump")
def test_backup_under_load_restores_a_consistent_working_server(tmp_path: Path, rsa_key) -> None:  # type: ignore[no-untyped-def]
    server = ServerProcess(tmp_path / "d", extra_args=["--enroll-rate", "100000"]).start()
    state = tmp_path / "a"
    try:
        assert enroll(server, state, server.token("keeper", "web")).returncode == 0
        server.admin("key", "create", "vault", "--grant", "group:web")
        key = agent(state, "fetch-key", "vault", "--format", "hex").stdout.strip()

        stop = threading.Event()
        stub = admin_stub(server)
        ca = (server.data_dir / "ca.crt").read_bytes()

        def load() -> None:  # enrollments and revocations while the backup runs
            channel = grpc.secure_channel(server.enroll_address, grpc.ssl_channel_credentials(ca))
            enroller = enrollment_pb2_grpc.EnrollmentStub(channel)
            i = 0
            while not stop.is_set():
                name = f"load-{i}"
                token = stub.CreateJoinToken(admin_pb2.CreateJoinTokenRequest(name=name), timeout=10).token
                enroller.Enroll(
                    enrollment_pb2.EnrollRequest(join_token=token, csr_der=csr_der(rsa_key)), timeout=10
                )
                stub.RevokeAgent(admin_pb2.RevokeAgentRequest(name=name, reason="superseded"), timeout=10)
                i += 1
            channel.close()

        worker = threading.Thread(target=load)
        worker.start()
        try:
            backups = []
            for n in range(3):
                target = tmp_path / f"backup-{n}.tar"
                result = server.admin("backup", str(target))
                assert "does not contain the master key" in result.stdout
                backups.append(target)
        finally:
            stop.set()
            worker.join(30)
        backup = backups[-1]
        assert backup.stat().st_mode & 0o777 == 0o600
        with tarfile.open(backup) as tar:
            assert sorted(tar.getnames()) == ["ca.crt", "ca.key", "kms.db", "server.crt", "server.key"]
        raw = backup.read_bytes()
        assert (
            bytes.fromhex(key) not in raw and b"PRIVATE KEY" not in raw
        )  # no key material without the master key
    finally:
        assert server.stop() == 0

    # Restore needs the master key and refuses a wrong one.
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"\x01" * 32)
    wrong.chmod(0o600)
    restored = tmp_path / "r"
    assert_one_line_error(
        run(
            [
                exe("kms-server"),
                "restore",
                str(backup),
                "--data-dir",
                str(restored),
                "--master-key",
                str(wrong),
            ]
        ),
        6,
        "does not open this backup",
    )
    ok = run(
        [
            exe("kms-server"),
            "restore",
            str(backup),
            "--data-dir",
            str(restored),
            "--master-key",
            str(tmp_path / "d" / "master.key"),
        ]
    )
    assert ok.returncode == 0, ok.stderr
    # Into a non-empty directory: only with --yes (no terminal here to ask on); its contents are
    # moved aside first, and back when the restore fails.
    again = [exe("kms-server"), "restore", str(backup), "--data-dir", str(restored), "--master-key"]
    assert_one_line_error(run([*again, str(wrong)]), 2, "--yes")
    before = sorted(p.name for p in restored.iterdir())
    assert_one_line_error(run([*again, str(wrong), "--yes"]), 6, "does not open this backup")
    assert sorted(p.name for p in restored.iterdir()) == before
    assert not list(tmp_path.glob("r.before-restore-*"))
    replaced = run([*again, str(tmp_path / "d" / "master.key"), "--yes"])
    assert replaced.returncode == 0, replaced.stderr
    (aside,) = tmp_path.glob("r.before-restore-*")
    assert sorted(p.name for p in aside.iterdir()) == before

    second = ServerProcess(restored).start()
    try:
        assert second.fingerprint == server.fingerprint
        agents = {a["name"]: a for a in json.loads(second.admin("agents", "list", "--json").stdout)}
        assert "keeper" in agents and agents["keeper"]["groups"] == ["web"]
        revoked = json.loads(second.admin("revocations", "list", "--json").stdout)
        # Consistent: every load agent in the snapshot that was enrolled is either revoked or was caught in between.
        revoked_names = {e.get("agent") for e in revoked}
        assert len(agents) > 1 and revoked_names <= set(agents)  # the load really ran into the snapshot
        # State and event log agree: each revocation event's agent is one the snapshot knows, and the
        # audit chain (appended in the same transactions) is whole.
        assert second.admin("audit", "verify").returncode == 0
        assert "vault" in second.admin("key", "list").stdout
        # The agent keeps working against the restored server (same CA, same keys).
        settings = json.loads((state / "agent.json").read_text())
        settings["server"] = second.address
        (state / "agent.json").write_text(json.dumps(settings))
        assert agent(state, "fetch-key", "vault", "--format", "hex").stdout.strip() == key
    finally:
        assert second.stop() == 0


@pytest.mark.postgresql_only("backup on PostgreSQL is refused")
def test_backup_on_postgresql_says_to_use_pg_dump(server: ServerProcess, tmp_path: Path) -> None:
    result = server.admin("backup", str(tmp_path / "b.tar"), check=False)
    assert_one_line_error(result, 6, "pg_dump")
    assert not (tmp_path / "b.tar").exists()
