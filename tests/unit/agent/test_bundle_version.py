"""The trust bundle's version (issue 19 §1, SPIRE's bundle sequence numbers): the agent stores it with
the bundle (trust-bundle.pem's first line) and refuses a bundle whose version is lower than the
one it holds, as a replica that lags serves it: one line, the trust unchanged, nothing dropped;
the CA of its own certificate stays trusted, so the watch does not end (exit 11). A newer
bundle is taken; the same content at the same version is no news; an older server's 0 is
handled as before only while the agent holds version 0."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from agent.bundle import bundle_path, news, refresh_bundle, retired_issuer, trusted_now
from agent.state import StateDir
from kms.v1 import revocation_pb2
from tests.unit.agent.test_dropped_cas import NOW, _ca, _cross, _enrolled, _fp, _pem, _watcher

OLDER = (
    "the server's trust bundle (version {}) is older than the one this agent holds (version {}):"
    " kept the trust as it was; a replica that lags serves it"
)


@pytest.fixture(scope="module")
def gens() -> list[tuple[x509.Certificate, object]]:
    return [_ca() for _ in range(3)]


class _Served:
    """What the watch connects to: a server answering GetCABundle with (pem, version)."""

    def __init__(self, pem: str, version: int) -> None:
        self.bundle, self.calls = (pem, version), 0

    def __call__(self) -> _Served:
        return self

    def __enter__(self) -> _Served:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_trust_bundle(self) -> tuple[str, int]:
        self.calls += 1
        return self.bundle


def test_an_older_bundle_is_refused_and_drops_nothing(
    tmp_path: Path, gens: list, caplog: pytest.LogCaptureFixture
) -> None:
    (g1, k1), (g2, _), _ = gens
    state = _enrolled(tmp_path, g1, k1)
    prepared = _pem(g1, g2, _cross(g2, g1, k1))
    assert refresh_bundle(state, prepared, NOW, 5) is not None
    assert state.stored_bundle() == (prepared, 5)
    assert bundle_path(state).read_text().startswith("# trust bundle version 5\n-----BEGIN CERTIFICATE")
    # A lagging replica's bundle from before the prepare (version 3), or an older server's (0).
    for version in (3, 0):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="agent.bundle"):
            assert not news(state, _pem(g1), version)  # at a stream's start: not news, one line
            assert refresh_bundle(state, _pem(g1), NOW, version) is None  # at a 'bundle' event
        assert [r.getMessage() for r in caplog.records] == [OLDER.format(version, 5)] * 2
        assert trusted_now(state, NOW) == [g1, g2] and not state.dropped_file.exists()
        assert state.stored_bundle() == (prepared, 5)


def test_a_lagging_replica_does_not_strand_the_agent(tmp_path: Path, gens: list) -> None:
    """After an activation the agent's certificate is the new CA's; a replica that has not followed
    serves the bundle before it, without that CA: refused, at a 'bundle' event as at a stream's start."""
    (g1, k1), (g2, k2), _ = gens
    state = _enrolled(tmp_path, g2, k2)  # renewed under g2, the active CA
    state.save_trust_bundle(_pem(g1).encode(), 4)  # enrolled pinning g1 (version 4); g2 activated at 9
    state.ca.write_text(_pem(g1))
    activated = _pem(g2, _cross(g2, g1, k1), g1)
    assert refresh_bundle(state, activated, NOW, 9) is not None and retired_issuer(state, NOW) is None
    lagging = _Served(_pem(g1), 4)
    watcher = _watcher(state, lagging)
    watcher._handle(revocation_pb2.RevocationEvent(seq=10, kind="bundle", serial="1", reason="activated"))
    watcher._catch_up_bundle()
    assert lagging.calls == 2
    assert trusted_now(state, NOW) == [g2, g1] and not state.dropped_file.exists()
    assert retired_issuer(state, NOW) is None and state.stored_bundle() == (activated, 9)


def test_a_newer_bundle_is_taken_and_the_same_one_is_no_news(tmp_path: Path, gens: list) -> None:
    (g1, k1), (g2, _), (g3, _) = gens
    state = _enrolled(tmp_path, g1, k1)
    assert not news(state, _pem(g1), 0)  # an older server, nothing stored: as before
    prepared = _pem(g1, g2, _cross(g2, g1, k1))
    assert news(state, prepared, 2)
    assert refresh_bundle(state, prepared, NOW, 2) is not None
    assert not news(state, prepared, 2)  # the same bundle at the same version
    assert news(state, prepared, 3)  # the same content, newer: its version is taken
    assert refresh_bundle(state, prepared, NOW, 3) is not None and state.stored_bundle() == (prepared, 3)
    # Cancelled (version 4), another CA prepared (5): taken, the cancelled one dropped as before.
    assert refresh_bundle(state, _pem(g1), NOW, 4) is not None
    assert set(state.dropped()) == {_fp(g2)}
    assert refresh_bundle(state, _pem(g1, g3, _cross(g3, g1, k1)), NOW, 5) is not None
    assert trusted_now(state, NOW) == [g1, g3]
    # An equal version with other content is handled as before (stored when it verifies).
    assert news(state, _pem(g1), 5) and refresh_bundle(state, _pem(g1), NOW, 5) is not None


def test_an_older_server_is_followed_while_the_agent_holds_version_0(tmp_path: Path, gens: list) -> None:
    (g1, k1), (g2, _), _ = gens
    state = _enrolled(tmp_path, g1, k1)
    prepared = _pem(g1, g2, _cross(g2, g1, k1))
    assert news(state, prepared, 0) and refresh_bundle(state, prepared, NOW, 0) is not None
    assert bundle_path(state).read_text() == prepared  # version 0: the bundle alone, as before
    assert refresh_bundle(state, _pem(g1), NOW, 0) is not None  # cancelled: dropped, as before
    assert trusted_now(state, NOW) == [g1] and set(state.dropped()) == {_fp(g2)}


def test_enrollment_stores_the_version_and_openssl_reads_the_file(tmp_path: Path, gens: list) -> None:
    (g1, k1), (g2, k2), _ = gens
    state = _enrolled(tmp_path / "a", g1, k1)
    identity = state.load()
    bundle = _pem(g1, g2, _cross(g2, g1, k1)).encode()
    fresh = StateDir(tmp_path / "b")
    fresh.save(identity, watch_from_seq=3, trust_bundle=(bundle, 7))
    assert fresh.stored_bundle() == (bundle.decode(), 7)
    assert fresh.load().roots == [g1, g2]  # the version line is skipped as PEM explanatory text
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(identity.cert_pem)
    check = subprocess.run(
        ["openssl", "verify", "-CAfile", str(fresh.trust_bundle), str(leaf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # A missing file reads as version 0; a damaged first line too (the bundle then does not verify).
    assert StateDir(tmp_path / "none").stored_bundle() == ("", 0)
    fresh.trust_bundle.write_text("# trust bundle version x\n" + bundle.decode())
    assert fresh.stored_bundle()[1] == 0
    assert x509.load_pem_x509_certificates(fresh.trust_bundle.read_bytes())[0] == g1
