"""Emergency CA rotation in the store, on both backends (server/store/sql/ca_compromise.py): in one
transaction the prepared CA becomes active, every valid certificate of the old one (in force or held)
is revoked with cACompromise, each with its event, and the old CA is retired at once; certificates
already expired or revoked for good are left alone, and without a prepared CA nothing changes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from kms.errors import FailedPrecondition
from server.ca.authority import CertificateAuthority, create_root, software_root
from server.ca.rotation import CARotation
from server.ca.trust import CATrust
from server.deployment.sealing import Sealer
from server.store import CertificateRecord, JoinTokenRecord, RevocationEvent, Store
from tests.unit.server.conftest import open_store_at

NOW = datetime(2026, 6, 1, tzinfo=UTC)
T = int(NOW.timestamp())
TTL = timedelta(days=365)


def _cert(serial: str, not_after: int) -> CertificateRecord:
    return CertificateRecord(serial, "web-1", T - 100, not_after, b"der", T - 100, None)


async def _fleet(store: Store) -> None:
    """web-1 holds a1 (valid), a2 (renewed from it, then held), a3 (expired), a4 (superseded)."""
    await store.add_join_token(JoinTokenRecord("00" * 8, b"h" * 32, "web-1", ("a",), T - 200, T + 900))
    assert await store.enroll("00" * 8, b"h" * 32, T - 100, _cert("a1", T + 3600))
    await store.add_certificate(_cert("a2", T + 3600), ("a",), renewed_from="a1")
    await store.add_certificate(_cert("a3", T - 1), ("a",), renewed_from="a1")
    await store.add_certificate(_cert("a4", T + 3600), ("a",), renewed_from="a1")
    assert await store.revoke_certificate("a2", "certificateHold", T - 50)
    assert await store.revoke_certificate("a4", "superseded", T - 50)


def test_activate_revoking_old(store_at: tuple[str, str]) -> None:
    ca = CertificateAuthority(
        software_root(create_root("t", None, TTL, NOW)), "t", timedelta(hours=1), lambda: NOW
    )

    async def body() -> None:
        store = await open_store_at(*store_at)
        published: list[RevocationEvent] = []
        try:
            sealer = Sealer(bytes(range(32)))
            trust = CATrust(store, ca, sealer)
            rotation = CARotation(store, ca, trust, sealer, lambda: NOW, TTL, None, published.append)
            await rotation.adopt()
            await _fleet(store)
            with pytest.raises(FailedPrecondition, match="no CA generation is prepared"):
                await store.activate_ca_revoking_old(T)
            assert [g.state for g in await store.ca_generations(None)] == ["active"]
            await rotation.rotate(None)
            published.clear()
            active = await rotation.activate(True, revoke_old=True)
            assert active.generation == 2
            gens = await store.ca_generations(T)
            assert [(g.generation, g.state, g.retired_at, g.valid_certificates) for g in gens] == [
                (1, "retired", T, 0),
                (2, "active", None, 0),
            ]
            assert [(e.kind, e.reason, e.serial) for e in published[1:-1]] == [
                ("cert", "cACompromise", "a1"),
                ("cert", "cACompromise", "a2"),
            ]
            assert (published[0].kind, published[0].reason) == ("bundle", "activated")
            assert (published[-1].kind, published[-1].reason) == ("bundle", "retired")
            assert [e.seq for e in published] == [
                e.seq for e in await store.events_after(published[0].seq - 1, 10)
            ]
            reasons = {c.serial: c.revocation_reason for c in await store.revoked_certificates()}
            assert reasons == {"a1": "cACompromise", "a2": "cACompromise", "a4": "superseded"}
            assert [r.action for r in await store.audit_after(0, 10)][-1] == "ca.activate.revoke_old"
        finally:
            await store.close()

    asyncio.run(body())
