"""kms-server init and first start on PostgreSQL: one CA per deployment, the master key never in the database."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from tests.harness import assert_one_line_error, exe, run
from tests.pg import PostgresCluster

pytestmark = pytest.mark.postgresql_only(
    "init against PostgreSQL: the SQLite first start is covered by test_datadir"
)


def _init(
    data_dir: Path, database: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}
    return run(
        [exe("kms-server"), "init", "--data-dir", str(data_dir), "--database", database, *extra],
        env={**base, **(env or {})},
    )


def _meta(database: str) -> dict[str, str]:
    async def read() -> dict[str, str]:
        conn = await asyncpg.connect(database)
        try:
            return {r["key"]: r["value"] for r in await conn.fetch("SELECT key, value FROM meta")}
        finally:
            await conn.close()

    return asyncio.run(read())


def test_replicas_initialising_at_once_make_exactly_one_ca(pg_database: str, tmpdir_short: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(
                lambda i: _init(tmpdir_short / f"r{i}", pg_database, env={"KMS_MASTER_KEY": key}), range(4)
            )
        )
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert sum(r.stdout.startswith("created ") for r in results) == 1
    fingerprints = {r.stdout.split("ca-fingerprint=")[1].strip() for r in results}
    assert len(fingerprints) == 1
    meta = _meta(pg_database)
    # The CA key is in the database only sealed; the master key never is.
    assert "BEGIN" not in meta["ca_key"] and key not in str(meta)
    assert all(not (tmpdir_short / f"r{i}" / "master.key").exists() for i in range(4))


def test_a_replica_needs_the_deployments_master_key(pg_database: str, tmpdir_short: Path) -> None:
    keyfile = tmpdir_short / "master.key"
    first = _init(tmpdir_short / "a", pg_database, "--master-key-file", str(keyfile))
    assert first.returncode == 0 and first.stdout.startswith("created "), first.stderr
    assert keyfile.stat().st_mode & 0o777 == 0o600
    again = _init(tmpdir_short / "b", pg_database, "--master-key-file", str(keyfile))
    assert again.returncode == 0 and again.stdout.startswith("already initialised:"), again.stderr

    missing = _init(tmpdir_short / "c", pg_database)
    assert_one_line_error(missing, 6, "already exists in the database", "--master-key-file")
    wrong = _init(
        tmpdir_short / "d", pg_database, env={"KMS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    )
    assert_one_line_error(wrong, 6, "does not decrypt with KMS_MASTER_KEY")
    garbled = _init(tmpdir_short / "e", pg_database, env={"KMS_MASTER_KEY": "not base64!"})
    assert_one_line_error(garbled, 6, "KMS_MASTER_KEY must be 32 bytes in base64")


def test_an_unreachable_or_wrong_database_is_one_clear_line(
    pg_cluster: PostgresCluster, tmpdir_short: Path
) -> None:
    nodb = _init(tmpdir_short / "a", pg_cluster.url("no_such_database"))
    assert_one_line_error(nodb, 6, "cannot use database")
    scheme = _init(tmpdir_short / "b", "mysql://kms@db/kms")
    assert_one_line_error(scheme, 2, "is not a postgresql:// URL")
