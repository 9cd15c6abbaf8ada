"""What a replica does with a retired CA generation (issue 19 §1), on both backends, with real
certificates: it never trusts it, not even when it still issues with it (then it refuses to
issue); the retired generation answers OCSP and signs its CRL until its last certificate expires;
only generation N-1 vouches for generation N; a store read that fails on a 'bundle' event is
retried until one succeeds."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp

from kms import cabundle
from kms.errors import StoreDown, Unavailable
from server.ca.authority import CertificateAuthority, create_root, software_root
from server.ca.crl import CrlPublisher
from server.ca.ocsp import OcspResponder
from server.ca.rotation import CARotation
from server.ca.signer import CARoot
from server.ca.trust import CATrust
from server.deployment.sealing import Sealer
from server.store import RevocationEvent, Store
from tests.unit.server.conftest import run_with_store
from tests.unit.server.test_ca_activation import (
    NOW,
    SEALER,
    SHA1,
    TD,
    TTL,
    URLS,
    Replica,
    _issue,
    _replica,
    _request,
)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _root() -> CARoot:
    return software_root(create_root(TD, None, TTL, NOW))


async def _blind_replica(store: Any, root: CARoot) -> Replica:
    """A replica whose master key differs: the sealed keys of later generations do not open here
    (as a token that cannot be reached)."""
    ca = CertificateAuthority(CARoot(root.cert, root.signer), TD, timedelta(hours=1), lambda: NOW, URLS)
    sealer = Sealer(bytes(range(1, 33)))
    trust = CATrust(store, ca, sealer)
    trust.retry_first = trust.retry_max = 0.01
    events: list[RevocationEvent] = []
    rotation = CARotation(store, ca, trust, sealer, lambda: NOW, TTL, None, events.append)
    await rotation.adopt()
    return Replica(store, ca, trust, rotation, events)


@pytest.mark.parametrize("revoke_old", [True, False])
def test_a_replica_that_cannot_open_the_active_key_refuses_to_issue(
    store_at: tuple[str, str], key: rsa.RSAPrivateKey, revoke_old: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """ca rotate --now (--revoke-old) on A; B cannot open generation 2's key: B issues nothing
    (UNAVAILABLE, saying why and what to do) and, with --revoke-old, no longer trusts generation 1."""

    async def body(store: Store) -> None:
        root = _root()
        a = await _replica(store, root)
        b = await _blind_replica(store, root)
        await a.rotation.rotate(None, at_once=True, revoke_old=revoke_old)
        with caplog.at_level(logging.ERROR):
            for event in a.published:
                b.trust.published(event)
            async with asyncio.timeout(10):
                while b.ca.refusing is None:
                    await asyncio.sleep(0.01)
        new = a.ca.certificate
        assert b.ca.generation == 1  # not followed: its key does not open here
        with pytest.raises(Unavailable, match="cannot open the active CA's key \\(generation 2\\)"):
            await b.ca.issue(key.public_key(), "web-1")
        assert any("refusing to issue" in r.getMessage() for r in caplog.records)
        if revoke_old:
            assert b.trust.roots == [new] and root.cert not in b.trust.roots
            assert 1 not in b.trust.issuers  # it signed nothing: no CRL, no OCSP
        else:
            assert b.trust.roots == [root.cert, new]  # retiring: still trusted

    run_with_store(store_at, body)


def test_a_replica_started_after_an_activation_it_cannot_follow_issues_once_the_key_opens(
    store_at: tuple[str, str], key: rsa.RSAPrivateKey
) -> None:
    async def body(store: Store) -> None:
        root = _root()
        a = await _replica(store, root)
        await a.rotation.rotate(None, at_once=True)
        b = await _blind_replica(store, root)  # starts: generation 2's key does not open here
        with pytest.raises(Unavailable, match="cannot open the active CA's key"):
            await b.ca.issue(key.public_key(), "web-1")
        b.trust._sealer = SEALER  # type: ignore[attr-defined]  # the key opens again (the token is back)
        async with asyncio.timeout(10):
            while b.ca.generation != 2:
                await asyncio.sleep(0.01)
        cert, issuer = await b.ca.issue(key.public_key(), "web-1")
        assert issuer.generation == 2 and b.ca.refusing is None

    run_with_store(store_at, body)


def test_a_retired_generation_signs_its_crl_until_its_certificates_expire(
    store_at: tuple[str, str], key: rsa.RSAPrivateKey
) -> None:
    """After --revoke-old, generation 1 (retired) still answers OCSP for its certificates (revoked,
    cACompromise) and its CRL is still /crl, signed with its own key; once they have expired it
    signs nothing and /crl is the active generation's."""

    async def body(store: Store) -> None:
        now = [NOW]
        root = _root()
        ca = CertificateAuthority(root, TD, timedelta(hours=1), lambda: now[0], URLS)
        trust = CATrust(store, ca, SEALER)
        events: list[RevocationEvent] = []
        rotation = CARotation(store, ca, trust, SEALER, lambda: now[0], TTL, None, events.append)
        r = Replica(store, ca, trust, rotation, events)
        await r.rotation.adopt()
        leaf = await _issue(r, key, "web-1")  # one hour
        await r.rotation.rotate(None, at_once=True, revoke_old=True)
        assert r.trust.roots == [r.ca.certificate] and set(r.trust.issuers) == {1, 2}
        responder = OcspResponder(r.ca, store, lambda: now[0], r.trust)
        answer = ocsp.load_der_ocsp_response(await responder.respond(_request(leaf, root.cert, SHA1)))
        assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
        assert answer.revocation_reason is x509.ReasonFlags.ca_compromise
        crls = CrlPublisher(r.ca, store, lambda: now[0], trust=r.trust)
        crl = x509.load_der_x509_crl(await crls.current())
        assert crl.is_signature_valid(root.cert.public_key())  # type: ignore[arg-type]
        assert [c.serial_number for c in crl] == [leaf.serial_number]
        now[0] = NOW + timedelta(hours=2)  # its certificate has expired
        await r.trust.refresh()
        assert set(r.trust.issuers) == {2}
        answer = ocsp.load_der_ocsp_response(await responder.respond(_request(leaf, root.cert, SHA1)))
        assert answer.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED
        crl = x509.load_der_x509_crl(await crls.current())
        assert crl.is_signature_valid(r.ca.certificate.public_key())  # type: ignore[arg-type]

    run_with_store(store_at, body)


