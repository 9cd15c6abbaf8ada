"""agent/state.py's agent.json: the list format it writes, and the single-address files of older agents."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from agent.state import AgentIdentity, AgentSettings, StateDir
from kms.errors import FailedPrecondition

BASE = {
    "name": "web-1",
    "groups": ["web"],
    "spiffe_id": "spiffe://seed-kms.local/agent/web-1",
    "ca_fingerprint": "sha256:" + "ab" * 32,
}


def test_old_single_address_format_is_read() -> None:
    settings = AgentSettings.from_json({**BASE, "server": "a:8443", "enroll_server": "a:8444"})
    assert settings.servers == ("a:8443",) and settings.enroll_servers == ("a:8444",)
    assert settings.server == "a:8443"


def test_new_format_round_trips_without_the_old_keys() -> None:
    settings = AgentSettings.from_json(
        {**BASE, "servers": ["a:8443", "b:8443"], "enroll_servers": ["a:8444", "b:8444"]}
    )
    assert settings.servers == ("a:8443", "b:8443") and settings.server == "a:8443"
    doc = settings.to_json()
    assert doc["servers"] == ["a:8443", "b:8443"] and doc["enroll_servers"] == ["a:8444", "b:8444"]
    assert "server" not in doc and "enroll_server" not in doc
    assert AgentSettings.from_json(json.loads(json.dumps(doc))) == settings


def test_an_old_key_written_over_a_new_file_wins() -> None:
    # What a tool that knows only the old format does: set "server" and keep the rest.
    doc = {**BASE, "servers": ["a:8443", "b:8443"], "enroll_servers": ["a:8444"], "server": "c:9443"}
    settings = AgentSettings.from_json(doc)
    assert settings.servers == ("c:9443",) and settings.enroll_servers == ("a:8444",)


@pytest.mark.parametrize(
    "doc",
    [
        {**BASE},
        {**BASE, "servers": [], "enroll_servers": ["a:1"]},
        {**BASE, "servers": "a:1", "enroll_servers": ["a:1"]},
        {**BASE, "servers": ["a:1", 2], "enroll_servers": ["a:1"]},
        {**BASE, "server": "", "enroll_server": "a:1"},
        {**BASE, "servers": ["a:1"], "enroll_servers": ["a:1"], "colour": "red"},
        {**BASE, "groups": "web", "servers": ["a:1"], "enroll_servers": ["a:1"]},
        ["not", "an", "object"],
    ],
    ids=[
        "no-address",
        "empty-list",
        "string-not-list",
        "non-string",
        "empty-old",
        "unknown-key",
        "groups",
        "list",
    ],
)
def test_malformed_settings_are_refused(doc: object) -> None:
    with pytest.raises(ValueError):
        AgentSettings.from_json(doc)


def _identity(key: rsa.RSAPrivateKey, settings: AgentSettings) -> AgentIdentity:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    return AgentIdentity(settings, key, cert, cert.public_bytes(serialization.Encoding.PEM))  # its own CA


def test_state_dir_reads_an_old_file_and_writes_the_new_form(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    state = StateDir(tmp_path / "agent")
    old = AgentSettings.from_json({**BASE, "server": "a:8443", "enroll_server": "a:8444"})
    state.save(_identity(rsa_key, old))
    # An older agent's agent.json, exactly as it wrote it.
    state.settings.write_text(json.dumps({**BASE, "server": "a:8443", "enroll_server": "a:8444"}, indent=2))
    loaded = state.load()
    assert loaded.settings.servers == ("a:8443",) and loaded.settings.enroll_servers == ("a:8444",)
    state.save(loaded)  # as a renewal does
    written = json.loads(state.settings.read_text())
    assert written["servers"] == ["a:8443"] and written["enroll_servers"] == ["a:8444"]
    assert "server" not in written


def test_state_dir_reports_a_malformed_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    state = StateDir(tmp_path / "agent")
    state.save(_identity(rsa_key, AgentSettings.from_json({**BASE, "server": "a:1", "enroll_server": "a:2"})))
    state.settings.write_text(json.dumps({**BASE, "servers": []}))
    with pytest.raises(FailedPrecondition, match="unreadable"):
        state.load()
