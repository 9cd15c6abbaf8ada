"""The data directory: which files it holds, and reading and writing them safely.

Layout (directory 0700)::

    kms.lock      flock held by the running server (one server per directory)
    master.key    32 random bytes, 0600: seals every other secret
    ca.crt        the root certificate, PEM (public)
    ca.key        the root private key, sealed under the master key, 0600
                  (absent when the CA key is in a PKCS#11 token: --ca-key)
    server.crt    the server's TLS certificate, PEM (public)
    server.key    its private key, sealed under the master key, 0600
    kms.db        the SQLite store (WAL), 0600
    admin.sock    the admin socket, 0600, while the server runs
    hub.sock      the socket between worker processes (--workers N), 0600, while they run
    kms.db.writer the lock each batch of writes to kms.db takes (flock), passed between workers

A replica of a PostgreSQL deployment keeps ca.key and kms.db in the database
instead, and master.key only if it created the deployment (see deployment.py).
"""

from __future__ import annotations

import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kms.errors import FailedPrecondition
from kms.profile import IssuerKey
from kms.securefile import ensure_private_dir, write_atomic
from server.deployment.sealing import MASTER_KEY_BYTES, Sealer, SealError

__all__ = ["DataDir", "DataDirError", "KeyPair", "open_cert", "open_pair", "read_master_key", "seal_key"]

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107


class DataDirError(FailedPrecondition):
    """The data directory cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class KeyPair:
    cert: x509.Certificate
    key: IssuerKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def read_master_key(path: Path, data: bytes) -> bytes:
    """Checks a master key file's mode and length (path is for messages and the mode)."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise DataDirError(f"master key {path} is readable by others (mode {mode:04o}): chmod 600 it")
    if len(data) != MASTER_KEY_BYTES:
        raise DataDirError(f"master key {path} must hold exactly {MASTER_KEY_BYTES} bytes")
    return data


def seal_key(pair: KeyPair, sealer: Sealer, slot: str) -> bytes:
    der_key = pair.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return sealer.seal(slot, der_key)


def open_cert(cert_pem: bytes, cert_name: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise DataDirError(f"{cert_name} is not a PEM certificate: restore it from a backup") from None


def open_pair(
    cert_pem: bytes,
    sealed_key: bytes,
    sealer: Sealer,
    *,
    slot: str,
    cert_name: str,
    key_name: str,
    master_name: str,
) -> KeyPair:
    """A certificate and its sealed private key, checked to belong together."""
    cert = open_cert(cert_pem, cert_name)
    try:
        der_key = sealer.open(slot, sealed_key)
    except SealError:
        raise DataDirError(
            f"{key_name} does not decrypt with {master_name}: wrong master key or a corrupt file"
        ) from None
    # Sealed with AES-GCM under the master key, so made by this server: OpenSSL's RSA consistency
    # check (tens of ms for an RSA CA key at every start) guards against crafted keys only.
    key = serialization.load_der_private_key(der_key, password=None, unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise DataDirError(f"{key_name} holds an unsupported key type")
    if key.public_key() != cert.public_key():
        raise DataDirError(f"{key_name} does not belong to {cert_name}: restore both from the same backup")
    return KeyPair(cert, key)


class DataDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.master_key = path / "master.key"
        self.ca_cert = path / "ca.crt"
        self.ca_key = path / "ca.key"
        self.server_cert = path / "server.crt"
        self.server_key = path / "server.key"
        self.db = path / "kms.db"
        self.admin_socket = path / "admin.sock"
        # Where this server saw the audit chain keyed from: a witness outside the database,
        # so resetting the database's marker to "never keyed" cannot pass unnoticed.
        self.audit_keyed = path / "audit-keyed-from"
        self._lock_path = path / "kms.lock"
        self._lock_file: IO[bytes] | None = None

    # --- lifecycle -----------------------------------------------------------

    def prepare(self, *, lock: bool = True) -> None:
        """Creates the directory 0700 if needed and takes the one-server lock (a worker process
        does not: its supervisor holds it for all of them, server/workers/)."""
        try:
            ensure_private_dir(self.path)
        except OSError as exc:
            raise DataDirError(f"cannot use data dir {self.path}: {exc.strerror}") from exc
        if len(os.fsencode(self.admin_socket)) > _MAX_SOCKET_PATH:
            raise DataDirError(
                f"admin socket path {self.admin_socket} is longer than {_MAX_SOCKET_PATH} bytes: use a shorter --data-dir"
            )
        if not lock:
            return
        try:
            held = open(self._lock_path, "ab")  # noqa: SIM115 - held for the server's life
            fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirError(f"another kms-server is already running with data dir {self.path}") from None
        except OSError as exc:
            raise DataDirError(f"cannot lock {self._lock_path}: {exc.strerror}") from exc
        self._lock_file = held

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @property
    def initialized(self) -> bool:
        return self.master_key.exists() or self.master_key.is_symlink()

    # --- master key ------------------------------------------------------------

    def create_master_key(self) -> bytes:
        key = os.urandom(MASTER_KEY_BYTES)
        write_atomic(self.master_key, key, mode=0o600)
        return key

    def load_master_key(self) -> bytes:
        return read_master_key(self.master_key, self.read(self.master_key))

    # --- key pairs -------------------------------------------------------------

    def save_pair(self, cert_path: Path, key_path: Path, sealer: Sealer, pair: KeyPair) -> None:
        write_atomic(key_path, seal_key(pair, sealer, key_path.name), mode=0o600)
        write_atomic(cert_path, pair.cert_pem, mode=0o644)

    def load_pair(self, cert_path: Path, key_path: Path, sealer: Sealer) -> KeyPair:
        return open_pair(
            self.read(cert_path),
            self.read(key_path),
            sealer,
            slot=key_path.name,
            cert_name=str(cert_path),
            key_name=str(key_path),
            master_name=str(self.master_key),
        )

    def read(self, path: Path) -> bytes:
        """A file of the data dir; a missing one is the one-line "incomplete data dir" error."""
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise DataDirError(
                f"data dir {self.path} is incomplete: {path.name} is missing (restore it, or start over in an empty directory)"
            ) from None
        except OSError as exc:
            raise DataDirError(f"cannot read {path}: {exc.strerror}") from exc
