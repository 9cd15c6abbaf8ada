"""Backup and restore of a data directory.

A backup is a tar file (0600) of a consistent store snapshot, the CA and
server certificates and their keys *sealed* under the master key. The master
key itself is never in it, so a backup alone reveals no key material;
restoring needs the master key from wherever the operator keeps it. When the
CA key is in a PKCS#11 token (--ca-key), there is no ca.key to back up: the
token's own backup keeps the key, and the backup holds only the CA certificate.
The store records that (meta ca_key = "pkcs11", set by deployment.py), so a
backup without ca.key is accepted only when its own store says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import sqlite3
import tarfile
import tempfile
from pathlib import Path

from kms.errors import FailedPrecondition, InvalidArgument
from kms.securefile import atomic_output, ensure_private_dir, write_atomic
from server.deployment.datadir import DataDir, DataDirError
from server.deployment.sealing import Sealer
from server.store import Store

__all__ = ["backup", "check_restorable", "read_backup", "restore", "restore_replacing"]

_FILES = ("ca.crt", "ca.key", "server.crt", "server.key")
_DB = "kms.db"
_CA_KEY = "ca.key"
_MAX_MEMBER = 1 << 34  # 16 GiB: a sanity bound, not a product limit


async def backup(store: Store, datadir: DataDir, target: Path) -> int:
    """Writes the backup tar to target atomically; returns its size."""
    if not target.is_absolute():
        raise InvalidArgument("the backup path must be absolute")
    if not target.parent.is_dir():
        raise InvalidArgument(f"cannot write {target}: the directory {target.parent} does not exist")
    with tempfile.TemporaryDirectory(dir=datadir.path) as tmp:
        snapshot = Path(tmp) / _DB
        await store.snapshot_to(snapshot)
        with atomic_output(target, mode=0o600) as f, tarfile.open(fileobj=f, mode="w") as tar:
            tar.add(snapshot, arcname=_DB)
            for name in _FILES:
                if name != _CA_KEY or (datadir.path / name).exists():  # none when the key is in a token
                    tar.add(datadir.path / name, arcname=name)
    return target.stat().st_size


def read_backup(source: Path) -> dict[str, bytes]:
    """The files of a backup, by name. Raises InvalidArgument when it is not one."""
    try:
        with tarfile.open(source, mode="r") as tar:
            members = {m.name: m for m in tar.getmembers()}
            expected = {_DB, *_FILES} - ({_CA_KEY} if _CA_KEY not in members else set())  # in a token
            if set(members) != expected or any(
                not m.isfile() or m.size > _MAX_MEMBER for m in members.values()
            ):
                raise InvalidArgument(f"{source} is not a kms-server backup")
            contents = {name: _read(tar, members[name]) for name in expected}
        if _CA_KEY not in contents and not _ca_key_in_token(contents[_DB]):
            raise InvalidArgument(
                f"{source} is not a whole kms-server backup: ca.key is missing, and its deployment's CA key "
                "is not in a PKCS#11 token"
            )
    except OSError as exc:
        raise InvalidArgument(f"cannot read backup {source}: {exc.strerror or exc}") from None
    except tarfile.TarError:  # tarfile's own text lists every compression it tried: one line is enough
        raise InvalidArgument(
            f"{source} is not a kms-server backup (not a tar archive; kms-server backup writes one)"
        ) from None
    return contents


def _ca_key_in_token(db: bytes) -> bool:
    """Whether the backup's store says its CA key is in a token (deployment.py records it)."""
    try:
        with contextlib.closing(sqlite3.connect(":memory:")) as conn:
            # Header bytes 18-19 say WAL (2), which an in-memory copy cannot use: read it as rollback (1).
            conn.deserialize(db[:18] + b"\x01\x01" + db[20:] if db[18:20] == b"\x02\x02" else db)
            row = conn.execute("SELECT value FROM meta WHERE key = 'ca_key'").fetchone()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == "pkcs11"


def check_restorable(source: Path, data_dir: Path) -> None:
    """What restoring source into the non-empty data_dir would refuse, checked before anyone is
    asked to confirm it: a file that is not a backup, a server running on data_dir."""
    read_backup(source)
    _refuse_running(data_dir)


def restore(source: Path, data_dir: Path, master_key_file: Path) -> None:
    """Unpacks a backup into an empty data dir with the given master key, after checking they match."""
    if data_dir.exists() and any(data_dir.iterdir()):
        raise FailedPrecondition(f"{data_dir} is not empty: restore into a new directory")
    try:
        master = master_key_file.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read master key {master_key_file}: {exc.strerror}") from None
    contents = read_backup(source)
    ensure_private_dir(data_dir)
    target = DataDir(data_dir)
    write_atomic(target.master_key, master, mode=0o600)
    for name, data in contents.items():
        write_atomic(data_dir / name, data, mode=0o644 if name.endswith(".crt") else 0o600)
    try:
        # Both sealed keys must open with this master key, or the restore is refused.
        sealer = Sealer(target.load_master_key())
        if _CA_KEY in contents:
            target.load_pair(target.ca_cert, target.ca_key, sealer)
        target.load_pair(target.server_cert, target.server_key, sealer)
    except (DataDirError, ValueError) as exc:
        for name in (*contents, "master.key"):
            (data_dir / name).unlink(missing_ok=True)
        message = exc.message if isinstance(exc, DataDirError) else str(exc)
        raise FailedPrecondition(f"the master key does not open this backup: {message}") from None


def _refuse_running(data_dir: Path) -> None:
    """A server running on data_dir holds its kms.lock (DataDir.prepare): then nothing is touched."""
    lock_path = data_dir / "kms.lock"
    if not lock_path.exists():
        return
    with lock_path.open("ab") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FailedPrecondition(
                f"a kms-server is running with data dir {data_dir}: stop it before restoring into it"
            ) from None


def restore_replacing(source: Path, data_dir: Path, master_key_file: Path, aside: Path) -> None:
    """Restores into a non-empty data dir: its contents move to ``aside`` first, and back if it fails.

    Nothing is deleted: the former deployment stays whole in ``aside`` for the operator.
    """
    if aside.exists():
        raise FailedPrecondition(f"{aside} exists already: move it away, then restore again")
    _refuse_running(data_dir)
    data_dir.rename(aside)
    try:
        restore(source, data_dir, master_key_file)
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)  # only what this restore made: the old data is aside
        aside.rename(data_dir)
        raise


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    if f is None:
        raise InvalidArgument("backup member is not a file")
    with f:
        return f.read()
