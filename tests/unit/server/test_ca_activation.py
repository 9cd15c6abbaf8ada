"""CA activation on the server side (issue 19 §1), on both backends, with real certificates: OCSP
answers per issuer, retirement, the atomic switch, verified store rows, cancel, and the
oldWithNew cross-certificate signed once."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp

from kms import cabundle, profile
from kms.errors import FailedPrecondition
from server.ca.authority import CertificateAuthority, create_root, software_root
from server.ca.crl import CrlPublisher
from server.ca.issuer import Issuer, make_issuer
from server.ca.ocsp import OcspResponder
from server.ca.retire import CARetirement
from server.ca.rotation import RETIRE_MARGIN, CARotation
from server.ca.signer import CARoot, SoftwareSigner
from server.ca.trust import CATrust
from server.deployment.sealing import Sealer
from server.store import RevocationEvent, Store
from tests.unit.server.conftest import open_store_at, run_with_store

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SEALER = Sealer(bytes(range(32)))
TTL = timedelta(days=365)
TD = "t"
URLS = profile.StatusUrls(crl="http://127.0.0.1:9/crl", ocsp="http://127.0.0.1:9/ocsp")
SHA1 = hashes.SHA1()  # noqa: S303 - RFC 6960 CertID, openssl's default


@dataclass
class Replica:
    store: Store
    ca: CertificateAuthority
    trust: CATrust
    rotation: CARotation
    published: list[RevocationEvent]


def _authority(root: CARoot | None = None) -> CertificateAuthority:
    root = root or software_root(create_root(TD, None, TTL, NOW))
    return CertificateAuthority(root, TD, timedelta(hours=1), lambda: NOW, URLS)


async def _replica(store: Store, root: CARoot, published: list[RevocationEvent] | None = None) -> Replica:
    ca = _authority(root)
    trust = CATrust(store, ca, SEALER)
    events = [] if published is None else published
    rotation = CARotation(store, ca, trust, SEALER, lambda: NOW, TTL, None, events.append)
    await rotation.adopt()
    return Replica(store, ca, trust, rotation, events)


async def _issue(
    r: Replica, key: rsa.RSAPrivateKey, name: str, ttl: timedelta | None = None
) -> x509.Certificate:
    """Issues and records an agent certificate, as enrollment does (the generation from the signature)."""
    cert, issuer = await r.ca.issue(key.public_key(), name)
    generation = issuer.generation
    not_after = int(cert.not_valid_after_utc.timestamp()) if ttl is None else int((NOW + ttl).timestamp())
    der = cert.public_bytes(serialization.Encoding.DER)

    async def body(tx: object) -> None:
        await tx.execute(  # type: ignore[attr-defined]
            "INSERT INTO agents(name, created_at, updated_at) VALUES (?, 0, 0) ON CONFLICT (name) DO NOTHING",
            name,
        )
        await tx.execute(  # type: ignore[attr-defined]
            "INSERT INTO certificates(serial, agent_name, not_before, not_after, der, issued_at, groups_json,"
            " ca_generation) VALUES (?, ?, 0, ?, ?, 0, '[]', ?)",
            format(cert.serial_number, "x"),
            name,
            not_after,
            der,
            generation,
        )

    await r.store._change(body)  # type: ignore[attr-defined]
    return cert


async def _revoke(store: Store, cert: x509.Certificate, reason: str) -> None:
    sql = "UPDATE certificates SET revoked_at = ?, revocation_reason = ? WHERE serial = ?"
    serial = format(cert.serial_number, "x")
    await store._change(lambda tx: tx.execute(sql, int(NOW.timestamp()) - 10, reason, serial))  # type: ignore[attr-defined]


def _request(cert: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()
    return request.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _old_root() -> CARoot:
    return software_root(create_root(TD, None, TTL, NOW))


def test_ocsp_answers_for_each_live_generation_with_its_own_key(
    store_at: tuple[str, str], key: rsa.RSAPrivateKey
) -> None:
    async def body(store: Store) -> None:
        r = await _replica(store, _old_root())
        first = r.ca.certificate
        old_leaf = await _issue(r, key, "web-1")
        await r.rotation.rotate(None)
        await r.rotation.activate(True)
        new = r.ca.certificate
        assert r.ca.generation == 2 and new != first
        new_leaf = await _issue(r, key, "web-2")
        responder = OcspResponder(r.ca, store, lambda: NOW, r.trust)
        for leaf, issuer in ((old_leaf, first), (new_leaf, new)):
            for algorithm in (SHA1, hashes.SHA256()):
                answer = ocsp.load_der_ocsp_response(
                    await responder.respond(_request(leaf, issuer, algorithm))
                )
                assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
                assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
                assert answer.serial_number == leaf.serial_number
                # Signed by that generation's own key, naming it as the responder.
                ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
                assert answer.responder_key_hash == ski
                public = issuer.public_key()
                assert isinstance(public, ec.EllipticCurvePublicKey)
                public.verify(answer.signature, answer.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
        # A certificate named with the other generation as its issuer, or an unknown issuer: unauthorized.
        stranger = _authority().certificate
        for leaf, issuer in ((old_leaf, new), (new_leaf, first), (new_leaf, stranger)):
            answer = ocsp.load_der_ocsp_response(await responder.respond(_request(leaf, issuer, SHA1)))
            assert answer.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED

    run_with_store(store_at, body)


def test_a_retiring_ca_is_retired_once_its_certificates_end(
    store_at: tuple[str, str], key: rsa.RSAPrivateKey
) -> None:
    async def body(store: Store) -> None:
        root = _old_root()
        r = await _replica(store, root)
        first = r.ca.certificate
        held = await _issue(r, key, "web-1", timedelta(hours=2))
        revoked = await _issue(r, key, "web-2", timedelta(hours=3))
        await _issue(r, key, "web-3", timedelta(seconds=-5))  # expired already
        await r.rotation.rotate(None)
        await r.rotation.activate(True)
        retirement = CARetirement(store, lambda: NOW, r.published.append)
        await _revoke(store, held, "certificateHold")  # a hold can be released: still valid
        done = await retirement.check()
        assert done.retired == () and done.next_at == int(
            (NOW + timedelta(hours=3)).timestamp()
        )  # the latest
        assert [g.state for g in await r.rotation.generations()] == ["retiring", "active"]
        assert [g.valid_certificates for g in await r.rotation.generations()] == [2, 0]
        await _revoke(store, held, "keyCompromise")
        await _revoke(store, revoked, "superseded")
        # Two replicas check at once: it is retired once (one event, one audit record).
        other = await open_store_at(*store_at) if store_at[0] == "postgresql" else store
        try:
            results = await asyncio.gather(
                retirement.check(), CARetirement(other, lambda: NOW, r.published.append).check()
            )
        finally:
            if other is not store:
                await other.close()
        assert sum(len(d.retired) for d in results) == 1 and all(d.next_at is None for d in results)
        gens = await r.rotation.generations()
        assert [(g.state, g.retired_at) for g in gens] == [
            ("retired", int(NOW.timestamp())),
            ("active", None),
        ]
        assert [(e.kind, e.reason) for e in r.published][-1] == ("bundle", "retired")
        (record,) = [a for a in await store.audit_after(0, 100) if a.action == "ca.retire"]
        assert record.actor == "ca" and record.object.startswith("ca:1 ")
        # It leaves the trust and the bundle; it still answers OCSP and signs its CRL (at /crl) for
        # the certificates it signed until they expire (RFC 5280), with its own key.
        await r.trust.refresh()
        assert r.trust.roots == [r.ca.certificate] and set(r.trust.issuers) == {1, 2}
        assert cabundle.parse_bundle(await r.rotation.bundle_pem()).cas == (r.ca.certificate,)
        answer = ocsp.load_der_ocsp_response(
            await OcspResponder(r.ca, store, lambda: NOW, r.trust).respond(_request(held, first, SHA1))
        )
        assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
        public = first.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(answer.signature, answer.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
        crls = CrlPublisher(r.ca, store, lambda: NOW, trust=r.trust)
        crl = x509.load_der_x509_crl(await crls.current())  # /crl: still generation 1's
        assert crl.is_signature_valid(first.public_key())  # type: ignore[arg-type]
        assert {c.serial_number for c in crl} == {held.serial_number, revoked.serial_number}
        assert await crls.current(1) == await crls.current()

    run_with_store(store_at, body)


def test_the_timer_retires_at_the_latest_not_after(tmp_path: object, key: rsa.RSAPrivateKey) -> None:
    clock = [NOW]

    async def body(store: Store) -> None:
        r = await _replica(store, _old_root())
        await _issue(r, key, "web-1", timedelta(seconds=1))
        await r.rotation.rotate(None)
        await r.rotation.activate(True)
        retirement = CARetirement(store, lambda: clock[0], r.published.append, poll=timedelta(hours=1))
        task = asyncio.create_task(retirement.run_forever())
        try:
            await asyncio.sleep(0.3)
            assert [g.state for g in await store.ca_generations(None)] == ["retiring", "active"]
            clock[0] = NOW + timedelta(seconds=1)  # the certificate's not_after: no longer valid
            async with asyncio.timeout(10):
                while [g.state for g in await store.ca_generations(None)] != ["retired", "active"]:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()

    run_with_store(("sqlite", str(tmp_path)), body)


class _GatedSigner(SoftwareSigner):
    """A slow signer (signs in a thread) that waits for the test before signing."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        super().__init__(key)
        self.slow = True
        self.entered, self.go = threading.Event(), threading.Event()

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        self.entered.set()
        assert self.go.wait(10)
        return super().sign_certificate(builder)


