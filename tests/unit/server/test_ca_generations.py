"""CA generations in the store, on both backends (issue 19 §1): the deployment's CA is adopted as
generation 1, once; ca rotate prepares generation 2 (sealed key, cross-certificate, a 'bundle'
event, an audit record); a second rotation is refused, also when two replicas race; the trust
bundle carries both CAs and verifies from the old one."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from kms import cabundle
from kms.errors import FailedPrecondition
from server.ca.authority import CertificateAuthority, create_root, software_root
from server.ca.keytype import CAKeyType
from server.ca.rotation import CARotation
from server.ca.trust import CATrust
from server.deployment.sealing import Sealer
from server.store import RevocationEvent, Store
from server.store.migrations import SQLITE_MIGRATIONS
from tests.unit.server.conftest import open_store_at

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SEALER = Sealer(bytes(range(32)))
TTL = timedelta(days=365)


def _rotation(store: Store, ca: CertificateAuthority, published: list[RevocationEvent]) -> CARotation:
    trust = CATrust(store, ca, SEALER)
    return CARotation(store, ca, trust, SEALER, lambda: NOW, TTL, None, published.append)


def test_adopt_prepare_refuse_and_bundle(store_at: tuple[str, str]) -> None:
    ca = CertificateAuthority(
        software_root(create_root("t", None, TTL, NOW)), "t", timedelta(hours=1), lambda: NOW
    )

    async def body() -> None:
        store = await open_store_at(*store_at)
        other = await open_store_at(*store_at) if store_at[0] == "postgresql" else store
        published: list[RevocationEvent] = []
        try:
            trust = CATrust(store, ca, SEALER)
            rotation = CARotation(store, ca, trust, SEALER, lambda: NOW, TTL, None, published.append)
            await rotation.adopt()
            await rotation.adopt()  # once only
            (first,) = await rotation.generations()
            assert (first.generation, first.state, first.key_type) == (1, "active", "ecdsa-p256")
            assert first.sealed_key is None and first.cross_certificate is None
            assert await rotation.bundle_pem() == ca.bundle_pem.decode()
            # Two replicas race: exactly one prepares, the other is told which is prepared.
            results = await asyncio.gather(
                rotation.rotate(CAKeyType.EC_P384),
                _rotation(other, ca, published).rotate(None),
                return_exceptions=True,
            )
            won = [r for r in results if not isinstance(r, BaseException)]
            lost = [r for r in results if isinstance(r, BaseException)]
            assert len(won) == 1 and len(lost) == 1, results
            assert isinstance(lost[0], FailedPrecondition) and "generation 2 is prepared already" in str(
                lost[0]
            )
            gens = await rotation.generations()
            assert [(g.generation, g.state) for g in gens] == [(1, "active"), (2, "prepared")]
            assert gens[1].sealed_key is not None and SEALER.open("ca.key", gens[1].sealed_key)
            # One 'bundle' event, naming the new CA certificate's serial; and one audit record.
            new = x509.load_pem_x509_certificate(gens[1].certificate.encode())
            assert [(e.kind, e.serial) for e in published] == [("bundle", format(new.serial_number, "x"))]
            assert [e.kind for e in await store.events_after(0, 10)] == ["bundle"]
            assert [r.action for r in await store.audit_after(0, 10)] == ["ca.rotate"]
            with pytest.raises(FailedPrecondition, match="prepared already"):
                await rotation.rotate(None)
            # The bundle: the active CA, the new one, its cross-certificate; it verifies from the old
            # (once this replica heard the 'bundle' event, if the other replica prepared it).
            await trust.refresh()
            bundle = cabundle.parse_bundle(await rotation.bundle_pem())
            assert bundle.cas == (ca.certificate, new) and len(bundle.crosses) == 1
            trusted = cabundle.verify_bundle(bundle, ca.certificate, NOW)
            assert [t.vouched_by for t in trusted] == [None, ca.fingerprint]
        finally:
            if other is not store:
                await other.close()
            await store.close()

    asyncio.run(body())


def test_an_upgraded_store_adopts_its_ca_with_the_certificates_it_signed(tmp_path: Path) -> None:
    """Step 12 on a store at step 11: events keep their seqs, the CA becomes generation 1 at the
    next start, and it is counted as the signer of the valid certificates issued before."""
    conn = sqlite3.connect(tmp_path / "kms.db", isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER)")
    for version, step in enumerate(SQLITE_MIGRATIONS[:11], start=1):
        for statement in step:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
    conn.execute("INSERT INTO agents(name, created_at, updated_at) VALUES ('web-1', 0, 0)")
    late = int((NOW + timedelta(days=1)).timestamp())
    for serial, not_after in (("a1", late), ("b2", late), ("c3", 1)):  # c3 has expired
        conn.execute(
            "INSERT INTO certificates(serial, agent_name, not_before, not_after, der, issued_at, groups_json)"
            " VALUES (?, 'web-1', 0, ?, x'00', 0, '[]')",
            (serial, not_after),
        )
    conn.execute(
        "INSERT INTO events(kind, serial, agent_name, reason, at) VALUES ('cert', 'b2', 'web-1', 'unspecified', 1)"
    )
    conn.execute(
        "UPDATE certificates SET revoked_at = 1, revocation_reason = 'unspecified' WHERE serial = 'b2'"
    )
    conn.close()
    ca = CertificateAuthority(
        software_root(create_root("t", None, TTL, NOW)), "t", timedelta(hours=1), lambda: NOW
    )

    async def body() -> None:
        store = await open_store_at("sqlite", str(tmp_path))
        try:
            assert await store.schema_version() == len(SQLITE_MIGRATIONS) == 12
            rotation = _rotation(store, ca, [])
            await rotation.adopt()
            (first,) = await rotation.generations()
            assert (first.generation, first.state, first.valid_certificates) == (1, "active", 1)
            await rotation.rotate(None)
            assert [(e.seq, e.kind) for e in await store.events_after(0, 10)] == [(1, "cert"), (2, "bundle")]
        finally:
            await store.close()

    asyncio.run(body())


def test_a_server_with_another_ca_cannot_prepare_one(store_at: tuple[str, str]) -> None:
    """A replica started with the wrong CA would prepare a CA no agent can verify, and block the slot."""

    def authority() -> CertificateAuthority:
        return CertificateAuthority(
            software_root(create_root("t", None, TTL, NOW)), "t", timedelta(hours=1), lambda: NOW
        )

    async def body() -> None:
        store = await open_store_at(*store_at)
        published: list[RevocationEvent] = []
        try:
            await _rotation(store, authority(), published).adopt()
            with pytest.raises(FailedPrecondition, match="not the store's active CA"):
                await _rotation(store, authority(), published).rotate(None)
            assert [g.state for g in await store.ca_generations(None)] == ["active"]
            assert published == [] and await store.events_after(0, 10) == []
        finally:
            await store.close()

    asyncio.run(body())


def test_the_bundle_is_read_once_per_bundle_event(tmp_path: Path) -> None:
    """GetCABundle is anonymous: served from memory, the store read again only on a 'bundle' event."""
    ca = CertificateAuthority(
        software_root(create_root("t", None, TTL, NOW)), "t", timedelta(hours=1), lambda: NOW
    )

    async def body() -> None:
        store = await open_store_at("sqlite", str(tmp_path))
        try:
            trust = CATrust(store, ca, SEALER)
            served = CARotation(store, ca, trust, SEALER, lambda: NOW, TTL, None, lambda e: None)
            await served.adopt()
            before = await served.bundle_pem()
            published: list[RevocationEvent] = []
            await _rotation(store, ca, published).rotate(None)  # another replica, say
            assert await served.bundle_pem() == before  # no event heard yet: no read
            trust.published(published[0])  # its 'bundle' event reached this server's feed
            async with asyncio.timeout(10):
                while len(cabundle.parse_bundle(await served.bundle_pem()).cas) != 2:
                    await asyncio.sleep(0.01)
        finally:
            await store.close()

    asyncio.run(body())
