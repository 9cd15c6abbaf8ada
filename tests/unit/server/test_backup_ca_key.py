"""server/deployment/backup.py: a backup without ca.key is whole only when its own store says the
deployment's CA key is in a PKCS#11 token (meta ca_key = "pkcs11")."""

from __future__ import annotations

import io
import sqlite3
import tarfile
from pathlib import Path

import pytest

from kms.errors import InvalidArgument
from server.deployment.backup import read_backup


def _backup(tmp_path: Path, ca_key_meta: str | None) -> Path:
    db = tmp_path / "kms.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")  # as the store keeps it: the snapshot says WAL too
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('trust_domain', 'example.org')")
    if ca_key_meta is not None:
        conn.execute("INSERT INTO meta VALUES ('ca_key', ?)", (ca_key_meta,))
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    target = tmp_path / "backup.tar"
    with tarfile.open(target, "w") as tar:
        tar.add(db, arcname="kms.db")
        for name in ("ca.crt", "server.crt", "server.key"):  # no ca.key
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"data"))
    return target


@pytest.mark.parametrize("meta", [None, "c2VhbGVk"])
def test_a_backup_without_ca_key_of_a_software_ca_is_refused(tmp_path: Path, meta: str | None) -> None:
    with pytest.raises(
        InvalidArgument, match="ca.key is missing, and its deployment's CA key is not in a PKCS#11"
    ):
        read_backup(_backup(tmp_path, meta))


def test_a_backup_without_ca_key_of_a_token_ca_is_whole(tmp_path: Path) -> None:
    assert sorted(read_backup(_backup(tmp_path, "pkcs11"))) == [
        "ca.crt",
        "kms.db",
        "server.crt",
        "server.key",
    ]
