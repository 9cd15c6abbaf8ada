"""CAs the agent dropped never come back, and an agent whose own CA is gone stops (agent/bundle.py).

A CA the agent trusted that a newer accepted bundle leaves out (retired, cancelled) is recorded in
dropped-cas.json: a bundle holding it is refused later (a cancelled CA's cross-certificate is valid
for years, and catch_up reads bundles over an unverified connection, so an old one can be replayed),
and a damaged stored bundle does not fall back to a pinned CA that was dropped. An agent whose
certificate's CA is no longer trusted ends its watch with exit 11 and says how to come back; its own
revocation for cACompromise drops that CA first. kms-agent watch reads the bundle from an
enrollment address on any Unavailable, not only a certificate that does not verify: after an
emergency rotation the server refuses the agent's certificate instead.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

import agent.watch
from agent.bundle import bundle_path, refresh_bundle, trusted_now
from agent.state import AgentIdentity, AgentSettings, StateDir
from agent.watch import Watcher
from kms.errors import FailedPrecondition, Revoked, Unavailable
from kms.v1 import revocation_pb2
from tests.unit.agent.cas import Key, cross, fp, make_ca
from tests.unit.agent.cas import pem as _pem

NOW = datetime.now(UTC)  # the watch checks at the real time


def _ca() -> tuple[x509.Certificate, Key]:
    return make_ca(NOW)


def _cross(new: x509.Certificate, old: x509.Certificate, old_key: Key) -> x509.Certificate:
    return cross(new, old, old_key, NOW)


_fp = fp


@pytest.fixture(scope="module")
def gens() -> list[tuple[x509.Certificate, Key]]:
    return [_ca() for _ in range(3)]


def _enrolled(path: Path, ca: x509.Certificate, ca_key: Key) -> StateDir:
    """An agent (web-1) pinned to ca, with a certificate ca issued."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web-1")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(hours=1))
        .sign(ca_key, hashes.SHA256())
    )
    settings = AgentSettings(
        "web-1", ["web"], "spiffe://t/agent/web-1", ("127.0.0.1:1",), ("127.0.0.1:1",), _fp(ca)
    )
    state = StateDir(path)
    state.save(AgentIdentity(settings, key, cert, ca.public_bytes(serialization.Encoding.PEM)))
    return state


def _watcher(state: StateDir, connect: object = None) -> Watcher:
    def refuse() -> agent.watch.KmsClient:
        raise AssertionError("no connection expected")

    return Watcher(state, state.load(), connect or refuse, as_json=True, exec_cmd=None, silence_timeout=30.0)  # type: ignore[arg-type]


def test_a_dropped_ca_is_never_trusted_again(
    tmp_path: Path, gens: list, caplog: pytest.LogCaptureFixture
) -> None:
    (g1, k1), (g2, _), (g3, _) = gens
    state = StateDir(tmp_path)
    state.ca.write_text(_pem(g1))
    prepared = _pem(g1, g2, _cross(g2, g1, k1))
    assert refresh_bundle(state, prepared, NOW, 0) is not None
    assert refresh_bundle(state, _pem(g1), NOW, 0) is not None  # g2 cancelled: dropped, recorded
    assert set(state.dropped()) == {_fp(g2)} and state.dropped_file.stat().st_mode & 0o777 == 0o644
    # The old bundle replayed (its cross-certificate still valid): refused, one line, trust unchanged.
    with caplog.at_level(logging.WARNING, logger="agent.bundle"):
        assert refresh_bundle(state, prepared, NOW, 0) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"kept the CA trust as it was: the server's trust bundle holds CA {_fp(g2)}, which this agent"
        " dropped before (retired, cancelled or compromised) and never trusts again"
    ]
    assert trusted_now(state, NOW) == [g1] and bundle_path(state).read_text() == _pem(g1)
    # A CA prepared since, under a new key, is trusted as any other.
    assert refresh_bundle(state, _pem(g1, g3, _cross(g3, g1, k1)), NOW, 0) is not None
    assert trusted_now(state, NOW) == [g1, g3]


