"""Key schedules (issue 16 §1): what administrators type, checked on the client and the server,
and the store's set_key_schedule and expiry counts on both backends."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kms.errors import FailedPrecondition, InvalidArgument, KeyExpired, NotFound
from server.cli.key_schedule import parse_expires, schedule_request
from server.cli.key_view import expiry_mark
from server.deployment.sealing import Sealer
from server.endpoints.authn import Caller
from server.keys import KeyService
from server.keys.schedule import MAX_PERIOD, check_expiry, check_period, describe, schedule_change
from server.store import Grant, SqliteStore
from server.store.records import ScheduleChange
from tests.unit.server.conftest import open_store_at

NOW = 1_800_000_000  # 2027-01-15T08:00:00Z
DAY = 86_400


def _seal(version: int) -> bytes:
    return b"sealed-%d" % version


# --- pure: the client's parsing ----------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2027-06-30T00:00:00Z", 1_814_313_600),
        ("2027-06-30T02:00:00+02:00", 1_814_313_600),
        ("2027-06-29T19:00:00-05:00", 1_814_313_600),
        (" 2027-06-30T00:00:00.900Z ", 1_814_313_600),
    ],
    ids=["utc", "east", "west", "fraction-and-spaces"],
)
def test_an_iso_time_with_a_zone_is_read(text: str, expected: int) -> None:
    assert parse_expires(text) == expected


@pytest.mark.parametrize(
    "text, needle",
    [
        ("2027-06-30T00:00:00", "has no time zone"),
        ("2027-06-30", "has no time zone"),
        ("30/06/2027", "not an ISO 8601 time"),
        ("", "not an ISO 8601 time"),
        ("0001-01-01T00:00:00+01:00", "is in the past"),
        ("1969-12-31T23:59:59Z", "is in the past"),
    ],
    ids=["no-zone", "date-only", "not-iso", "empty", "before-year-1-in-utc", "before-1970"],
)
def test_a_time_without_a_zone_or_not_iso_is_refused(text: str, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        parse_expires(text)


def _args(**given: object) -> argparse.Namespace:
    fields = {
        "expires": None,
        "expires_in": None,
        "no_expiry": False,
        "rotate_every": None,
        "no_rotation": False,
    }
    return argparse.Namespace(**{**fields, **given})


@pytest.mark.parametrize(
    "given, expected",
    [
        ({"expires_in": "90d", "rotate_every": "30d"}, (NOW + 90 * DAY, 30 * DAY)),
        ({"expires": "2027-06-30T00:00:00Z"}, (1_814_313_600, None)),
        ({"no_expiry": True, "no_rotation": True}, (0, 0)),
        ({}, (None, None)),
    ],
    ids=["relative", "absolute", "clear-both", "nothing"],
)
def test_the_client_turns_flags_into_the_request(
    given: dict[str, object], expected: tuple[object, ...]
) -> None:
    assert schedule_request(_args(**given), NOW) == expected


@pytest.mark.parametrize(
    "given, needle",
    [
        ({"expires": "2020-01-01T00:00:00Z"}, "in the past"),
        ({"expires_in": "0d"}, "longer than zero"),
        ({"rotate_every": "0s"}, "longer than zero"),
        ({"rotate_every": "-1d"}, "is not a duration"),
        ({"rotate_every": "1 week"}, "is not a duration"),
    ],
    ids=["past", "zero-expiry", "zero-period", "negative-period", "words"],
)
def test_the_client_refuses_what_it_can(given: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        schedule_request(_args(**given), NOW)


@pytest.mark.parametrize(
    "expires_at, mark",
    [
        (0, ""),
        (NOW - 1, "expired"),
        (NOW, "expired"),
        (NOW + 7 * DAY, "expires soon"),
        (NOW + 7 * DAY + 1, ""),
    ],
    ids=["never", "past", "now", "in-7-days", "after-7-days"],
)
def test_keys_expiring_within_7_days_are_marked(expires_at: int, mark: str) -> None:
    assert expiry_mark(expires_at, NOW) == mark


# --- pure: the server's checks -------------------------------------------------------


def test_the_server_checks_expiry_and_period() -> None:
    assert check_expiry(NOW + 1, NOW) == NOW + 1
    assert check_period(3600, 3600) == 3600
    for expires_at in (NOW, NOW - 1, -5, 0):
        with pytest.raises(InvalidArgument, match="not in the future"):
            check_expiry(expires_at, NOW)
    with pytest.raises(InvalidArgument, match="after 9999"):
        check_expiry(10**15, NOW)
    for period, needle in ((0, "longer than zero"), (-1, "longer than zero"), (3599, "minimum of 1h")):
        with pytest.raises(InvalidArgument, match=needle):
            check_period(period, 3600)
    with pytest.raises(InvalidArgument, match="longer than 100 years"):
        check_period(MAX_PERIOD + 1, 1)


def test_set_key_reads_absent_as_unchanged_and_zero_as_none() -> None:
    assert schedule_change(None, 0, NOW, 60) == ScheduleChange(set_rotation=True)
    assert schedule_change(0, None, NOW, 60) == ScheduleChange(set_expiry=True)
    assert schedule_change(NOW + 5, 60, NOW, 60) == ScheduleChange(True, NOW + 5, True, 60)
    with pytest.raises(InvalidArgument, match="nothing to change"):
        schedule_change(None, None, NOW, 60)
    assert (
        describe(ScheduleChange(True, NOW, True, 30 * DAY))
        == "expires_at:2027-01-15T08:00:00Z rotate_every:30d"
    )
    assert describe(ScheduleChange(True, None, True, None)) == "expires_at:never rotate_every:none"


# --- the store, on both backends ---------------------------------------------------------


def test_set_key_schedule_on_the_store(store_at: tuple[str, str]) -> None:
    async def body() -> None:
        store = await open_store_at(*store_at)
        try:
            made = await store.create_key(
                "app", NOW, _seal, [Grant("group", "web")], expires_at=NOW + 90 * DAY, rotate_every=30 * DAY
            )
            assert (made.expires_at, made.rotate_every, made.rotation_due_at) == (
                NOW + 90 * DAY,
                30 * DAY,
                NOW + 30 * DAY,
            )
            plain = await store.create_key("plain", NOW, _seal, [])
            assert (plain.expires_at, plain.rotate_every, plain.rotation_due_at) == (None, None, None)
            # A new period restarts the count from now; the expiry notices given are forgotten
            # only when the expiry changes.
            await store._backend.write(lambda tx: tx.execute("UPDATE keys SET expiry_notices=3"))
            later = NOW + 100
            record = await store.set_key_schedule(
                "app", ScheduleChange(set_rotation=True, rotate_every=7 * DAY), later
            )
            assert (record.rotate_every, record.rotation_due_at, record.expiry_notices) == (
                7 * DAY,
                later + 7 * DAY,
                3,
            )
            same = ScheduleChange(set_expiry=True, expires_at=NOW + 90 * DAY)
            assert (await store.set_key_schedule("app", same, later)).expiry_notices == 3
            record = await store.set_key_schedule("app", ScheduleChange(True, NOW + 5 * DAY), later)
            assert (record.expires_at, record.expiry_notices) == (NOW + 5 * DAY, 0)
            record = await store.set_key_schedule("app", ScheduleChange(set_rotation=True), later)
            assert (record.rotate_every, record.rotation_due_at, record.expires_at) == (
                None,
                None,
                NOW + 5 * DAY,
            )
            assert await store.get_key("app") == record
            assert await store.count_keys_expiring(NOW, (DAY, 7 * DAY)) == (0, 1)
            with pytest.raises(NotFound, match="no key named 'nope'"):
                await store.set_key_schedule("nope", ScheduleChange(set_expiry=True), NOW)
            with pytest.raises(NotFound):
                await store.get_key("nope")
        finally:
            await store.close()

    asyncio.run(body())


def test_an_expired_key_gets_no_new_expiry(store_at: tuple[str, str]) -> None:
    """Expiry is final (KMIP Deactivated): refused with what to do, and nothing changes."""

    async def body() -> None:
        store = await open_store_at(*store_at)
        try:
            await store.create_key("old", NOW, _seal, [], expires_at=NOW + 10, rotate_every=3600)
            after = NOW + 10
            assert await store.count_keys_expiring(after, (DAY,)) == (0,)
            for change in (
                ScheduleChange(set_expiry=True, expires_at=after + DAY),
                ScheduleChange(set_expiry=True),
                ScheduleChange(set_rotation=True, rotate_every=7200),
            ):
                with pytest.raises(FailedPrecondition, match="expiry is final.*create a new key"):
                    await store.set_key_schedule("old", change, after)
            record = await store.get_key("old")
            assert (record.expires_at, record.rotate_every) == (NOW + 10, 3600)
            # Dropping the period of an expired key is allowed: nothing left to rotate.
            record = await store.set_key_schedule("old", ScheduleChange(set_rotation=True), after)
            assert (record.expires_at, record.rotate_every, record.rotation_due_at) == (NOW + 10, None, None)
        finally:
            await store.close()

    asyncio.run(body())


def test_an_expired_key_is_released_for_decryption_only(store_at: tuple[str, str]) -> None:
    """Checked on time inside the release, the cached one too (SQLite): encrypt refused from
    expires_at on, naming it; decrypt of a named version released as before."""

    async def body() -> None:
        store = await open_store_at(*store_at)
        try:
            await store.create_key("app", NOW, _seal, [Grant("group", "web")], expires_at=NOW + 10)

            def release(at: int, version: int | None = None, *, encrypt: bool = True) -> object:
                return store.release_key_version("app", version, "web-1", ("web",), "c1", at, encrypt=encrypt)

            for _ in range(2):  # the second from SQLite's cache
                assert (await release(NOW + 9)).version == 1  # type: ignore[attr-defined]
            for version in (None, 1):
                with pytest.raises(KeyExpired, match="key app expired at 2027-01-15T08:00:10Z") as refused:
                    await release(NOW + 10, version)
                assert refused.value.reason == "key-expired" and refused.value.exit_code == 6
            assert (await release(NOW + 10, 1, encrypt=False)).version == 1  # type: ignore[attr-defined]
            # A later expiry set meanwhile lets it encrypt again (the cache is cleared by the change).
            await store.set_key_schedule(
                "app", ScheduleChange(set_expiry=True, expires_at=NOW + 100), NOW + 5
            )
            assert (await release(NOW + 50)).version == 1  # type: ignore[attr-defined]
        finally:
            await store.close()

    asyncio.run(body())


def test_an_expired_key_makes_no_active_version_and_a_pair_signs_no_more(store_at: tuple[str, str]) -> None:
    """After expiry: `key rotate` is refused (nothing changes); a compromised current version is
    replaced by one that only decrypts; a key pair's private key is not released for any purpose."""

    async def body() -> None:
        store = await open_store_at(*store_at)
        try:
            await store.create_key("app", NOW, _seal, [Grant("group", "web")], expires_at=NOW + 10)
            after = NOW + 10
            with pytest.raises(FailedPrecondition, match="key app expired at .* expiry is final"):
                await store.rotate_key("app", after, _seal)
            assert (await store.get_key("app")).current_version == 1
            await store.revoke_key_version("app", 1, "keyCompromise", after, _seal)
            record = await store.get_key("app")
            assert [(v.version, v.state, v.deactivated_at) for v in record.versions] == [
                (1, "compromised", None),
                (2, "deactivated", after),
            ]
            released = await store.release_key_version(
                "app", 2, "web-1", ("web",), "c1", after, encrypt=False
            )
            assert released.version == 2

            await store.create_key(
                "signer", NOW, _seal, [Grant("group", "web")], key_type="ec-p256", expires_at=after
            )
            for encrypt in (True, False):
                with pytest.raises(KeyExpired, match="its private key is no longer released"):
                    await store.release_key_version(
                        "signer", 1, "web-1", ("web",), "c1", after, encrypt=encrypt, key_pair=True
                    )
        finally:
            await store.close()

    asyncio.run(body())


