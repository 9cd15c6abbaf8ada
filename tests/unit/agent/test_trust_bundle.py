"""The agent's trust follows the latest verified trust bundle (agent/bundle.py, SPIRE's model).

A new bundle is accepted when every CA in it verifies from a CA the agent trusts now (the
pinned one while no bundle is stored, else the stored bundle's); it is then stored (0644,
atomically) and is the whole trust: a CA it leaves out is no longer trusted, the pinned one
included. A bundle that does not verify changes nothing, with one line logged; a stored bundle
that no longer verifies at load leaves the pinned CA alone, with one line. The bundles are built
as server/ca/rotation.py's bundle_pem builds them: the active CA and its cross-certificate from
the CA before, each retiring CA with one the active CA made (oldWithNew), each prepared CA with
its cross-certificate. Enrollment (agent/enroll.py) requires the pinned CA in the server's bundle
and verifies the bundle from it, or fails with one line before the token is sent.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.bundle import bundle_path, news, refresh_bundle, trusted_now
from agent.enroll import _trust_from_pin
from agent.state import StateDir
from kms import cabundle
from kms.errors import Unauthenticated
from tests.unit.agent.cas import Key, cross, fp, make_ca
from tests.unit.agent.cas import pem as _pem

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _ca(days: int = 30) -> tuple[x509.Certificate, Key]:
    return make_ca(NOW, days)


def _cross(new: x509.Certificate, old: x509.Certificate, old_key: Key) -> x509.Certificate:
    return cross(new, old, old_key, NOW)


_fp = fp


@pytest.fixture(scope="module")
def gens() -> list[tuple[x509.Certificate, Key]]:
    """Three CA generations."""
    return [_ca() for _ in range(3)]


def _pinned(tmp_path: Path, ca: x509.Certificate) -> StateDir:
    state = StateDir(tmp_path)
    state.ca.write_text(_pem(ca))
    return state


def test_stored_only_when_it_verifies(tmp_path: Path, caplog: pytest.LogCaptureFixture, gens: list) -> None:
    (old, old_key), (new, _), _ = gens
    state = _pinned(tmp_path, old)
    # Without the cross-certificate: nothing stored, one line.
    with caplog.at_level(logging.WARNING, logger="agent.bundle"):
        assert refresh_bundle(state, _pem(old, new), NOW, 0) is None
    assert [r.getMessage() for r in caplog.records] == [
        "kept the CA trust as it was: the server's trust bundle does not verify (CA "
        + _fp(new)
        + " has no valid cross-certificate from a trusted CA)"
    ]
    assert not bundle_path(state).exists() and trusted_now(state, NOW) == [old]
    # With it: stored, public, and read back as the trust.
    pem = _pem(old, new, _cross(new, old, old_key))
    trusted = refresh_bundle(state, pem, NOW, 0)
    assert trusted is not None and [t.cert for t in trusted] == [old, new]
    assert bundle_path(state).stat().st_mode & 0o777 == 0o644 and bundle_path(state).read_text() == pem
    assert trusted_now(state, NOW) == [old, new] and not news(state, pem, 0)


def test_trust_follows_rotation_activation_retirement_and_the_pin_goes(tmp_path: Path, gens: list) -> None:
    (g1, k1), (g2, k2), (g3, _) = gens
    state = _pinned(tmp_path, g1)
    c12, c23 = _cross(g2, g1, k1), _cross(g3, g2, k2)
    # Prepared (from the pinned CA), activated (g1 retiring, vouched for by g2: oldWithNew), a
    # second rotation prepared, then g1 retired. Each verifies from what the one before trusted.
    steps = [
        (_pem(g1, g2, c12), [g1, g2]),
        (_pem(g2, c12, g1, _cross(g1, g2, k2)), [g2, g1]),
        (_pem(g2, c12, g1, _cross(g1, g2, k2), g3, c23), [g2, g1, g3]),
        (_pem(g2, c12, g3, c23), [g2, g3]),
    ]
    for pem, cas in steps:
        assert refresh_bundle(state, pem, NOW, 0) is not None
        assert trusted_now(state, NOW) == cas
    # The pinned CA is gone from the bundle: no longer trusted, though ca.crt still names it.
    assert g1 not in trusted_now(state, NOW) and state.ca.read_text() == _pem(g1)
    # g3 activated, g2 retired: the bundle no longer reaches the pinned CA, only the stored one.
    final = _pem(g3, c23)
    assert refresh_bundle(state, final, NOW, 0) is not None
    assert trusted_now(state, NOW) == [g3]
    # A bundle signed for the pinned CA alone is no longer accepted: it is not trusted.
    assert refresh_bundle(state, _pem(g1), NOW, 0) is None
    assert bundle_path(state).read_text() == final


def test_a_ca_dropped_from_a_newer_bundle_is_no_longer_trusted(tmp_path: Path, gens: list) -> None:
    (g1, k1), (g2, _), _ = gens
    state = _pinned(tmp_path, g1)
    assert refresh_bundle(state, _pem(g1, g2, _cross(g2, g1, k1)), NOW, 0) is not None
    # The prepared CA cancelled: the bundle is the pinned CA alone again.
    assert refresh_bundle(state, _pem(g1), NOW, 0) is not None
    assert trusted_now(state, NOW) == [g1]


@pytest.mark.parametrize("holds", ["only the retiring CA", "only the active CA"])
def test_an_agent_holding_one_generation_verifies_the_others(tmp_path: Path, gens: list, holds: str) -> None:
    (g1, k1), (g2, k2), (g3, _) = gens
    # As bundle_pem builds it after an activation and a second rotation: active (g2) with its
    # cross-certificate from g1, retiring (g1) with oldWithNew from g2, prepared (g3) with its own.
    pem = _pem(g2, _cross(g2, g1, k1), g1, _cross(g1, g2, k2), g3, _cross(g3, g2, k2))
    state = _pinned(tmp_path, g1 if holds == "only the retiring CA" else g2)
    assert refresh_bundle(state, pem, NOW, 0) is not None
    assert trusted_now(state, NOW) == [g2, g1, g3]


@pytest.mark.parametrize("forgery", ["the stranger's signature", "for another CA's key"])
def test_a_forged_cross_certificate_is_refused(tmp_path: Path, gens: list, forgery: str) -> None:
    (g1, _), (g2, _), _ = gens
    stranger, stranger_key = _ca()
    state = _pinned(tmp_path, g1)
    if forgery == "the stranger's signature":
        # Issuer name and key identifiers copied from the trusted CA; the signature is the stranger's.
        forged = cabundle.cross_builder(g2, g1, 7, NOW).sign(stranger_key, hashes.SHA256())
    else:
        forged = _cross(stranger, g1, gens[0][1])  # signed by the trusted CA, but for the stranger's key
    assert refresh_bundle(state, _pem(g1, g2, forged), NOW, 0) is None
    assert not bundle_path(state).exists() and trusted_now(state, NOW) == [g1]


def test_a_stale_stored_bundle_falls_back_to_the_pinned_ca(
    tmp_path: Path, gens: list, caplog: pytest.LogCaptureFixture
) -> None:
    (g1, k1), (g2, _), _ = gens
    short, _ = _ca(days=1)
    state = _pinned(tmp_path, g1)
    # A CA appended by hand (no cross-certificate): the stored file no longer verifies.
    state.trust_bundle.write_text(_pem(g1, g2, _cross(g2, g1, k1), short))
    with caplog.at_level(logging.WARNING, logger="agent.state"):
        assert trusted_now(state, NOW) == [g1]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"trusting only the pinned CA: {state.trust_bundle} does not verify (CA ")
    # A retiring CA that expired before the server retired it (its oldWithNew cross-certificate
    # ends with it): left out, the rest still verifies, no line.
    caplog.clear()
    state.trust_bundle.write_text(_pem(g1, short, _cross(short, g1, k1)))
    assert trusted_now(state, NOW) == [g1, short]
    with caplog.at_level(logging.WARNING, logger="agent.state"):
        assert trusted_now(state, NOW + timedelta(days=2)) == [g1]
    assert caplog.records == []


def test_enrollment_verifies_the_server_s_bundle_from_the_pin(gens: list) -> None:
    (g1, k1), (g2, k2), _ = gens
    # After an activation: the token's pin (g1) is the retiring CA, vouched for by the active one.
    after = _pem(g2, _cross(g2, g1, k1), g1, _cross(g1, g2, k2))
    assert _trust_from_pin("h:1", after, _fp(g1), NOW) == (g1, [g2, g1])
    assert _trust_from_pin("h:1", after, _fp(g2), NOW) == (g2, [g2, g1])


@pytest.mark.parametrize("case", ["pin not in the bundle", "a CA that does not verify"])
def test_enrollment_refuses_a_bundle_without_the_pin_or_with_an_unverified_ca(gens: list, case: str) -> None:
    (g1, k1), (g2, _), (g3, _) = gens
    if case == "pin not in the bundle":  # the pinned CA retired, or a wrong fingerprint
        pem, needle = (
            _pem(g2, g3),
            f"the server's trust bundle at h:1 (CAs {_fp(g2)}, {_fp(g3)}) does not match",
        )
    else:  # g3 rides along without a cross-certificate
        pem, needle = _pem(g1, g2, _cross(g2, g1, k1), g3), "does not verify from the CA of --ca-fingerprint"
    with pytest.raises(Unauthenticated) as err:
        _trust_from_pin("h:1", pem, _fp(g1), NOW)
    message = err.value.message
    assert needle in message and f"--ca-fingerprint {_fp(g1)}" in message and "\n" not in message
    assert message.endswith("the join token was not sent") and "kms-server ca status" in message
