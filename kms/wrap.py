"""Wrapped keys: RSA-OAEP (SHA-256, MGF1-SHA-256) under an agent's certificate key.

The OAEP label binds the ciphertext to the key name, the key version and the
serial of the certificate it was wrapped for, so a wrapped key replayed under
another name, version or certificate does not unwrap. Format 1 (AES-256 keys)::

    0x01 || RSA-OAEP(label_1, key) (modulus length)

    label_1 = "seed-kms wrap v1" 0x00 || u16 len || name || u32 version || u16 len || serial hex

Format 2 carries a key pair's private key (PKCS#8 DER), too long for OAEP: a
fresh AES-256 key K is wrapped as in format 1, under a label that also names
the format (so neither format's ciphertext opens as the other), and K wraps
the PKCS#8 DER with AES-KWP (AES Key Wrap with Padding, RFC 5649), the
construction of AWS KMS and PKCS#11 (CKM_RSA_AES_KEY_WRAP)::

    0x02 || RSA-OAEP(label_2, K) (modulus length) || AES-KWP(K, PKCS#8 DER)

    label_2 = label_1 || u16 len || "format 2: aes-kwp pkcs8"

KWP authenticates what it unwraps (its integrity check value): a changed byte
anywhere fails, as does a wrong label; every failure is one opaque UnwrapError.
"""

from __future__ import annotations

import secrets
import struct

from cryptography.hazmat.primitives import hashes, keywrap
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = [
    "KEY_BYTES",
    "UnwrapError",
    "private_key_label",
    "unwrap",
    "unwrap_private_key",
    "wrap",
    "wrap_label",
    "wrap_private_key",
]

KEY_BYTES = 32
_VERSION = 1
_VERSION_PAIR = 2
_LABEL_PREFIX = b"seed-kms wrap v1\x00"
_FORMAT_PAIR = b"format 2: aes-kwp pkcs8"


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


def private_key_label(name: str, version: int, serial_hex: str) -> bytes:
    """The OAEP label of format 2: format 1's, then the format, length-prefixed."""
    return wrap_label(name, version, serial_hex) + _field(_FORMAT_PAIR)


def wrap_private_key(
    public_key: rsa.RSAPublicKey,
    pkcs8: bytes,
    name: str,
    version: int,
    serial_hex: str,
    *,
    kek: bytes | None = None,
) -> bytes:
    """Wraps a private key (PKCS#8 DER) for the holder of public_key (format 2).

    kek: the AES-256 key that wraps it (default: a fresh one; given only by tests).
    """
    kek = secrets.token_bytes(KEY_BYTES) if kek is None else kek
    if len(kek) != KEY_BYTES or not pkcs8:
        raise ValueError("format 2 wraps a private key under an AES-256 key")
    sealed_kek = public_key.encrypt(kek, _oaep(private_key_label(name, version, serial_hex)))
    return bytes([_VERSION_PAIR]) + sealed_kek + keywrap.aes_key_wrap_with_padding(kek, pkcs8)


def unwrap_private_key(
    private_key: rsa.RSAPrivateKey, blob: bytes, name: str, version: int, serial_hex: str
) -> bytes:
    """The PKCS#8 DER wrapped for private_key's certificate serial_hex. Raises UnwrapError."""
    size = private_key.key_size // 8
    # KWP output: at least 16 bytes, a multiple of 8.
    if len(blob) < 1 + size + 16 or (len(blob) - 1 - size) % 8 or blob[0] != _VERSION_PAIR:
        raise UnwrapError("wrapped key does not unwrap")
    try:
        kek = private_key.decrypt(blob[1 : 1 + size], _oaep(private_key_label(name, version, serial_hex)))
        if len(kek) != KEY_BYTES:
            raise ValueError("not an AES-256 key")
        return keywrap.aes_key_unwrap_with_padding(kek, blob[1 + size :])
    except (ValueError, keywrap.InvalidUnwrap):
        raise UnwrapError("wrapped key does not unwrap") from None