def test_only_the_generation_before_vouches(
    store_at: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A row for generation 3 cross-certified by generation 1, retired as compromised (its key may
    be anyone's now), is ignored: generation 3 is verified only through generation 2."""

    async def body(store: Store) -> None:
        root = _root()
        r = await _replica(store, root)
        await r.rotation.rotate(None, at_once=True, revoke_old=True)
        forged = create_root(TD, None, TTL, NOW)
        cross = root.signer.sign_certificate(
            cabundle.cross_builder(forged.cert, root.cert, x509.random_serial_number(), NOW)
        )
        pem = serialization.Encoding.PEM
        sql = (
            "INSERT INTO ca_generations(generation, state, key_type, certificate, cross_certificate, created_at)"
            " VALUES (3, 'prepared', 'ecdsa-p256', ?, ?, 0)"
        )
        args = (forged.cert.public_bytes(pem).decode(), cross.public_bytes(pem).decode())
        await store._change(lambda tx: tx.execute(sql, *args))  # type: ignore[attr-defined]
        with caplog.at_level(logging.ERROR, logger="server.ca.verify"):
            await r.trust.refresh()
        assert [g.generation for g in r.trust.generations] == [1, 2]
        assert forged.cert not in r.trust.roots
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "server.ca.verify"]
        assert len(lines) == 1 and "does not verify from generation 2" in lines[0], lines

    run_with_store(store_at, body)


class _Flaky:
    """The store, whose generations cannot be read the first `failures` times (the database down)."""

    def __init__(self, store: Store, failures: int) -> None:
        self._store, self.failures = store, failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def ca_generations(self, now: int | None) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise StoreDown("the database is unreachable")
        return await self._store.ca_generations(now)


def test_a_failed_read_on_a_bundle_event_is_retried(store_at: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        root = _root()
        a = await _replica(store, root)
        flaky = _Flaky(store, 0)
        b = await _replica(flaky, CARoot(root.cert, root.signer))  # type: ignore[arg-type]
        b.trust.retry_first = 0.01
        await a.rotation.rotate(None, at_once=True)
        flaky.failures = 3
        b.trust.published(a.published[-1])
        async with asyncio.timeout(10):
            while b.ca.generation != 2:
                await asyncio.sleep(0.01)
        assert flaky.failures == 0 and b.trust.roots == a.trust.roots

    run_with_store(store_at, body)
