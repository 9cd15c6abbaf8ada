"""A deployment's store, master key, trust domain and CA: created on first start, loaded after.

Embedded (SQLite, the default): everything lives in the data dir, as
datadir.py describes.

Shared (PostgreSQL, several replicas): the CA certificate and its key,
sealed under the master key, live in the database's ``meta`` table, so every
replica serves the same CA (each replica copies the public certificate to
ca.crt in its data dir). The master key never enters the database: each
replica reads it from ``KMS_MASTER_KEY`` (base64), ``--master-key-file``, or
master.key in its data dir. The first start of a deployment runs under a
database-wide lock, so replicas starting at the same moment make exactly
one CA; the others then load it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding

from kms.errors import FailedPrecondition
from kms.identity import fingerprint
from kms.securefile import write_atomic
from server.audit.devices import AuditDevices
from server.audit.trail import AUDIT_CHAIN_KEY_LABEL
from server.ca.authority import (
    check_key_type,
    create_external_root,
    create_root,
    external_root,
    key_type_of,
    load_root,
    software_root,
)
from server.ca.signer import CARoot
from server.clock import Clock, now_seconds
from server.config import ServerConfig
from server.deployment.datadir import (
    DataDir,
    DataDirError,
    open_cert,
    open_pair,
    read_master_key,
    seal_key,
)
from server.deployment.sealing import MASTER_KEY_BYTES, Sealer
from server.store import Store, open_store
from server.store.records import AUDIT_MARKER

if TYPE_CHECKING:
    from server.ca.hsm import (  # imported only with --ca-key: python-pkcs11 is not needed otherwise
        HsmKey,
        PendingKey,
    )

__all__ = ["Deployment", "open_deployment"]

logger = logging.getLogger(__name__)

# The CA's sealing slot: the same name whether the sealed key is a file or a row.
_CA_SLOT = "ca.key"
# The database's ca_key when the CA key is in a PKCS#11 token (it holds no key then).
# The embedded store records it too (meta ca_key), for backups: see backup.py.
_CA_KEY_META = "ca_key"
_IN_TOKEN = "pkcs11"  # noqa: S105 - a marker, not a secret


@dataclass
class Deployment:
    store: Store
    sealer: Sealer
    root: CARoot
    trust_domain: str
    created: bool  # this start made the CA
    # The audit chain's key (derived from the master key, never stored) and the
    # devices that copy each record outside the database; set by open_deployment.
    audit_key: bytes = b""
    devices: AuditDevices | None = None

    async def close(self) -> None:
        """Closes the store, then the audit devices (the store hands them its last records)."""
        await self.store.close()
        if self.devices is not None:
            self.devices.close()


async def open_deployment(
    cfg: ServerConfig, datadir: DataDir, clock: Clock, hsm: HsmKey | PendingKey | None = None
) -> Deployment:
    """Opens the store and the CA, making them on first start. The caller holds the data dir lock.

    With hsm (--ca-key pkcs11:...), the CA key is that token key: only its certificate is kept. A
    PendingKey (kms-server init, the token lacks the key) is generated only for a new deployment,
    after every check; an existing deployment needs the key there.

    Raises:
        FailedPrecondition: a missing, wrong or mismatched master key, store or CA.
    """
    # Before anything is made: a device that cannot be opened stops the start.
    devices = AuditDevices(cfg.audit_file, cfg.audit_syslog)
    try:
        store = await open_store(
            cfg.database, datadir.db, password_file=cfg.database_password_file, workers=cfg.workers
        )
    except BaseException:
        devices.close()
        raise
    try:
        if cfg.database is None:
            deployment = await _embedded(cfg, datadir, store, clock, hsm)
        else:
            async with store.exclusive():
                deployment = await _shared(cfg, datadir, store, clock, hsm)
        deployment.devices = devices
        deployment.audit_key = deployment.sealer.subkey(AUDIT_CHAIN_KEY_LABEL)
        await _key_audit_chain(deployment, datadir, now_seconds(clock))
        return deployment
    except BaseException:
        await store.close()
        devices.close()
        raise


async def _key_audit_chain(deployment: Deployment, datadir: DataDir, now: int) -> None:
    store = deployment.store
    await _check_audit_file(deployment)
    pending = await store.get_meta(AUDIT_MARKER) == "pending"
    witness = _audit_witness(datadir)
    if pending and witness is not None:
        # The database says its chain was never keyed, yet this server saw it keyed: keying
        # it again from the end would bless a trail rewritten with plain hashes.
        raise FailedPrecondition(
            f"the database says its audit trail was never keyed, but this server saw it keyed from record "
            f"{witness} ({datadir.audit_keyed}): the trail was rewritten, or the database restored from "
            "before the upgrade. Compare it with your audit file or syslog copies; to accept the database "
            f"as it is, remove {datadir.audit_keyed} and start again"
        )
    keyed_from = await store.open_audit_chain(
        deployment.audit_key,
        now,
        deployment.devices if deployment.devices and deployment.devices.enabled else None,
    )
    if keyed_from is not None and witness is None:
        write_atomic(datadir.audit_keyed, f"{keyed_from}\n".encode(), mode=0o600)
    elif keyed_from is not None and witness != keyed_from:
        logger.error(
            "the audit trail is keyed from record %d, but this server saw it keyed from record %d: the "
            "marker was moved, and audit verify reports it",
            keyed_from,
            witness,
        )
    if keyed_from is None:
        logger.error(
            "the audit trail's keying marker (meta %s) is missing or altered: the trail was tampered with, "
            "and audit verify reports it broken",
            AUDIT_MARKER,
        )
    elif pending and keyed_from > 1:
        # Expected once, on the first start after an upgrade; at any other time,
        # someone reset the marker to have older records checked unkeyed.
        logger.warning(
            "the audit chain is keyed from record %d on; records 1..%d, written before, keep unkeyed hashes",
            keyed_from,
            keyed_from - 1,
        )


def _audit_witness(datadir: DataDir) -> int | None:
    """The record this server saw the audit chain keyed from, or None if it never saw it keyed."""
    try:
        return int(datadir.audit_keyed.read_text().strip())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise FailedPrecondition(
            f"{datadir.audit_keyed} is unreadable: it must hold one record number"
        ) from None


async def _check_audit_file(deployment: Deployment) -> None:
    """Says at once when the store lacks the newest record of the audit file (or holds it changed)."""
    last = deployment.devices.last_in_file if deployment.devices else None
    if last is None:
        return
    found = await deployment.store.audit_after(last.seq - 1, 1)
    if not found or found[0] != last:
        logger.error(
            "the audit file's newest record (%d) is %s the store: its newest records were deleted, or it was "
            "restored from a backup (then keep a new audit file); check with kms-server audit verify --against",
            last.seq,
            "not in" if not found or found[0].seq != last.seq else "different in",
        )


async def _trust_domain(cfg: ServerConfig, store: Store, where: str, *, fresh: bool) -> str:
    wanted = cfg.trust_domain or ServerConfig.DEFAULT_TRUST_DOMAIN
    # Until the CA exists nothing was issued, so a retried first start may pick again.
    trust_domain = await store.set_meta("trust_domain", wanted, replace=fresh)
    if cfg.trust_domain is not None and cfg.trust_domain != trust_domain:
        raise DataDirError(
            f"{where} belongs to trust domain {trust_domain!r}; --trust-domain {cfg.trust_domain!r} cannot change it"
        )
    return trust_domain


def _created(root: CARoot) -> None:
    logger.info("created CA", extra={"fingerprint": fingerprint(root.cert.public_bytes(Encoding.DER))})


async def _embedded(
    cfg: ServerConfig, datadir: DataDir, store: Store, clock: Clock, token: HsmKey | PendingKey | None
) -> Deployment:
    where = f"data dir {cfg.data_dir}"
    if os.environ.get("KMS_MASTER_KEY"):
        raise DataDirError(
            "KMS_MASTER_KEY is for replicas of a PostgreSQL deployment (--database); the embedded store "
            "keeps master.key in its data dir: unset it"
        )
    fresh = not datadir.initialized
    if fresh and datadir.ca_cert.exists():
        raise DataDirError(f"{where} has a CA but no master.key: restore master.key from a backup")
    if fresh and not await store.is_empty():
        raise DataDirError(f"{where} has a store but no master.key: restore master.key from a backup")
    if not fresh:
        trust_domain = await _trust_domain(cfg, store, where, fresh=fresh)
        sealer = Sealer(datadir.load_master_key())
        root = _load_embedded(cfg, datadir, sealer, token)
        if token is not None and await store.get_meta(_CA_KEY_META) != _IN_TOKEN:
            await store.set_meta(_CA_KEY_META, _IN_TOKEN, replace=True)  # made before the marker was
        return Deployment(store, sealer, root, trust_domain, False)
    # Everything that can fail comes before the first secret is written (or a key is made in the token).
    hsm = None if token is None else token.for_new_ca(cfg.ca_key_type)
    trust_domain = await _trust_domain(cfg, store, where, fresh=fresh)
    if hsm is not None:
        root = create_external_root(hsm, trust_domain, cfg.ca_ttl, clock())
        # The marker backups check: a backup without ca.key is whole only for such a deployment.
        await store.set_meta(_CA_KEY_META, _IN_TOKEN, replace=True)
        sealer = Sealer(datadir.create_master_key())
        write_atomic(datadir.ca_cert, root.cert_pem, mode=0o644)  # and no ca.key: the key is in the token
    else:
        pair = create_root(trust_domain, cfg.ca_key_type, cfg.ca_ttl, clock())
        sealer = Sealer(datadir.create_master_key())
        datadir.save_pair(datadir.ca_cert, datadir.ca_key, sealer, pair)
        root = software_root(pair)
    _created(root)
    return Deployment(store, sealer, root, trust_domain, True)


def _load_embedded(
    cfg: ServerConfig, datadir: DataDir, sealer: Sealer, token: HsmKey | PendingKey | None
) -> CARoot:
    where = f"data dir {cfg.data_dir}"
    if token is None:
        if datadir.ca_cert.exists() and not datadir.ca_key.exists():
            raise DataDirError(
                f"{where} is incomplete: ca.key is missing (restore it from a backup; or, if this deployment's "
                "CA key is in a PKCS#11 token, give --ca-key pkcs11:... and --pkcs11-module)"
            )
        return load_root(datadir, sealer, cfg.ca_key_type)
    if datadir.ca_key.exists():
        raise DataDirError(
            f"the CA key of {where} is ca.key, in software: --ca-key cannot move it into a token"
        )
    cert = open_cert(datadir.read(datadir.ca_cert), str(datadir.ca_cert))
    return external_root(cert, token.existing(), cfg.ca_key_type, where)


async def _shared(
    cfg: ServerConfig, datadir: DataDir, store: Store, clock: Clock, token: HsmKey | PendingKey | None
) -> Deployment:
    where = "the database"
    ca_pem = await store.get_meta("ca_cert")
    if ca_pem is None:
        if not await store.is_empty():
            raise DataDirError(
                "the database holds data but no CA: it was not made by kms-server init; restore it from a backup"
            )
        hsm = None if token is None else token.for_new_ca(cfg.ca_key_type)
        trust_domain = await _trust_domain(cfg, store, where, fresh=True)
        if hsm is not None:
            root = create_external_root(hsm, trust_domain, cfg.ca_ttl, clock())
        else:
            pair = create_root(trust_domain, cfg.ca_key_type, cfg.ca_ttl, clock())
            root = software_root(pair)
        sealer = Sealer(_master_key(cfg, datadir, create=True))
        sealed = _IN_TOKEN if hsm is not None else base64.b64encode(seal_key(pair, sealer, _CA_SLOT)).decode()
        # Key and certificate in one transaction: a CA certificate in the database means
        # the deployment is complete, and a racing replica can change neither.
        if await store.create_ca(sealed, root.cert_pem.decode()) != (sealed, root.cert_pem.decode()):
            # Another replica got here too (our lock's connection dropped): use nothing of ours.
            raise DataDirError(
                "another replica created the deployment's CA at the same moment: start this one again"
            )
        _created(root)
        _publish_ca(datadir, root)
        return Deployment(store, sealer, root, trust_domain, True)
    trust_domain = await _trust_domain(cfg, store, where, fresh=False)
    sealer = Sealer(_master_key(cfg, datadir, create=False))
    root = _load_shared(cfg, datadir, ca_pem, await store.get_meta(_CA_KEY_META), sealer, token)
    _publish_ca(datadir, root)
    return Deployment(store, sealer, root, trust_domain, False)


def _load_shared(
    cfg: ServerConfig,
    datadir: DataDir,
    ca_pem: str,
    stored: str | None,
    sealer: Sealer,
    token: HsmKey | PendingKey | None,
) -> CARoot:
    where = "the database"
    if (stored == _IN_TOKEN) != (token is not None):
        raise DataDirError(
            "this deployment's CA key is in a PKCS#11 token: give --ca-key pkcs11:... and --pkcs11-module"
            if token is None
            else "this deployment's CA key is in software (sealed in the database): --ca-key cannot move it"
        )
    if token is not None:
        return external_root(
            open_cert(ca_pem.encode(), "the CA certificate in the database"),
            token.existing(),
            cfg.ca_key_type,
            where,
        )
    pair = open_pair(
        ca_pem.encode(),
        base64.b64decode(stored or ""),
        sealer,
        slot=_CA_SLOT,
        cert_name="the CA certificate in the database",
        key_name="the CA key in the database",
        master_name=_master_key_source(cfg, datadir)
        + " (every replica of a deployment needs the master key it was initialised with)",
    )
    check_key_type(key_type_of(pair.key), cfg.ca_key_type, where)
    return software_root(pair)


def _publish_ca(datadir: DataDir, root: CARoot) -> None:
    """A copy of the (public) CA certificate in the replica's data dir, where operators and tools look."""
    if not datadir.ca_cert.exists() or datadir.ca_cert.read_bytes() != root.cert_pem:
        write_atomic(datadir.ca_cert, root.cert_pem, mode=0o644)


