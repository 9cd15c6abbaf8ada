"""CA rotation against what runs at the same time, on both backends: an emergency activation
revokes the generation active when it locked the active row, not one read before; an activation
refuses a prepared generation other than the one checked; a certificate of a retired generation
is not recorded (enrollment, renewal), and the join token stays unused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from kms.errors import FailedPrecondition, Unavailable
from server.ca.authority import CertificateAuthority, create_root, software_root
from server.ca.rotation import CARotation
from server.ca.trust import CATrust
from server.deployment.sealing import Sealer
from server.store import CertificateRecord, JoinTokenRecord, Store
from server.store.sql.ca_compromise import activate_revoking_old
from server.store.sql.cas import NewGeneration
from tests.unit.server.conftest import open_store_at, run_with_store

NOW = datetime(2026, 6, 1, tzinfo=UTC)
T = int(NOW.timestamp())
TTL = timedelta(days=365)
SEALER = Sealer(bytes(range(32)))


def _new_generation() -> NewGeneration:
    """A prepared row as the store sees it (the store checks no signature: CATrust verifies)."""
    pair = create_root("t", None, TTL, NOW)
    pem = pair.cert.public_bytes(Encoding.PEM).decode()
    return NewGeneration("ecdsa-p256", pem, pem, sealed_key=b"sealed")


async def _rotation(store: Store) -> CARotation:
    ca = CertificateAuthority(software_root(create_root("t", None, TTL, NOW)), "t", TTL, lambda: NOW)
    trust = CATrust(store, ca, SEALER)
    rotation = CARotation(store, ca, trust, SEALER, lambda: NOW, TTL, None, lambda e: None)
    await rotation.adopt()
    return rotation


class _Between:
    """A transaction that lets another run its course after its first statement."""

    def __init__(self, tx: Any, other: Callable[[], Awaitable[object]]) -> None:
        self._tx, self._other, self._done = tx, other, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    async def _then(self, result: Any) -> Any:
        if not self._done:
            self._done = True
            task = asyncio.ensure_future(self._other())
            # The other transaction commits now, or waits for a lock this one holds (then: after it).
            await asyncio.wait([task], timeout=1.0)
            self.pending = task
        return result

    async def fetch(self, *args: Any) -> Any:
        return await self._then(await self._tx.fetch(*args))

    async def fetchrow(self, *args: Any) -> Any:
        return await self._then(await self._tx.fetchrow(*args))

    async def fetchval(self, *args: Any) -> Any:
        return await self._then(await self._tx.fetchval(*args))


def test_revoke_old_revokes_the_generation_active_when_it_locks(store_at: tuple[str, str]) -> None:
    """Another replica activates generation 2 and prepares 3 while the emergency activation starts:
    the emergency activation waits for it and then finds nothing prepared (before the fix it read
    generation 1 as the old one, then activated 3 and revoked 1, leaving 2 trusted)."""
    if store_at[0] != "postgresql":
        pytest.skip("SQLite runs one write transaction at a time: no other can commit in between")

    async def body(store: Store) -> None:
        await _rotation(store)
        await store.prepare_ca(_new_generation(), T)
        other = await open_store_at(*store_at)
        outcome: list[object] = []

        async def replica_b() -> None:
            try:
                await other.activate_ca(T, None)
                await other.prepare_ca(_new_generation(), T)
                outcome.append("activated 2, prepared 3")
            except FailedPrecondition as exc:
                outcome.append(exc)

        try:
            between: list[_Between] = []

            def emergency(tx: Any) -> Any:
                between.append(_Between(tx, replica_b))
                return activate_revoking_old(between[0], T)

            await store._change(emergency)  # type: ignore[attr-defined]
            await between[0].pending
        finally:
            await other.close()
        states = [(g.generation, g.state, g.retired_at) for g in await store.ca_generations(None)]
        assert states == [(1, "retired", T), (2, "active", None)], (states, outcome)
        assert isinstance(outcome[0], FailedPrecondition)

    run_with_store(store_at, body)


def test_revoke_old_without_an_active_ca_is_a_failed_precondition(store_at: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        with pytest.raises(FailedPrecondition, match="no active CA"):
            await store.activate_ca_revoking_old(T)

    run_with_store(store_at, body)


def test_activation_refuses_another_prepared_generation(store_at: tuple[str, str]) -> None:
    """ca activate checked generation 2's key, then it was cancelled and prepared again: refused."""

    async def body(store: Store) -> None:
        rotation = await _rotation(store)
        checked = await rotation.rotate(None)
        await store.cancel_ca(T)
        again, _ = await store.prepare_ca(_new_generation(), T)
        assert again.generation == checked.generation and again.certificate != checked.certificate
        expected = (checked.generation, checked.certificate)
        with pytest.raises(FailedPrecondition, match="prepared CA generation changed"):
            await store.activate_ca(T, None, expected=expected)
        with pytest.raises(FailedPrecondition, match="prepared CA generation changed"):
            await store.activate_ca_revoking_old(T, expected=expected)
        assert [g.state for g in await store.ca_generations(None)] == ["active", "prepared"]
        done, _ = await store.activate_ca(T, None, expected=(again.generation, again.certificate))
        assert done.state == "active"

    run_with_store(store_at, body)


def _cert(serial: str, generation: int) -> CertificateRecord:
    return CertificateRecord(serial, "web-1", T - 100, T + 3600, b"der", T, None, ca_generation=generation)


def test_a_certificate_of_a_retired_generation_is_not_recorded(store_at: tuple[str, str]) -> None:
    """Signed with generation 1 before --revoke-old committed: enrollment and renewal refuse it
    (UNAVAILABLE: try again), the token stays unused; generation 2's are recorded."""

    async def body(store: Store) -> None:
        await _rotation(store)
        await store.add_join_token(JoinTokenRecord("00" * 8, b"h" * 32, "web-1", ("a",), T - 200, T + 900))
        assert await store.enroll("00" * 8, b"h" * 32, T, _cert("a1", 1))
        await store.prepare_ca(_new_generation(), T)
        await store.activate_ca_revoking_old(T)
        await store.add_join_token(JoinTokenRecord("11" * 8, b"h" * 32, "web-1", ("a",), T - 200, T + 900))
        with pytest.raises(Unavailable, match="generation 1, which was retired meanwhile.*try again"):
            await store.enroll("11" * 8, b"h" * 32, T, _cert("b1", 1))
        assert (await store.get_join_token("11" * 8)).used_at is None  # type: ignore[union-attr]
        assert await store.get_certificate("b1") is None
        assert await store.enroll("11" * 8, b"h" * 32, T, _cert("b2", 2))
        with pytest.raises(Unavailable, match="retired meanwhile"):
            await store.add_certificate(_cert("b3", 1), ("a",), renewed_from="b2")
        await store.add_certificate(_cert("b4", 2), ("a",), renewed_from="b2")
        assert await store.get_certificate("b4") is not None and await store.get_certificate("b3") is None

    run_with_store(store_at, body)