def test_a_switch_during_a_signature_never_mixes_two_cas(key: rsa.RSAPrivateKey) -> None:
    pair = create_root(TD, None, TTL, NOW)
    assert isinstance(pair.key, ec.EllipticCurvePrivateKey)
    gated = _GatedSigner(pair.key)
    ca = _authority(CARoot(pair.cert, gated))
    new = make_issuer(software_root(create_root(TD, None, TTL, NOW)), 2)

    async def body() -> tuple[x509.Certificate, Issuer]:
        task = asyncio.create_task(ca.issue(key.public_key(), "web-1"))
        while not gated.entered.is_set():
            await asyncio.sleep(0.01)
        ca.switch(new)  # an activation followed while the old CA signs in its thread
        gated.go.set()
        return await task

    cert, issuer = asyncio.run(body())
    assert issuer.generation == 1 and issuer.chain_der == (
        pair.cert.public_bytes(serialization.Encoding.DER),
    )
    cert.verify_directly_issued_by(pair.cert)
    assert ca.generation == 2


def test_a_forged_row_is_ignored_and_logged_once(
    store_at: tuple[str, str], key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(store: Store) -> None:
        r = await _replica(store, _old_root())
        first = r.ca.certificate
        # A CA the store says is active, cross-certified by a CA that is not this deployment's.
        forged = create_root(TD, None, TTL, NOW)
        outsider = _authority()
        cross = outsider.current.cross_certify(forged.cert, NOW)
        from server.deployment.datadir import seal_key

        pem = serialization.Encoding.PEM

        async def insert(tx: object) -> None:
            await tx.execute("UPDATE ca_generations SET state = 'retired' WHERE generation = 1")  # type: ignore[attr-defined]
            await tx.execute(  # type: ignore[attr-defined]
                "INSERT INTO ca_generations(generation, state, key_type, certificate, cross_certificate,"
                " sealed_key, created_at, activated_at) VALUES (2, 'active', 'ecdsa-p256', ?, ?, ?, 0, 0)",
                forged.cert.public_bytes(pem).decode(),
                cross.public_bytes(pem).decode(),
                seal_key(forged, SEALER, "ca.key"),
            )

        await store._change(insert)  # type: ignore[attr-defined]
        with caplog.at_level(logging.ERROR, logger="server.ca.verify"):
            await r.trust.refresh()
            await r.trust.refresh()
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "server.ca.verify"]
        assert len(lines) == 1 and lines[0].startswith("CA generation 2 in the store is ignored"), lines
        # Not followed, not trusted, not in the bundle, no OCSP for it.
        assert r.ca.generation == 1 and r.ca.certificate == first
        assert forged.cert not in r.trust.roots and 2 not in r.trust.issuers
        assert forged.cert.public_bytes(pem).decode() not in await r.rotation.bundle_pem()

    run_with_store(store_at, body)


