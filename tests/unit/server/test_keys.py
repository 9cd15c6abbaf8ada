"""server/keys.py over a real SQLite store: grants, versions, and sealed rows bound to their slot."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kms.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from kms.wrap import unwrap
from server.deployment.sealing import Sealer, SealError
from server.endpoints.authn import Caller
from server.keys import KeyService
from server.store import SqliteStore

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _caller(key: rsa.RSAPrivateKey, name: str = "web-1", groups: tuple[str, ...] = ("web",)) -> Caller:
    return Caller(name, groups, "abc123", f"spiffe://t/agent/{name}", NOW, NOW, key.public_key())


def _run(tmp_path: Path, body):  # type: ignore[no-untyped-def]
    async def main() -> object:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            return await body(
                KeyService(store, Sealer(bytes(range(32))), lambda: NOW, publish=lambda event: None)
            )
        finally:
            await store.close()

    return asyncio.run(main())


def test_grants_by_agent_and_group_and_versions(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    async def body(keys: KeyService) -> None:
        await keys.create("app", ["group:web"])
        got = await keys.fetch(_caller(rsa_key), "app", 0)
        v1 = unwrap(rsa_key, got.wrapped, "app", 1, "abc123")
        with pytest.raises(PermissionDenied):
            await keys.fetch(_caller(rsa_key, "db-1", ("db",)), "app", 0)
        granted = await keys.grant("app", "agent:db-1", allow_unknown_grantee=True)
        assert granted.warnings and "db-1" in granted.warnings[0]
        assert (await keys.fetch(_caller(rsa_key, "db-1", ("db",)), "app", 0)).version.version == 1
        await keys.rotate("app")
        # A rotated-out version decrypts only (KMIP Deactivated): refused for encryption, given for
        # decryption, and to an agent from before purposes (it decrypts under named versions).
        with pytest.raises(
            FailedPrecondition, match="version 1 of key 'app' is deactivated: it decrypts only"
        ):
            await keys.fetch(_caller(rsa_key), "app", 1)
        assert (await keys.fetch(_caller(rsa_key), "app", 1, legacy=True)).version.version == 1
        again = await keys.fetch(_caller(rsa_key), "app", 1, decrypt=True)
        assert unwrap(rsa_key, again.wrapped, "app", 1, "abc123") == v1
        assert (await keys.fetch(_caller(rsa_key), "app", 0)).version.version == 2
        with pytest.raises(NotFound):
            await keys.fetch(_caller(rsa_key), "app", 3)
        with pytest.raises(InvalidArgument):
            await keys.fetch(_caller(rsa_key), "app", -1)
        await keys.destroy("app", 1)
        with pytest.raises(FailedPrecondition):
            await keys.fetch(_caller(rsa_key), "app", 1)

    _run(tmp_path, body)


def test_a_grant_to_an_unknown_agent_needs_the_flag_and_warns(tmp_path: Path) -> None:
    """A typo in agent:NAME must not silently grant the key to whoever enrolls as NAME later."""

    async def body(keys: KeyService) -> None:
        with pytest.raises(NotFound, match="allow-unknown-grantee"):
            await keys.create("app", ["group:nobody-yet", "agent:nobody"])
        assert await keys.list() == []  # refused before anything was written
        created = await keys.create("app", ["group:nobody-yet"])  # groups may be empty
        assert created.warnings == ()
        with pytest.raises(NotFound, match="no agent named 'nobody'"):
            await keys.grant("app", "agent:nobody")
        assert [str(g) for g in (await keys.list())[0].grants] == ["group:nobody-yet"]
        allowed = await keys.grant("app", "agent:nobody", allow_unknown_grantee=True)
        assert len(allowed.warnings) == 1 and "'nobody' is not enrolled" in allowed.warnings[0]

    _run(tmp_path, body)


def test_sealed_material_moved_to_another_row_does_not_open(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    async def setup(keys: KeyService) -> None:
        await keys.create("app", ["group:web"])
        await keys.create("other", ["group:web"])

    _run(tmp_path, setup)
    conn = sqlite3.connect(tmp_path / "kms.db")
    other = conn.execute("SELECT sealed_material FROM key_versions WHERE key_name='other'").fetchone()[0]
    conn.execute("UPDATE key_versions SET sealed_material=? WHERE key_name='app'", (other,))
    conn.commit()
    conn.close()

    async def fetch(keys: KeyService) -> None:
        with pytest.raises(SealError):
            await keys.fetch(_caller(rsa_key), "app", 0)

    _run(tmp_path, fetch)


def test_destroy_reports_an_erasure_a_reader_blocks_and_completes_it_later(tmp_path: Path) -> None:
    sealed: list[bytes] = []

    async def setup(keys: KeyService) -> None:
        await keys.create("app", [])
        await keys.rotate("app")

    _run(tmp_path, setup)
    conn = sqlite3.connect(tmp_path / "kms.db")
    sealed.append(conn.execute("SELECT sealed_material FROM key_versions WHERE version=1").fetchone()[0])
    reader = sqlite3.connect(tmp_path / "kms.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM keys").fetchone()  # an open read transaction pins the WAL

    async def destroy(keys: KeyService) -> None:
        with pytest.raises(FailedPrecondition, match="write-ahead log"):
            await keys.destroy("app", 1)

    _run(tmp_path, destroy)
    reader.execute("COMMIT")
    reader.close()
    conn.close()

    async def reopen(keys: KeyService) -> None:  # the next start finishes the erasure
        listed = await keys.list()
        assert listed[0].versions[0].state == "destroyed"

    _run(tmp_path, reopen)
    for path in tmp_path.glob("kms.db*"):
        assert sealed[0] not in path.read_bytes(), path.name
