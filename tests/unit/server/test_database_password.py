"""The database password outside the command line: --database-password-file, PGPASSFILE, PGPASSWORD."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kms.errors import InvalidArgument
from server.config import ServerConfig
from server.database_url import url_has_password, url_holds_secret
from server.store import StoreError
from server.store.postgres import PostgresStore, read_password_file
from tests.pg import PostgresCluster

PASSWORD = "unit-Pa55"  # noqa: S105 - a test role's password, in a throwaway cluster


@pytest.mark.parametrize(
    ("url", "password", "secret"),
    [
        ("postgresql://kms@db/kms", False, False),
        ("postgresql://kms:pw@db/kms", True, True),
        ("postgresql://kms:p%40w@h1:5432,h2:5432/kms", True, True),
        ("postgresql://kms@db/kms?password=pw&sslmode=require", True, True),
        ("postgresql://kms@db/kms?sslmode=require&sslpassword=pw", False, True),
        ("postgresql:///kms?host=/run/postgresql", False, False),
    ],
    ids=["none", "userinfo", "multi-host", "query", "sslpassword", "socket"],
)
def test_passwords_in_urls_are_found(url: str, password: bool, secret: bool) -> None:
    assert (url_has_password(url), url_holds_secret(url)) == (password, secret)


def test_the_password_file_setting_and_its_contradictions(tmp_path: Path) -> None:
    env = {"KMS_DATABASE": "postgresql://kms@db/kms", "KMS_DATABASE_PASSWORD_FILE": str(tmp_path / "pw")}
    cfg = ServerConfig.load({"data_dir": str(tmp_path)}, env=env)
    assert cfg.database_password_file == tmp_path / "pw"
    assert cfg.to_dict()["database_password_file"] == str(tmp_path / "pw")
    from_file = ServerConfig.load(
        {"data_dir": str(tmp_path)},
        env={},
        file={"database": "postgresql://kms@db/kms", "database_password_file": "/etc/seed-kms/db.password"},
    )
    assert from_file.database_password_file == Path("/etc/seed-kms/db.password")
    with pytest.raises(InvalidArgument, match="embedded SQLite store has none"):
        ServerConfig.load({"data_dir": str(tmp_path), "database_password_file": "pw"}, env={})
    with pytest.raises(InvalidArgument, match="in one place") as caught:
        ServerConfig.load(
            {
                "data_dir": str(tmp_path),
                "database": "postgresql://kms:hunter2@db/kms",
                "database_password_file": "pw",
            },
            env={},
        )
    assert "hunter2" not in caught.value.message


@pytest.mark.parametrize(
    ("content", "mode", "error"),
    [
        (b"pw\n", 0o600, None),
        (b"pw\r\nsecond line ignored\n", 0o400, None),
        (b"pw\n", 0o640, r"readable by others \(mode 0640\): chmod 600 it"),
        (b"\n", 0o600, "is empty"),
        (b"\xff\xfe", 0o600, "not UTF-8"),
    ],
    ids=["plain", "first-line", "group-readable", "empty", "binary"],
)
def test_the_password_file_is_read_like_the_master_key(
    tmp_path: Path, content: bytes, mode: int, error: str | None
) -> None:
    path = tmp_path / "pw"
    path.write_bytes(content)
    path.chmod(mode)
    if error is None:
        assert read_password_file(path) == "pw"
        return
    with pytest.raises(StoreError, match=error) as caught:
        read_password_file(path)
    assert "pw" not in caught.value.message.replace(str(path), "")
    with pytest.raises(StoreError, match="No such file"):
        read_password_file(tmp_path / "missing")


def test_each_way_of_giving_the_password_reaches_the_database(
    pg_cluster: PostgresCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pg_cluster.password_database("kms_unit_pw", PASSWORD)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))

    async def opens(**kwargs: Path) -> bool:
        try:
            store = await PostgresStore.open(url, **kwargs)
        except StoreError as exc:
            assert "password authentication failed" in exc.message
            return False
        await store.close()
        return True

    file = tmp_path / "db.password"
    file.write_text(PASSWORD + "\n")
    file.chmod(0o600)
    assert not asyncio.run(opens())
    assert asyncio.run(opens(password_file=file))
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_cluster.port}:kms_unit_pw_db:kms_unit_pw:{PASSWORD}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    assert asyncio.run(opens())
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    assert asyncio.run(opens())
