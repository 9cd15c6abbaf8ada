"""Managed key pairs on the server: making and sealing a version, and releasing its private key.

A version's key pair is generated before the store's transaction (RSA-4096 can
take seconds, and on SQLite one thread does every write): the seal function
the store calls with the version number it allocates only seals the PKCS#8
DER, in the slot ``key-pair/NAME/VERSION`` (AES keys keep ``aes-key/...``:
sealed data at rest depends on it), and hands over the public key (SPKI DER),
which is stored in the clear with the version.
"""

from __future__ import annotations

from dataclasses import dataclass

from kms import keypairs
from kms.wrap import wrap_private_key
from server.deployment.sealing import Sealer
from server.endpoints.authn import Caller
from server.store.records import KeyVersionRecord, SealedVersion, SealFn

__all__ = ["PublicKey", "pair_sealer", "pair_slot", "wrap_pair"]


def pair_slot(name: str, version: int) -> str:
    return f"key-pair/{name}/{version}"


def pair_sealer(sealer: Sealer, name: str, key_type: str) -> SealFn:
    """Generates a key pair of key_type now; the function returned seals it for a version."""
    private = keypairs.generate(key_type)
    pkcs8, public = keypairs.private_der(private), keypairs.public_der(private)
    del private

    def seal(version: int) -> SealedVersion:
        return SealedVersion(sealer.seal(pair_slot(name, version), pkcs8), public)

    return seal


def wrap_pair(sealer: Sealer, caller: Caller, record: KeyVersionRecord) -> bytes:
    """The version's private key, unsealed and wrapped (kms.wrap format 2) for the caller's certificate."""
    assert record.sealed_material is not None
    pkcs8 = sealer.open(pair_slot(record.key_name, record.version), record.sealed_material)
    return wrap_private_key(caller.public_key, pkcs8, record.key_name, record.version, caller.serial)


@dataclass(frozen=True)
class PublicKey:
    """A version's public key, for a granted agent (GetPublicKey)."""

    key_type: str
    version: KeyVersionRecord

    @property
    def der(self) -> bytes:
        assert self.version.public_key is not None
        return self.version.public_key
