"""Secrets at rest: AES-256-GCM under the master key, bound to what they are.

Format (version 1): ``0x01 || nonce(12) || ciphertext+tag``. The associated
data names the secret (``ca-key``, later ``aes-key/<name>/<version>``), so a
ciphertext moved to another slot fails to open.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "MASTER_KEY_BYTES",
    "SealError",
    "Sealer",
    "derive_subkey",
    "open_sealed",
    "seal",
    "seal_with_nonce",
]

MASTER_KEY_BYTES = 32
_VERSION = 1
_NONCE = 12
_AD_PREFIX = b"seed-kms sealed v1\x00"
_SUBKEY_PREFIX = b"seed-kms subkey v1\x00"


class SealError(Exception):
    """A sealed blob did not open: wrong master key, wrong slot or tampered bytes."""


def _check_key(master_key: bytes) -> AESGCM:
    if len(master_key) != MASTER_KEY_BYTES:
        raise ValueError("master key must be 32 bytes")
    return AESGCM(master_key)


def seal(master_key: bytes, slot: str, plaintext: bytes) -> bytes:
    """Encrypts plaintext for slot with a fresh random nonce."""
    return seal_with_nonce(master_key, slot, plaintext, os.urandom(_NONCE))


def seal_with_nonce(master_key: bytes, slot: str, plaintext: bytes, nonce: bytes) -> bytes:
    """The deterministic twin of seal, for known-answer tests."""
    if len(nonce) != _NONCE:
        raise ValueError("nonce must be 12 bytes")
    ad = _AD_PREFIX + slot.encode()
    return bytes([_VERSION]) + nonce + _check_key(master_key).encrypt(nonce, plaintext, ad)


def open_sealed(master_key: bytes, slot: str, blob: bytes) -> bytes:
    """Decrypts a sealed blob. Raises SealError, one opaque error for every failure."""
    aead = _check_key(master_key)
    if len(blob) < 1 + _NONCE + 16 or blob[0] != _VERSION:
        raise SealError("sealed data is malformed")
    try:
        return aead.decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], _AD_PREFIX + slot.encode())
    except InvalidTag:
        raise SealError("sealed data does not open with this master key") from None


def derive_subkey(master_key: bytes, label: str) -> bytes:
    """A 32-byte key for one purpose (HKDF-SHA256, RFC 5869, info naming the purpose).

    Keys derived for different labels are independent, and none reveals the
    master key or opens what it sealed.
    """
    _check_key(master_key)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SUBKEY_PREFIX + label.encode())
    return hkdf.derive(master_key)


class Sealer:
    """Holds the master key for the server's lifetime and seals secrets into named slots."""

    def __init__(self, master_key: bytes) -> None:
        _check_key(master_key)
        self._master_key = master_key

    def seal(self, slot: str, plaintext: bytes) -> bytes:
        return seal(self._master_key, slot, plaintext)

    def open(self, slot: str, blob: bytes) -> bytes:
        return open_sealed(self._master_key, slot, blob)

    def subkey(self, label: str) -> bytes:
        """A key derived from the master key for one purpose (e.g. "audit-chain")."""
        return derive_subkey(self._master_key, label)

    def __repr__(self) -> str:
        return "Sealer(<master key redacted>)"
