"""Signatures with certificate keys: RSA-PSS (SHA-256, MGF1-SHA-256, salt = hash length) or ECDSA-SHA256.

Every signed message starts with a context string, so a signature made for
one purpose (a handshake transcript, a file) is never valid for another.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

__all__ = ["SignatureInvalid", "sign", "verify"]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class SignatureInvalid(Exception):
    """The signature does not verify (one opaque error)."""


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def sign(key: PrivateKey, context: bytes, message: bytes) -> bytes:
    data = context + b"\x00" + message
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, _pss(), hashes.SHA256())
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify(key: PublicKey, signature: bytes, context: bytes, message: bytes) -> None:
    """Raises SignatureInvalid unless signature is key's over (context, message)."""
    data = context + b"\x00" + message
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, _pss(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            raise SignatureInvalid("unsupported key type")
    except InvalidSignature:
        raise SignatureInvalid("signature does not verify") from None
