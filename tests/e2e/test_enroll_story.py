"""Story: an operator starts the server, enrolls two machines, restarts the server."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.harness import ServerProcess, agent, backend, enroll, short_tmpdir, snapshot, store_bytes

# The guarantees must hold across worker processes too (issue 20).
pytestmark = pytest.mark.every_worker_setting


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_enroll_two_agents_status_list_and_restart() -> None:
    root = short_tmpdir("kmsst")
    data = root / "d"
    server = ServerProcess(data).start()
    try:
        fingerprint = server.fingerprint
        assert fingerprint.startswith("sha256:") and len(fingerprint) == 7 + 64
        assert server.fields["admin-socket"] == str(data / "admin.sock")
        assert server.admin("ca", "fingerprint").stdout.strip() == fingerprint

        # Tokens: --json shows what the token is bound to; the store keeps only a hash.
        issued = json.loads(
            server.admin("token", "create", "--name", "spare", "--group", "x", "--json").stdout
        )
        assert set(issued) == {"token", "token_id", "name", "groups", "expires_at"}
        assert (issued["name"], issued["groups"]) == ("spare", ["x"])
        token_id, secret = issued["token"].split(".")
        assert token_id == issued["token_id"] and len(secret) == 43  # 256 random bits
        rows = snapshot(server)["join_tokens"]
        assert any(r[0] == token_id for r in rows)
        assert secret not in repr(rows)
        assert secret.encode() not in store_bytes(server)

        web, db = root / "web-1", root / "db-1"
        result = enroll(server, web, server.token("web-1", "web", "frontend"))
        assert result.returncode == 0, result.stderr
        assert "enrolled as web-1" in result.stdout
        result = enroll(server, db, server.token("db-1"), key_size="3072")
        assert result.returncode == 0, result.stderr

        for state, name, groups in ((web, "web-1", ["frontend", "web"]), (db, "db-1", [])):
            status = agent(state, "status", "--json")
            assert status.returncode == 0, status.stderr
            seen = json.loads(status.stdout)
            assert seen["name"] == name and seen["groups"] == groups
            assert seen["spiffe_id"] == f"spiffe://seed-kms.local/agent/{name}"
            cert = x509.load_pem_x509_certificate((state / "agent.crt").read_bytes())
            assert seen["serial"] == format(cert.serial_number, "x")
            assert _mode(state / "agent.key") == 0o600
            assert _mode(state) == 0o700

        listed = json.loads(server.admin("agents", "list", "--json").stdout)
        assert [(a["name"], a["groups"], a["status"]) for a in listed] == [
            ("db-1", [], "valid"),
            ("web-1", ["frontend", "web"], "valid"),
        ]
        table = server.admin("agents", "list").stdout
        assert "web-1" in table and "db-1" in table and "SERIAL" in table

        # The server's secrets on disk: 0600, and the CA key is sealed, not PEM/DER.
        # (On PostgreSQL the CA and the store live in the database, not in the data dir.)
        embedded = ("ca.key", "kms.db") if backend() == "sqlite" else ()
        for name in ("master.key", "server.key", *embedded):
            assert _mode(data / name) == 0o600, name
        assert _mode(data / "admin.sock") == 0o600
        assert _mode(data) == 0o700
        assert b"PRIVATE KEY" not in store_bytes(server)
        if embedded:
            sealed = (data / "ca.key").read_bytes()
            assert b"PRIVATE KEY" not in sealed
            try:
                serialization.load_der_private_key(sealed, password=None)
                raise AssertionError("ca.key parsed as a plaintext private key")
            except ValueError:
                pass

        assert server.stop() == 0
        assert not (data / "admin.sock").exists()

        # Second start on the same directory (and ports) reuses CA, server certificate and store.
        server_crt = (data / "server.crt").read_bytes()
        server = ServerProcess(data, listen=server.address, enroll_listen=server.enroll_address).start()
        assert server.fingerprint == fingerprint
        assert (data / "server.crt").read_bytes() == server_crt
        for state in (web, db):
            status = agent(state, "status")
            assert status.returncode == 0, status.stderr + server.output()
            assert "verified over mTLS" in status.stdout
        assert len(json.loads(server.admin("agents", "list", "--json").stdout)) == 2
    finally:
        code = server.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert code == 0