def test_the_key_service_checks_audits_and_refuses_expired_encryption(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """KeyService over a real store and a clock it is handed: the minimum period, the audit
    records of create and set, and a release refused for encryption once expired (audited)."""
    clock = [datetime.fromtimestamp(NOW, UTC)]

    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        keys = KeyService(
            store, Sealer(bytes(range(32))), lambda: clock[0], lambda e: None, min_rotation_period=60
        )
        caller = Caller(
            "web-1", ("web",), "abc1", "spiffe://t/agent/web-1", clock[0], clock[0], rsa_key.public_key()
        )
        try:
            with pytest.raises(InvalidArgument, match="minimum of 1m"):
                await keys.create("app", ["group:web"], rotate_every=59)
            await keys.create("app", ["group:web"], expires_at=NOW + 30, rotate_every=60)
            record = await keys.set_schedule("app", None, 120)
            assert (record.rotate_every, record.rotation_due_at) == (120, NOW + 120)
            assert (await keys.fetch(caller, "app", 0)).version.version == 1
            with pytest.raises(InvalidArgument, match="names the version"):
                await keys.fetch(caller, "app", 0, decrypt=True)
            clock[0] += timedelta(seconds=30)
            with pytest.raises(KeyExpired, match="expired at 2027-01-15T08:00:30Z"):
                await keys.fetch(caller, "app", 0)
            assert (await keys.fetch(caller, "app", 1, decrypt=True)).version.version == 1
            trail = [(r.action, r.object, r.outcome) for r in await store.audit_after(0, 100)]
            assert ("key.create", "key:app expires_at:2027-01-15T08:00:30Z rotate_every:1m", "ok") in trail
            assert ("key.set", "key:app rotate_every:2m", "ok") in trail
            assert ("key.release", "key:app", "expired") in trail
            assert [a for a, _, _ in trail].count("key.create") == 1  # the refused one wrote nothing
        finally:
            await store.close()

    asyncio.run(body())
