"""server/store, both backends: one name is one identity (token create --replace), and who is a known agent."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import pytest

from kms.errors import FailedPrecondition, PermissionDenied
from server.store import CertificateRecord, JoinTokenRecord, Store
from tests.unit.server.conftest import run_with_store

NOW = 1_800_000_000
T = TypeVar("T")


def _token(token_id: str, name: str = "web-1", *, at: int = NOW) -> JoinTokenRecord:
    return JoinTokenRecord(token_id, b"h" * 32, name, ("web",), at, at + 900)


def _cert(serial: str, name: str = "web-1", *, at: int = NOW) -> CertificateRecord:
    return CertificateRecord(serial, name, at, at + 86400, b"der", at, None)


def _id(n: int) -> str:
    return f"{n:016x}"


def test_a_name_with_a_valid_certificate_needs_replace(store_at: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        await store.add_join_token(_token(_id(1)))
        first = await store.enroll(_id(1), b"h" * 32, NOW + 1, _cert("a1"))
        assert first is not None and first.superseded == ()
        # A second machine cannot be let in beside the first.
        with pytest.raises(FailedPrecondition, match="--replace"):
            await store.add_join_token(_token(_id(2), at=NOW + 2))
        assert await store.get_join_token(_id(2)) is None
        # With --replace: the enrollment revokes the first certificate, in its transaction.
        await store.add_join_token(_token(_id(2), at=NOW + 2), replace=True)
        second = await store.enroll(_id(2), b"h" * 32, NOW + 3, _cert("b2", at=NOW + 3))
        assert second is not None
        assert [(e.kind, e.serial, e.agent_name, e.reason) for e in second.superseded] == [
            ("cert", "a1", "web-1", "superseded")
        ]
        old = await store.get_certificate("a1")
        assert old is not None and old.revoked_at == NOW + 3 and old.revocation_reason == "superseded"
        assert [e.seq for e in await store.events_after(0, 10)] == [second.superseded[0].seq]
        assert [r.serial for r in await store.revoked_certificates()] == ["a1"]
        agent = await store.get_agent("web-1")
        assert agent is not None and agent.latest.serial == "b2" and agent.latest.revoked_at is None

    run_with_store(store_at, body)


def test_a_token_older_than_the_certificate_does_not_enroll_a_twin(store_at: tuple[str, str]) -> None:
    """Two plain tokens made before either enrolled: the second enrollment is refused, and writes nothing."""

    async def body(store: Store) -> None:
        await store.add_join_token(_token(_id(1)))
        await store.add_join_token(_token(_id(2)))
        short = CertificateRecord("a1", "web-1", NOW, NOW + 100, b"der", NOW, None)
        assert await store.enroll(_id(1), b"h" * 32, NOW + 1, short)
        with pytest.raises(FailedPrecondition, match="token create --replace"):
            await store.enroll(_id(2), b"h" * 32, NOW + 2, _cert("b2"))
        token = await store.get_join_token(_id(2))
        assert token is not None and token.used_at is None  # still usable once the name is free
        assert await store.get_certificate("b2") is None
        # An expired certificate does not hold the name.
        assert await store.enroll(_id(2), b"h" * 32, NOW + 100, _cert("b2", at=NOW + 100))

    run_with_store(store_at, body)


def test_racing_plain_enrollments_of_a_new_name_make_one_identity(store_at: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        for n in range(1, 9):
            await store.add_join_token(_token(_id(n), "new-1"))
        results = await asyncio.gather(
            *(store.enroll(_id(n), b"h" * 32, NOW + 1, _cert(f"c{n}", "new-1")) for n in range(1, 9)),
            return_exceptions=True,
        )
        assert sum(not isinstance(r, BaseException) and r is not None for r in results) == 1
        assert all(isinstance(r, FailedPrecondition) for r in results if isinstance(r, BaseException))
        agents = await store.list_agents()
        assert len(agents) == 1

    run_with_store(store_at, body)


def test_a_revoked_name_needs_allow_reenroll_at_token_create(store_at: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        await store.add_join_token(_token(_id(1)))
        await store.add_join_token(_token(_id(9), "web-9"))
        assert await store.enroll(_id(1), b"h" * 32, NOW + 1, _cert("a1"))
        early = _token(_id(2), at=NOW + 1)
        await store.add_join_token(early, replace=True)  # made before the revocation
        await store.revoke_agent("web-1", "keyCompromise", NOW + 2)
        with pytest.raises(FailedPrecondition, match="allow-reenroll"):
            await store.add_join_token(_token(_id(3), at=NOW + 3))
        # A token made before the revocation is still refused when used.
        with pytest.raises(PermissionDenied, match="allow-reenroll"):
            await store.enroll(_id(2), b"h" * 32, NOW + 4, _cert("b2"))
        await store.add_join_token(_token(_id(3), at=NOW + 3), allow_reenroll=True)
        back = await store.enroll(_id(3), b"h" * 32, NOW + 4, _cert("c3"))
        assert back is not None and back.superseded == ()  # nothing valid was left to replace

    run_with_store(store_at, body)


def test_known_agents_are_enrolled_or_expected(store_at: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        assert not await store.is_known_agent("web-1", NOW)
        await store.add_join_token(_token(_id(1)))
        assert await store.is_known_agent("web-1", NOW)  # an unused token names it
        assert not await store.is_known_agent("web-1", NOW + 900)  # ... until it expires
        assert await store.enroll(_id(1), b"h" * 32, NOW + 1, _cert("a1"))
        assert await store.is_known_agent("web-1", NOW + 10**6)  # enrolled: known for good
        assert not await store.is_known_agent("web-2", NOW)

    run_with_store(store_at, body)