def test_cancel_removes_the_prepared_ca(store_at: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        r = await _replica(store, _old_root())
        with pytest.raises(FailedPrecondition, match="no CA generation is prepared"):
            await r.rotation.cancel()
        prepared = await r.rotation.rotate(None)
        assert len(r.trust.roots) == 2
        cancelled = await r.rotation.cancel()
        assert cancelled.generation == prepared.generation == 2
        assert [g.state for g in await r.rotation.generations()] == ["active"]
        assert [(e.kind, e.reason) for e in r.published] == [("bundle", ""), ("bundle", "cancelled")]
        assert [a.action for a in await store.audit_after(0, 10)] == ["ca.rotate", "ca.cancel"]
        assert r.trust.roots == [r.ca.certificate]
        assert len(cabundle.parse_bundle(await r.rotation.bundle_pem()).cas) == 1
        with pytest.raises(FailedPrecondition, match="no CA generation is prepared"):
            await r.rotation.cancel()

    run_with_store(store_at, body)


def test_old_with_new_is_signed_once_per_generation(tmp_path: object, key: rsa.RSAPrivateKey) -> None:
    async def body(store: Store) -> None:
        r = await _replica(store, _old_root())
        await _issue(r, key, "late", ttl=timedelta(days=3))  # the old CA's last certificate
        await r.rotation.rotate(None)
        await r.rotation.activate(True)
        first = cabundle.parse_bundle(await r.rotation.bundle_pem())
        again = cabundle.parse_bundle(await r.rotation.bundle_pem())
        assert len(first.crosses) == 2 and first.crosses == again.crosses  # same serials: not re-signed
        # oldWithNew vouches for the old CA only until its last certificate expires (then it is
        # retired), with the margin: not for the rest of its ten years, should a bundle be replayed.
        (old_with_new,) = [
            c
            for c in first.crosses
            if c.subject == c.issuer and c.public_key() == r.trust.own.cert.public_key()
        ]
        assert old_with_new.not_valid_after_utc == NOW + timedelta(days=3) + RETIRE_MARGIN

    run_with_store(("sqlite", str(tmp_path)), body)


def test_two_replicas_follow_one_activation(store_at: tuple[str, str]) -> None:
    """On one PostgreSQL (or SQLite file): one replica activates, the other switches on the event."""

    async def body(store: Store) -> None:
        root = _old_root()
        other_store = await open_store_at(*store_at) if store_at[0] == "postgresql" else store
        try:
            a = await _replica(store, root)
            b = await _replica(other_store, CARoot(root.cert, root.signer))
            await a.rotation.rotate(None)
            await a.rotation.activate(True)
            b.trust.published(a.published[-1])  # the event, as b's follower hears it
            async with asyncio.timeout(10):
                while b.ca.generation != 2:
                    await asyncio.sleep(0.01)
            assert b.ca.certificate == a.ca.certificate
            assert await a.rotation.bundle_pem() == await b.rotation.bundle_pem()
            assert b.trust.roots == a.trust.roots and set(b.trust.issuers) == {1, 2}
        finally:
            if other_store is not store:
                await other_store.close()

    run_with_store(store_at, body)


def test_a_generation_stays_verified_after_the_ca_that_vouched_for_it_expired(
    store_at: tuple[str, str],
) -> None:
    """Rows are checked for where they come from, not for time: the cross-certificate from an
    expired CA (expired with it) still shows the next generation is the deployment's."""

    async def body(store: Store) -> None:
        then = NOW - timedelta(days=5)
        old = create_root(TD, None, timedelta(days=9), NOW - timedelta(days=10))  # expired a day ago
        r = await _replica(store, software_root(old))
        new = create_root(TD, None, TTL, then)
        cross = software_root(old).signer.sign_certificate(
            cabundle.cross_builder(new.cert, old.cert, x509.random_serial_number(), then)
        )
        assert cross.not_valid_after_utc < NOW  # expired with the old CA
        pem = serialization.Encoding.PEM
        sql = (
            "INSERT INTO ca_generations(generation, state, key_type, certificate, cross_certificate, created_at)"
            " VALUES (2, 'prepared', 'ecdsa-p256', ?, ?, 0)"
        )
        args = (new.cert.public_bytes(pem).decode(), cross.public_bytes(pem).decode())
        await store._change(lambda tx: tx.execute(sql, *args))  # type: ignore[attr-defined]
        await r.trust.refresh()
        assert r.trust.roots == [old.cert, new.cert]

    run_with_store(store_at, body)


def test_several_generations_retiring_at_once(tmp_path: object, key: rsa.RSAPrivateKey) -> None:
    async def body(store: Store) -> None:
        r = await _replica(store, _old_root())
        await _issue(r, key, "web-1")
        for _ in range(2):
            await r.rotation.rotate(None)
            await r.rotation.activate(True)
            await _issue(r, key, "web-1")
        assert [g.state for g in await r.rotation.generations()] == ["retiring", "retiring", "active"]
        assert set(r.trust.issuers) == {1, 2, 3} and len(r.trust.roots) == 3
        bundle = cabundle.parse_bundle(await r.rotation.bundle_pem())
        assert len(bundle.cas) == 3
        for pin in bundle.cas:  # an agent pinned to any of them verifies the whole bundle
            assert len(cabundle.verify_bundle(bundle, pin, NOW)) == 3

    run_with_store(("sqlite", str(tmp_path)), body)
