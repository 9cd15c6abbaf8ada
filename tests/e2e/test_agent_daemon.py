"""kms-agent run for three certificate lifetimes: it renews on its own and keeps everything working."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from kms.v1 import admin_pb2
from tests.harness import ServerProcess, agent, enroll, exe

LIFETIME = 60  # seconds: "about a minute", as operators would test it

# Three minutes of mostly waiting: started first, so they overlap the rest of the suite.
pytestmark = [
    pytest.mark.long_running,
    pytest.mark.sqlite_only(
        "kms-agent run's own behaviour over three lifetimes; renewal on PostgreSQL is"
        " test_renewal_config's, and the store's renewal rules run on both in the unit tests"
    ),
]


@pytest.mark.timeout(6 * LIFETIME)
def test_agent_runs_across_three_lifetimes(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "d", extra_args=["--cert-ttl", f"{LIFETIME}s", "--heartbeat", "1s"]
    ).start()
    state, peer = tmp_path / "runner", tmp_path / "peer"
    daemon: subprocess.Popen[str] | None = None
    try:
        assert enroll(server, state, server.token("runner", "web")).returncode == 0
        server.admin("key", "create", "app", "--grant", "group:web")
        # Three key files: raw and hex ones that follow the current version, one pinned to v1.
        key_file, hex_file, pinned = tmp_path / "app.key", tmp_path / "app.hex", tmp_path / "app-v1.key"
        assert agent(state, "fetch-key", "app", "--out", str(key_file)).returncode == 0
        assert agent(state, "fetch-key", "app", "--out", str(hex_file), "--format", "hex").returncode == 0
        assert agent(state, "fetch-key", "app", "--version", "1", "--out", str(pinned)).returncode == 0
        v1 = key_file.read_bytes()
        assert hex_file.read_text() == v1.hex() + "\n" and pinned.read_bytes() == v1

        daemon = subprocess.Popen(
            [exe("kms-agent"), "run", "--dir", str(state), "--renew-fraction", "0.5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        events: list[dict[str, object]] = []
        threading.Thread(
            target=lambda: [events.append(json.loads(line)) for line in daemon.stdout], daemon=True
        ).start()  # type: ignore[union-attr]

        # Three lifetimes at --renew-fraction 0.5 (plus or minus 5% jitter): a renewal about
        # every 30 s, each by the certificate the previous one issued.
        started = time.monotonic()
        renewals = 0
        while time.monotonic() < started + 3 * LIFETIME:
            time.sleep(5)
            records = server.stub.ListAudit(admin_pb2.ListAuditRequest(), timeout=30).records
            renewals = sum(1 for r in records if r.action == "renew" and r.actor.startswith("agent:runner/"))
            assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
        assert renewals >= 5, f"only {renewals} renewals in three lifetimes"
        assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""

        # Still working after three lifetimes: its current certificate is valid and the watch is live.
        assert agent(state, "status", "--renew-fraction", "0.99").returncode == 0

        def current_hex() -> str:
            return agent(state, "fetch-key", "app", "--format", "hex").stdout.strip()

        def wait_for_version(version: int) -> None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (
                key_file.exists() and hex_file.exists() and hex_file.read_text().strip() == current_hex()
            ):
                time.sleep(0.3)
            assert hex_file.read_text().strip() == current_hex(), f"key files not moved to v{version}"
            assert key_file.read_bytes().hex() == current_hex()
            listed = json.loads((state / "key-files.json").read_text())
            assert sorted(e["version"] for e in listed) == [1, version, version]

        # A plain rotation: following files move to v2 in their own format; the pinned one stays.
        server.admin("key", "rotate", "app")
        wait_for_version(2)
        assert key_file.read_bytes() != v1 and pinned.read_bytes() == v1
        assert any(e.get("kind") == "rotate" and e.get("version") == 2 for e in events)
        # Compromise of the current version: the server rotates to v3 and the files follow.
        v2 = key_file.read_bytes()
        server.admin("revoke", "key", "--yes", "app", "--version", "2", "--reason", "keyCompromise")
        wait_for_version(3)
        assert key_file.read_bytes() not in (v1, v2) and pinned.read_bytes() == v1
        assert any(e.get("kind") == "key" and e.get("version") == 2 for e in events)

        # It answers key exchanges too.
        assert enroll(server, peer, server.token("peer")).returncode == 0
        result = agent(peer, "exchange", "--peer", "runner", "--json")
        deadline = time.monotonic() + 15
        while "not listening" in result.stderr and time.monotonic() < deadline:
            time.sleep(0.5)
            result = agent(peer, "exchange", "--peer", "runner", "--json")
        assert result.returncode == 0, result.stderr
        session = json.loads(result.stdout)
        key_path = state / "sessions" / f"{session['session_id']}.key"
        deadline = time.monotonic() + 10
        while not key_path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (
            key_path.read_bytes().hex()
            == bytes.fromhex(__import__("base64").b64decode(session["key_base64"]).hex()).hex()
        )

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        assert server.stop() == 0
