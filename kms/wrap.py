"""Wrapped keys: RSA-OAEP (SHA-256, MGF1-SHA-256) under an agent's certificate key.

The OAEP label binds the ciphertext to the key name, the key version and the
serial of the certificate it was wrapped for, so a wrapped key replayed under
another name, version or certificate does not unwrap. Format (version 1)::

    0x01 || RSA-OAEP ciphertext (modulus length)
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = ["KEY_BYTES", "UnwrapError", "unwrap", "wrap", "wrap_label"]

KEY_BYTES = 32
_VERSION = 1
_LABEL_PREFIX = b"seed-kms wrap v1\x00"


class UnwrapError(Exception):
    """The wrapped key did not unwrap: wrong key, wrong label or damaged bytes (one opaque error)."""


def _field(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def wrap_label(name: str, version: int, serial_hex: str) -> bytes:
    """The OAEP label: length-prefixed name, 32-bit version, length-prefixed serial."""
    if not 0 < version < 2**32:
        raise ValueError("version out of range")
    return _LABEL_PREFIX + _field(name.encode()) + struct.pack(">I", version) + _field(serial_hex.encode())


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def wrap(public_key: rsa.RSAPublicKey, key: bytes, name: str, version: int, serial_hex: str) -> bytes:
    """Wraps an AES key for the holder of public_key. OAEP draws its own randomness."""
    if len(key) != KEY_BYTES:
        raise ValueError("wrapped keys are AES-256 keys")
    return bytes([_VERSION]) + public_key.encrypt(key, _oaep(wrap_label(name, version, serial_hex)))


def unwrap(private_key: rsa.RSAPrivateKey, blob: bytes, name: str, version: int, serial_hex: str) -> bytes:
    """Unwraps a key wrapped for private_key's certificate serial_hex. Raises UnwrapError."""
    if len(blob) != 1 + private_key.key_size // 8 or blob[0] != _VERSION:
        raise UnwrapError("wrapped key does not unwrap")
    try:
        key = private_key.decrypt(blob[1:], _oaep(wrap_label(name, version, serial_hex)))
    except ValueError:
        raise UnwrapError("wrapped key does not unwrap") from None
    if len(key) != KEY_BYTES:
        raise UnwrapError("wrapped key does not unwrap")
    return key
