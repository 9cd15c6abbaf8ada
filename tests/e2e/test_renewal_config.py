"""Renewal (rekeying) end to end, automatic renewal, and config files for both commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cryptography import x509

from tests.harness import RunProcess, ServerProcess, agent, assert_one_line_error, enroll, exe, run


def _cert(state: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((state / "agent.crt").read_bytes())


def test_renew_rekeys_and_keeps_identity(server: ServerProcess, tmp_path: Path) -> None:
    state = tmp_path / "a"
    assert enroll(server, state, server.token("renewer", "web", "ops")).returncode == 0
    before = _cert(state)
    old = tmp_path / "old"
    shutil.copytree(state, old)

    result = agent(state, "renew")
    assert result.returncode == 0, result.stderr
    after = _cert(state)
    assert after.serial_number != before.serial_number
    assert after.public_key() != before.public_key()  # a new key, not just a new certificate
    assert (state / "agent.key").stat().st_mode & 0o777 == 0o600
    status = json.loads(agent(state, "status", "--json").stdout)
    assert (status["name"], status["groups"]) == ("renewer", ["ops", "web"])
    # The superseded certificate stays valid until it expires (unless revoked).
    assert agent(old, "status").returncode == 0

    actions = [r["action"] for r in json.loads(server.admin("audit", "list", "--json").stdout)]
    assert "renew" in actions

    # Renewals are limited per agent: an automatic one this soon is refused, and the command
    # carries on with the certificate it has.
    soon = agent(state, "status", "--json", "--renew-fraction", "0.0001")
    assert soon.returncode == 0 and "automatic renewal refused" in soon.stderr, soon.stderr
    assert json.loads(soon.stdout)["serial"] == format(after.serial_number, "x")

    # Automatic: any command renews first once the certificate is past the renewal fraction.
    fresh = tmp_path / "auto"
    assert enroll(server, fresh, server.token("auto-renewer")).returncode == 0
    enrolled = _cert(fresh)
    auto = agent(fresh, "status", "--json", "--renew-fraction", "0.0001")
    assert auto.returncode == 0, auto.stderr
    assert (
        json.loads(auto.stdout)["serial"]
        == format(_cert(fresh).serial_number, "x")
        != format(enrolled.serial_number, "x")
    )

    # A revoked certificate cannot renew.
    server.admin("revoke", "agent", "--yes", "renewer")
    assert_one_line_error(agent(state, "renew"), 11, "was revoked")


def test_agent_config_file(server: ServerProcess, tmp_path: Path) -> None:
    state = tmp_path / "cfg-agent"
    assert enroll(server, state, server.token("configured")).returncode == 0
    good = tmp_path / "agent.toml"
    good.write_text(f'dir = "{state}"\ntimeout = 20\n')
    result = run([exe("kms-agent"), "status", "--config", str(good)])
    assert result.returncode == 0 and "configured" in result.stdout, result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('dir = "x"\nfrobnicate = 1\n')
    assert_one_line_error(
        run([exe("kms-agent"), "status", "--config", str(bad)]), 2, "'frobnicate' is unknown"
    )
    fraction = tmp_path / "fraction.toml"
    fraction.write_text(f'dir = "{state}"\nrenew_fraction = 1.5\n')
    assert_one_line_error(run([exe("kms-agent"), "status", "--config", str(fraction)]), 2, "renew_fraction")
    broken = tmp_path / "broken.toml"
    broken.write_text("dir = \n")
    assert_one_line_error(run([exe("kms-agent"), "status", "--config", str(broken)]), 2, "not valid TOML")


def test_server_config_file_precedence_and_show(tmp_path: Path) -> None:
    conf = tmp_path / "server.toml"
    conf.write_text(
        'listen = "127.0.0.1:9100"\ncert_ttl = "12h"\nsan = ["kms.example.org"]\ntoken_ttl = "5m"\n'
    )
    shown = run(
        [
            exe("kms-server"),
            "config",
            "show",
            "--config",
            str(conf),
            "--data-dir",
            str(tmp_path / "d"),
            "--token-ttl",
            "7m",
        ],
        env={"KMS_CERT_TTL": "6h"},
    )
    assert shown.returncode == 0, shown.stderr
    cfg = json.loads(shown.stdout)
    # defaults < file < environment < flags
    assert cfg["listen"] == "127.0.0.1:9100" and cfg["san"] == ["kms.example.org"]
    assert cfg["cert_ttl"] == "6h" and cfg["token_ttl"] == "7m" and cfg["heartbeat"] == "5s"
    assert "master" not in shown.stdout.lower()
    bad = tmp_path / "bad.toml"
    bad.write_text('cert_ttl = "48h"\nca_ttl = "1d"\n')
    assert_one_line_error(run([exe("kms-server"), "run", "--config", str(bad)]), 2, "--cert-ttl")
    bad.write_text("renew_fraction = 0\n")
    assert_one_line_error(run([exe("kms-server"), "run", "--config", str(bad)]), 2, "--renew-fraction")
    bad.write_text("listne = 1\n")
    assert_one_line_error(run([exe("kms-server"), "run", "--config", str(bad)]), 2, "'listne' is unknown")


def test_an_expired_certificate_cannot_renew(tmp_path: Path) -> None:
    import time

    server = ServerProcess(tmp_path / "d", extra_args=["--cert-ttl", "10s"]).start()
    try:
        state = tmp_path / "short"
        assert enroll(server, state, server.token("short")).returncode == 0
        assert server.stop() == 0  # out of reach until the certificate has lapsed
        daemon = RunProcess(state)
        time.sleep(max(0.0, _cert(state).not_valid_after_utc.timestamp() - time.time()) + 1.5)
        # The TLS handshake would refuse it; the agent knows its own expiry and says so (issue 17).
        result = agent(state, "renew")
        assert_one_line_error(
            result, 3, "expired at", "kms-server token create --name short", "enroll --force"
        )
        assert "cannot reach" not in result.stderr
        # kms-agent run, which could not renew in time, stops saying the same instead of retrying for ever.
        assert daemon.proc.wait(15) == 3
        assert daemon.proc.stderr is not None
        last = daemon.proc.stderr.read().strip().splitlines()[-1]
        assert last.startswith("kms-agent: error: this agent's certificate") and "expired at" in last, last
    finally:
        assert server.stop() == 0