def test_a_new_enrollment_trusts_its_bundle_again(tmp_path: Path, gens: list) -> None:
    """The operator's new pin decides: a CA dropped before (its own certificate revoked for
    cACompromise, say) is trusted again when an enrollment's bundle, verified from it, holds it."""
    (g1, k1), (g2, _), _ = gens
    state = _enrolled(tmp_path, g1, k1)
    state.save_dropped([g1, g2])
    identity = state.load_certificate()
    again = _enrolled(tmp_path / "again", g1, k1).load()
    state.save(again, trust_bundle=(_pem(g1).encode(), 7))
    assert set(state.dropped()) == {_fp(g2)} and identity != state.load_certificate()
    assert trusted_now(state, NOW) == [g1]


def test_a_damaged_bundle_does_not_bring_back_a_dropped_pinned_ca(tmp_path: Path, gens: list) -> None:
    (g1, k1), (g2, k2), _ = gens
    state = _enrolled(tmp_path, g1, k1)
    c12 = _cross(g2, g1, k1)
    assert refresh_bundle(state, _pem(g1, g2, c12), NOW, 0) is not None
    assert refresh_bundle(state, _pem(g2, c12), NOW, 0) is not None  # g1 retired: dropped
    assert trusted_now(state, NOW) == [g2]
    state.trust_bundle.write_text("damaged")
    assert trusted_now(state, NOW) == []  # not the pinned g1
    with pytest.raises(FailedPrecondition) as err:
        state.load()
    message = err.value.message
    assert "\n" not in message and message.startswith("this agent trusts no CA it can use")
    assert message.endswith(
        "ask for a new join token (kms-server token create --name web-1) and run kms-agent enroll --force"
    )


def test_the_watch_ends_when_its_own_ca_is_no_longer_trusted(tmp_path: Path, gens: list) -> None:
    (g1, k1), (g2, _), _ = gens
    state = _enrolled(tmp_path, g1, k1)
    assert refresh_bundle(state, _pem(g2, _cross(g2, g1, k1)), NOW, 0) is not None  # g1 retired
    with pytest.raises(Revoked) as err:
        _watcher(state).run(install_signals=False)
    assert err.value.exit_code == 11
    assert err.value.message == (
        f"this agent's certificate was issued by CA {_fp(g1)} which this agent no longer trusts (retired, or compromised):"
        " ask for a new join token (kms-server token create --name web-1) and run kms-agent enroll --force"
    )


def test_revoked_for_ca_compromise_drops_its_ca(tmp_path: Path, gens: list) -> None:
    (g1, k1), (g2, _), _ = gens
    state = _enrolled(tmp_path, g1, k1)
    assert refresh_bundle(state, _pem(g1, g2, _cross(g2, g1, k1)), NOW, 0) is not None
    serial = format(state.load_certificate().serial_number, "x")
    watcher = _watcher(state)
    with pytest.raises(Revoked):  # another reason: the CA stays trusted
        watcher._handle(
            revocation_pb2.RevocationEvent(seq=1, kind="cert", serial=serial, reason="keyCompromise")
        )
    assert trusted_now(state, NOW) == [g1, g2] and not state.dropped_file.exists()
    with pytest.raises(Revoked):
        watcher._handle(
            revocation_pb2.RevocationEvent(seq=2, kind="cert", serial=serial, reason="cACompromise")
        )
    assert set(state.dropped()) == {_fp(g1)} and trusted_now(state, NOW) == [g2]
    assert state.load().roots == [g2]  # what kms-agent verify and key-exchange peers check against
    assert state.revoked(serial) == "cACompromise"


def test_any_unavailable_reads_the_bundle_at_most_once_a_minute(
    tmp_path: Path, gens: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    (g1, k1), _, _ = gens
    state = _enrolled(tmp_path, g1, k1)
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(
        agent.watch, "catch_up", lambda st, servers, now, timeout: calls.append(servers) or False
    )
    attempts: list[int] = []

    def refused() -> agent.watch.KmsClient:  # as the server refusing a client CA it retired looks
        attempts.append(1)
        raise Unavailable("cannot reach kms-server at 127.0.0.1:1 (Socket closed): check the address")

    watcher = _watcher(state, refused)
    thread = threading.Thread(target=watcher.run, kwargs={"install_signals": False})
    thread.start()
    try:
        threading.Event().wait(1.5)
    finally:
        watcher.stop()
        thread.join(10)
    assert len(attempts) >= 3 and calls == [("127.0.0.1:1",)]