def _master_key_source(cfg: ServerConfig, datadir: DataDir) -> str:
    if os.environ.get("KMS_MASTER_KEY"):
        return "KMS_MASTER_KEY"
    return str(cfg.master_key_file or datadir.master_key)


def _master_key(cfg: ServerConfig, datadir: DataDir, *, create: bool) -> bytes:
    """The shared master key: KMS_MASTER_KEY, else --master-key-file, else the data dir's master.key.

    With create (a new deployment) a missing file is made, 0600.
    """
    text = os.environ.get("KMS_MASTER_KEY")
    if text:
        try:
            key = base64.b64decode(text, validate=True)
        except binascii.Error:
            key = b""
        if len(key) != MASTER_KEY_BYTES:
            raise DataDirError(f"KMS_MASTER_KEY must be {MASTER_KEY_BYTES} bytes in base64")
        return key
    path: Path = cfg.master_key_file or datadir.master_key
    if path.exists():
        try:
            return read_master_key(path, path.read_bytes())
        except OSError as exc:
            raise DataDirError(f"cannot read master key {path}: {exc.strerror}") from None
    if not create:
        raise DataDirError(
            f"this deployment's CA already exists in the database, and {path} does not: give this replica "
            "the deployment's master key (--master-key-file, or KMS_MASTER_KEY in base64), copied from the "
            "replica that initialised it"
        )
    key = os.urandom(MASTER_KEY_BYTES)
    write_atomic(path, key, mode=0o600)
    logger.info("created master key", extra={"path": str(path)})
    return key
