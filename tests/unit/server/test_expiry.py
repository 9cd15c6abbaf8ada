"""server/ops/expiry.py: the expiry gauges are kept as things change, so a /metrics scrape reads no agents."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from server.app import create_server, initialize
from server.config import ServerConfig
from server.ops.expiry import ExpiringCertificates
from server.store import AgentRecord, CertificateRecord, JoinTokenRecord, RevocationEvent, SqliteStore, Store

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = 86400


class _Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def _counting(store: Store, name: str) -> list[int]:
    """Instruments one method of a real store (the instance's attribute): how often it is called."""
    calls = [0]
    real: Callable[..., Awaitable[Any]] = getattr(store, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await real(*args, **kwargs)

    setattr(store, name, counted)
    return calls


async def _old_count(store: Store, now: int, within: int) -> int:
    """What refresh_metrics computed per scrape before: every agent's newest certificate, read afresh."""
    agents: list[AgentRecord] = await store.list_agents()
    return sum(1 for a in agents if a.latest.revoked_at is None and now < a.latest.not_after <= now + within)


async def _enroll(store: Store, name: str, serial: str, not_after: int) -> CertificateRecord:
    now = int(NOW.timestamp())
    await store.add_join_token(JoinTokenRecord(f"t-{name}", b"h" * 32, name, (), now, now + 900))
    cert = CertificateRecord(serial, name, now, not_after, b"der", now, f"t-{name}")
    assert await store.enroll(f"t-{name}", b"h" * 32, now, cert)
    return cert


def test_the_index_follows_issuance_revocation_and_time_like_a_full_read(tmp_path: Path) -> None:
    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        clock = _Clock()
        try:
            now = int(NOW.timestamp())
            index = ExpiringCertificates(store, clock)
            a = await _enroll(store, "a", "a1", now + DAY // 2)
            await _enroll(store, "b", "b1", now + 3 * DAY)
            await index.load()

            async def agree() -> None:
                t = int(clock.now.timestamp())
                for within in (DAY, 7 * DAY):
                    assert index.count(within) == await _old_count(store, t, within), (clock.now, within)

            await agree()
            c = await _enroll(store, "c", "c1", now + 2 * DAY)  # enrolled while running
            index.issued(c)
            renewed = CertificateRecord("a2", "a", now, now + 10 * DAY, b"der", now + 1, None)
            await store.add_certificate(renewed, (), renewed_from=a.serial)
            index.issued(renewed)
            await agree()
            old = await store.revoke_certificate("a1", "superseded", now)  # not a's newest: no change
            assert old is not None
            index.published(old)
            await agree()
            event = await store.revoke_certificate("c1", "keyCompromise", now)
            assert event is not None
            index.published(event)
            await agree()
            gone = await store.revoke_agent("b", "unspecified", now)
            assert gone is not None
            index.published(gone)
            index.published(RevocationEvent(99, "rotate", None, None, "k", 2, "superseded", now, ()))
            await agree()
            assert (index.count(DAY), index.count(7 * DAY), len(index)) == (0, 0, 1)
            # An enrollment that replaces an agent's certificates: the event names the old ones only.
            replaced = RevocationEvent(100, "agent", "a1,x9", "a", None, None, "superseded", now)
            index.published(replaced)
            assert len(index) == 1
            clock.now = NOW + timedelta(days=4)  # a's renewed certificate comes within 7 days
            await agree()
            assert index.count(7 * DAY) == 1
            clock.now = NOW + timedelta(days=11)  # and then expires
            await agree()
            assert index.count(7 * DAY) == 0
        finally:
            await store.close()

    asyncio.run(body())


def test_a_resync_runs_once_per_interval_in_the_background_and_keeps_changes_made_meanwhile(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            now = int(NOW.timestamp())
            index = ExpiringCertificates(store, lambda: NOW, resync_every=0.2)
            await _enroll(store, "a", "a1", now + DAY // 2)
            await index.load()
            reads = _counting(store, "list_agents")
            # Made through another replica: this server hears of it only by re-reading.
            await _enroll(store, "elsewhere", "e1", now + DAY // 2)
            for _ in range(50):
                index.refresh()
                await asyncio.sleep(0)
            assert reads[0] == 0 and index.count(DAY) == 1  # not stale yet
            await asyncio.sleep(0.25)
            index.refresh()
            late = CertificateRecord("l1", "late", now, now + DAY // 2, b"der", now, None)
            index.issued(late)  # while the re-read is under way
            # Scrapes keep coming while it runs (however long a busy machine makes it): none starts another.
            for _ in range(5000):
                if index.count(DAY) == 3:
                    break
                index.refresh()
                await asyncio.sleep(0.001)
            assert reads[0] == 1
            assert index.count(DAY) == 3  # a, elsewhere (read), late (kept across the re-read)
        finally:
            await store.close()

    asyncio.run(body())


def test_a_metrics_scrape_reads_no_agents(rsa_key: object) -> None:
    """A real server in-process over 3,000 agents: scrapes cost no store read, and the gauges are right."""
    root = Path(tempfile.mkdtemp(prefix="kmsx", dir="/tmp"))  # short: the admin socket's path
    flags: dict[str, str | list[str] | None] = {
        "data_dir": str(root / "d"),
        "listen": "127.0.0.1:0",
        "enroll_listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",
    }
    cfg = ServerConfig.load(flags, env={})
    asyncio.run(initialize(cfg))
    now = int(datetime.now(UTC).timestamp())
    with sqlite3.connect(root / "d" / "kms.db") as db:
        for i in range(3000):  # one in three expires within a day, one in three within a week
            end = now + (DAY // 2, 3 * DAY, 30 * DAY)[i % 3]
            db.execute(
                "INSERT INTO agents(name, created_at, updated_at) VALUES (?, ?, ?)", (f"a-{i}", now, now)
            )
            db.execute(
                "INSERT INTO certificates(serial, agent_name, not_before, not_after, der, issued_at, groups_json)"
                " VALUES (?, ?, ?, ?, x'00', ?, '[]')",
                (format(0x10000 + i, "x"), f"a-{i}", now, end, now),
            )

    async def body() -> tuple[int, list[str]]:
        app = await create_server(cfg)
        try:
            await app.start()
            reads = _counting(app.store, "list_agents")
            url = f"http://{app.http_address}/metrics"
            texts = [
                await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())  # noqa: S310
                for _ in range(20)
            ]
            lines = [line for line in texts[-1].splitlines() if line.startswith("kms_certificates_expiring{")]
            return reads[0], lines
        finally:
            await app.stop()

    try:
        reads, lines = asyncio.run(body())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert reads == 0
    assert sorted(lines) == [
        'kms_certificates_expiring{within="24h"} 1000.0',
        'kms_certificates_expiring{within="7d"} 2000.0',
    ]
