"""Signatures: RSA-PSS (SHA-256, MGF1-SHA-256, salt = hash length, 32 bytes) or ECDSA-SHA256.

With certificate keys (sign, verify), every signed message starts with a
context string, so a signature made for one purpose (a handshake transcript,
a file) is never valid for another. A managed key pair signs the SHA-256 of
a file as it is (sign_digest, verify_digest), which is what ``openssl dgst
-sha256 -verify`` checks (for RSA with ``-sigopt rsa_padding_mode:pss
-sigopt rsa_pss_saltlen:32``); such a key pair is for file signatures only.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

__all__ = ["SignatureInvalid", "sign", "sign_digest", "verify", "verify_digest"]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class SignatureInvalid(Exception):
    """The signature does not verify (one opaque error)."""


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def _sign(key: PrivateKey, data: bytes, algorithm: hashes.HashAlgorithm | utils.Prehashed) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, _pss(), algorithm)
    return key.sign(data, ec.ECDSA(algorithm))


def _verify(
    key: PublicKey, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | utils.Prehashed
) -> None:
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, _pss(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            raise SignatureInvalid("unsupported key type")
    except InvalidSignature:
        raise SignatureInvalid("signature does not verify") from None


def sign(key: PrivateKey, context: bytes, message: bytes) -> bytes:
    return _sign(key, context + b"\x00" + message, hashes.SHA256())


def verify(key: PublicKey, signature: bytes, context: bytes, message: bytes) -> None:
    """Raises SignatureInvalid unless signature is key's over (context, message)."""
    _verify(key, signature, context + b"\x00" + message, hashes.SHA256())


def sign_digest(key: PrivateKey, digest: bytes) -> bytes:
    """Signs a SHA-256 digest as it is (no context string): what openssl dgst -sha256 -sign makes."""
    if len(digest) != 32:
        raise ValueError("digest must be SHA-256")
    return _sign(key, digest, utils.Prehashed(hashes.SHA256()))


def verify_digest(key: PublicKey, signature: bytes, digest: bytes) -> None:
    """Raises SignatureInvalid unless signature is key's over the SHA-256 digest."""
    if len(digest) != 32:
        raise SignatureInvalid("digest must be SHA-256")
    _verify(key, signature, digest, utils.Prehashed(hashes.SHA256()))
