"""Automatic CA rotation (server/ca/autorotate.py): what is due when (pure), and two replicas on one
store (both backends) stepping at each moment: nothing before the fraction of the CA's life, one
prepared generation at it (audited as ca-rotation), nothing until ca-propagation has passed, then
one activation; the replica that comes second is refused quietly."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from server.ca.authority import CertificateAuthority, create_root, software_root
from server.ca.autorotate import ACTOR, AutoRotation, next_step
from server.ca.rotation import CARotation
from server.ca.trust import CATrust
from server.deployment.sealing import Sealer
from server.store import RevocationEvent, Store
from server.store.sql.cas import CAGeneration
from tests.unit.server.conftest import open_store_at

START = datetime(2026, 1, 1, tzinfo=UTC)
LIFE = timedelta(days=100)
PROPAGATION = timedelta(days=2)


def _generation(number: int, state: str, created_at: datetime, pem: str = "") -> CAGeneration:
    return CAGeneration(
        number, state, "ecdsa-p256", pem, None, None, None, int(created_at.timestamp()), None, None
    )


def test_next_step() -> None:
    cert = create_root("t", None, LIFE, START).cert
    start, life = cert.not_valid_before_utc, cert.not_valid_after_utc - cert.not_valid_before_utc
    active = [_generation(1, "active", START, cert.public_bytes(Encoding.PEM).decode())]
    assert next_step(active, 0.5, PROPAGATION, start) == (None, start + life / 2)
    assert next_step(active, 0.5, PROPAGATION, start + life / 2) == ("prepare", None)
    prepared = [*active, _generation(2, "prepared", start + life / 2)]
    ready = datetime.fromtimestamp(prepared[1].created_at, UTC) + PROPAGATION
    assert next_step(prepared, 0.5, PROPAGATION, ready - timedelta(seconds=1)) == (None, ready)
    assert next_step(prepared, 0.5, PROPAGATION, ready) == ("activate", None)
    assert next_step([], 0.5, PROPAGATION, start) == (None, None)


def test_two_replicas_rotate_once(store_at: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    now = [START]
    root = software_root(create_root("t", None, LIFE, START))

    def replica(store: Store) -> tuple[AutoRotation, CertificateAuthority]:
        ca = CertificateAuthority(root, "t", timedelta(hours=1), lambda: now[0])
        published: list[RevocationEvent] = []
        sealer = Sealer(bytes(range(32)))
        rotation = CARotation(
            store,
            ca,
            CATrust(store, ca, sealer),
            sealer,
            lambda: now[0],
            LIFE,
            None,
            published.append,
            propagation=PROPAGATION,
        )
        return AutoRotation(rotation, 0.5, PROPAGATION, lambda: now[0]), ca

    async def body() -> None:
        store = await open_store_at(*store_at)
        other = await open_store_at(*store_at) if store_at[0] == "postgresql" else store
        try:
            (a, ca_a), (b, ca_b) = replica(store), replica(other)
            await a._rotation.adopt()
            start = root.cert.not_valid_before_utc  # backdated a little by the profile
            life = root.cert.not_valid_after_utc - start
            now[0] = start + life * 0.4
            assert await a.step() == start + life / 2
            assert [g.state for g in await store.ca_generations(None)] == ["active"]
            now[0] = start + life * 0.6
            await asyncio.gather(a.step(), b.step())
            assert [g.state for g in await store.ca_generations(None)] == ["active", "prepared"]
            now[0] += PROPAGATION - timedelta(seconds=1)
            await asyncio.gather(a.step(), b.step())
            assert [g.state for g in await store.ca_generations(None)] == ["active", "prepared"]
            now[0] += timedelta(seconds=1)
            await asyncio.gather(a.step(), b.step())
            assert [g.state for g in await store.ca_generations(None)] == ["retiring", "active"]
            # The replica that activated issues with the new CA (the other follows on the 'bundle' event).
            assert sum(ca.certificate != root.cert for ca in (ca_a, ca_b)) == 1
            audit = [(r.actor, r.action) for r in await store.audit_after(0, 10)]
            assert audit == [(ACTOR, "ca.rotate"), (ACTOR, "ca.activate")]
            # The replica that came second was refused each time, and said nothing of it.
            assert [
                r for r in caplog.records if r.name == "server.ca.autorotate" and r.levelno >= logging.ERROR
            ] == []
        finally:
            if other is not store:
                await other.close()
            await store.close()

    asyncio.run(body())


def test_a_refusal_other_than_a_race_is_logged_once(
    store_at: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A prepared CA whose key this replica cannot use is not a replica racing: an error, once."""
    now = [START]
    root = software_root(create_root("t", None, LIFE, START))

    async def body() -> None:
        store = await open_store_at(*store_at)
        try:
            ca = CertificateAuthority(root, "t", timedelta(hours=1), lambda: now[0])
            sealer = Sealer(bytes(range(32)))
            trust = CATrust(store, ca, sealer)
            rotation = CARotation(store, ca, trust, sealer, lambda: now[0], LIFE, None, lambda e: None)
            auto = AutoRotation(rotation, 0.5, PROPAGATION, lambda: now[0])
            await rotation.adopt()
            pem = create_root("t", None, LIFE, START).cert.public_bytes(Encoding.PEM).decode()
            sql = (
                "INSERT INTO ca_generations(generation, state, key_type, certificate, cross_certificate,"
                " created_at) VALUES (2, 'prepared', 'ecdsa-p256', ?, ?, 0)"
            )
            await store._change(lambda tx: tx.execute(sql, pem, pem))  # type: ignore[attr-defined]
            now[0] = START + PROPAGATION * 2
            with caplog.at_level(logging.ERROR, logger="server.ca.autorotate"):
                assert await auto.step() is None
                assert await auto.step() is None
            errors = [r.getMessage() for r in caplog.records if r.name == "server.ca.autorotate"]
            assert len(errors) == 1 and "could not activate" in errors[0] and "has no key" in errors[0]
        finally:
            await store.close()

    asyncio.run(body())
