"""Holds and releases: the state rules (server/store/rules.py), each revocation's state
(server/revocation/states.py), and the store's release transactions (server/store/sql/holds.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kms.errors import FailedPrecondition, Held, Revoked
from server.revocation.states import IN_FORCE, RELEASED, entries
from server.store import CertificateRecord, JoinTokenRecord, RevocationEvent, SqliteStore, rules

NOW = 1_800_000_000
HOLD = "certificateHold"


def _event(seq: int, kind: str, serials: str, reason: str = HOLD) -> RevocationEvent:
    return RevocationEvent(seq, kind, serials, "a", None, None, reason, NOW)


@pytest.mark.parametrize(
    "revoked_at, revoked_for, reason, expected",
    [
        pytest.param(None, None, HOLD, True, id="in-force-held"),
        pytest.param(None, None, "keyCompromise", True, id="in-force-revoked"),
        pytest.param(NOW, HOLD, "keyCompromise", True, id="held-then-final"),
        pytest.param(NOW, HOLD, HOLD, False, id="held-twice"),
        pytest.param(NOW, "superseded", HOLD, False, id="final-then-held"),
        pytest.param(NOW, "superseded", "keyCompromise", False, id="final-stays"),
    ],
)
def test_revocable(revoked_at: int | None, revoked_for: str | None, reason: str, expected: bool) -> None:
    assert rules.revocable(revoked_at, revoked_for, reason) is expected


@pytest.mark.parametrize(
    "reason, released, needle",
    [
        pytest.param("keyCompromise", False, "was revoked (keyCompromise), which is final", id="final"),
        pytest.param(None, False, "is not held: only a hold", id="never-held"),
        pytest.param(None, True, "not held any more", id="released"),
    ],
)
def test_not_held_says_why(reason: str | None, released: bool, needle: str) -> None:
    error = rules.not_held("certificate ab", reason, released=released)
    assert isinstance(error, FailedPrecondition) and needle in error.message


def test_a_held_caller_is_told_to_wait_not_to_enroll() -> None:
    held = rules.caller_revoked("ab", HOLD)
    assert type(held) is Held and "release" in held.message and "enroll again with" not in held.message
    assert type(rules.caller_revoked("ab", "keyCompromise")) is Revoked


@pytest.mark.parametrize(
    "log, active, expected",
    [
        pytest.param([_event(1, "cert", "c1")], False, [(1, IN_FORCE, None)], id="hold-in-force"),
        pytest.param(
            [_event(1, "cert", "c1"), _event(2, "release", "c1", "removeFromCRL")],
            False,
            [(1, RELEASED, 2)],
            id="hold-released",
        ),
        pytest.param(
            [_event(1, "cert", "c1"), _event(2, "release", "c1", "removeFromCRL")], True, [], id="active-only"
        ),
        pytest.param(
            [
                _event(1, "agent", "c1,c2"),
                _event(2, "cert", "c2", "keyCompromise"),
                _event(3, "release", "c1"),
            ],
            False,
            [(1, RELEASED, 3), (2, IN_FORCE, None)],
            id="agent-hold-rest-released-after-a-final-one",
        ),
        pytest.param(
            [_event(1, "agent", "c1"), _event(2, "cert", "c1", "keyCompromise")],
            False,
            [(1, IN_FORCE, None), (2, IN_FORCE, None)],
            id="hold-replaced-by-a-final-one",
        ),
        pytest.param(
            [_event(1, "cert", "c1", "superseded"), _event(2, "rotate", "")],
            False,
            [(1, IN_FORCE, None)],
            id="final-and-no-rotations",
        ),
        pytest.param(
            [_event(1, "cert", "c1"), _event(2, "release", "c1"), _event(3, "cert", "c1")],
            True,
            [(3, IN_FORCE, None)],
            id="held-again",
        ),
    ],
)
def test_entries(
    log: list[RevocationEvent], active: bool, expected: list[tuple[int, str, int | None]]
) -> None:
    assert [(e.event.seq, e.state, e.released_by) for e in entries(log, active=active)] == expected


def _cert(serial: str) -> CertificateRecord:
    return CertificateRecord(serial, "web-1", NOW, NOW + 86400, b"der", NOW, None)


def test_a_release_lifts_exactly_what_the_hold_still_holds(tmp_path: Path) -> None:
    """web-1 holds c1 and c2 (renewed from c1); its hold holds both; c2 revoked for good stays so."""

    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            await store.add_join_token(JoinTokenRecord("00" * 8, b"h" * 32, "web-1", ("a",), NOW, NOW + 900))
            assert await store.enroll("00" * 8, b"h" * 32, NOW + 1, _cert("c1"))
            await store.add_certificate(_cert("c2"), ("a",), renewed_from="c1")
            held = await store.revoke_agent("web-1", HOLD, NOW)
            assert held is not None and held.serials() == ("c1", "c2")
            assert await store.revoke_agent("web-1", HOLD, NOW) is None  # held already
            # keyCompromise of c2 replaces its hold (a hold may end in a final revocation).
            events = await store.revoke_lineage("c2", "keyCompromise", NOW)
            assert [(e.serial, e.reason) for e in events or []] == [("c2", "keyCompromise")]
            with pytest.raises(FailedPrecondition, match="keyCompromise"):
                await store.release_certificate("c2", NOW)
            released = await store.release_agent("web-1", NOW)
            assert released.kind == "release" and released.serials() == ("c1",)
            assert [(c.serial, c.revocation_reason) for c in await store.revoked_certificates()] == [
                ("c2", "keyCompromise")
            ]
            with pytest.raises(FailedPrecondition, match="not held any more"):
                await store.release_agent("web-1", NOW)
            with pytest.raises(FailedPrecondition, match="is not held"):
                await store.release_certificate("c1", NOW)
        finally:
            await store.close()

    asyncio.run(body())


def test_service_holds_closes_streams_and_releases_on_this_replica_and_others(tmp_path: Path) -> None:
    """The revoked map (every call's check) follows holds and releases, here and on a replica that
    reads them from the log; a held identity's open stream ends with Held."""
    from datetime import UTC, datetime

    from server.deployment.sealing import Sealer
    from server.keys import KeyService
    from server.revocation.feed import GuardedStream, RevocationFeed, StreamGuard
    from server.revocation.service import RevocationService

    now = datetime.fromtimestamp(NOW, UTC)

    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            await store.add_join_token(JoinTokenRecord("t1", b"h" * 32, "web-1", (), NOW, NOW + 900))
            assert await store.enroll("t1", b"h" * 32, NOW, _cert("aa"))

            async def service() -> tuple[RevocationService, RevocationFeed, StreamGuard]:
                feed, guard = RevocationFeed(await store.last_seq()), StreamGuard()
                keys = KeyService(store, Sealer(bytes(32)), lambda: now, publish=feed.publish)
                revocations = RevocationService(store, feed, guard, keys, lambda: now)
                await revocations.load()
                return revocations, feed, guard

            (here, feed, guard), (there, _, _) = await service(), await service()
            sub = feed.subscribe(8)
            stream = GuardedStream(asyncio.create_task(asyncio.sleep(60)), "aa", "web-1")
            guard.register(stream)
            held = await here.revoke_certificate("aa", HOLD)
            assert here.revocation_reason("aa") == HOLD
            # Holding the agent, whose only certificate is held already: that hold is the answer.
            again = await here.revoke_agent("web-1", HOLD)
            assert again.already_revoked and again.event.seq == held.event.seq
            with pytest.raises(
                FailedPrecondition,
                match="certificate aa is held on its own: release each with kms-server release cert",
            ):  # the hold is the certificate's
                await here.release_agent("web-1")
            await asyncio.sleep(0.5)  # the close grace
            assert stream.task.cancelled() and type(stream.error()) is Held
            there.apply_remote(held.event)
            assert there.revocation_reason("aa") == HOLD

            released = await here.release_certificate("AA")
            assert released.event.kind == "release" and not here.is_revoked("aa")
            assert [sub.queue.get_nowait().kind for _ in range(2)] == ["cert", "release"]  # type: ignore[union-attr]
            there.apply_remote(released.event)
            assert not there.is_revoked("aa")
            states = [(e.event.seq, e.state) for e in await here.entries()]
            assert states == [(held.event.seq, "released")] and await here.entries(active=True) == []
        finally:
            await store.close()

    asyncio.run(body())
