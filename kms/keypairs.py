"""Managed key pairs: the types a server generates, their encodings, and which operation suits which.

A key's type is fixed when it is created: ``aes-256`` (the default: symmetric
material for encrypt, decrypt and key files), or a key pair the server
generates, ``rsa-2048``, ``rsa-3072``, ``rsa-4096`` (public exponent 65537) or
``ec-p256`` (NIST P-256). A pair's private key travels and is sealed as PKCS#8
DER; its public key is published as SubjectPublicKeyInfo DER.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kms.errors import InvalidArgument, WrongKeyType
from kms.signing import PrivateKey, PublicKey

__all__ = [
    "AES_256",
    "KEY_PAIR_TYPES",
    "KEY_TYPES",
    "generate",
    "is_key_pair",
    "load_private_key",
    "load_public_key",
    "parse_key_type",
    "private_der",
    "public_der",
    "require_aes",
    "require_key_pair",
    "type_of",
]

AES_256 = "aes-256"
_RSA_BITS = {"rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096}
KEY_PAIR_TYPES = (*_RSA_BITS, "ec-p256")
KEY_TYPES = (AES_256, *KEY_PAIR_TYPES)


def parse_key_type(text: str) -> str:
    """The key type an administrator asked for ("" is the default, aes-256). Raises InvalidArgument."""
    key_type = text.strip().lower() or AES_256
    if key_type not in KEY_TYPES:
        raise InvalidArgument(f"unknown key type {text!r}: use one of {', '.join(KEY_TYPES)}")
    return key_type


def is_key_pair(key_type: str) -> bool:
    return key_type in KEY_PAIR_TYPES


def generate(key_type: str) -> PrivateKey:
    """A fresh private key of a key-pair type (RSA-4096 may take seconds)."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type in _RSA_BITS:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])
    raise ValueError(f"{key_type} is not a key-pair type")


def private_der(key: PrivateKey) -> bytes:
    """PKCS#8 DER, unencrypted (it is sealed or wrapped by the caller)."""
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_der(key: PrivateKey | PublicKey) -> bytes:
    """SubjectPublicKeyInfo DER."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def type_of(key: PrivateKey | PublicKey) -> str:
    """The key-pair type of a key. Raises ValueError for any other kind or size."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return "ec-p256"
    elif isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        for name, bits in _RSA_BITS.items():
            if key.key_size == bits:
                return name
    raise ValueError("not a key of a managed key-pair type")


def load_private_key(der: bytes, key_type: str) -> PrivateKey:
    """A PKCS#8 DER private key, which must be of key_type. Raises ValueError otherwise."""
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) or type_of(key) != key_type:
        raise ValueError(f"the private key is not an {key_type} key")
    return key


def load_public_key(der: bytes, key_type: str) -> PublicKey:
    """A SubjectPublicKeyInfo DER public key, which must be of key_type. Raises ValueError otherwise."""
    key = serialization.load_der_public_key(der)
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) or type_of(key) != key_type:
        raise ValueError(f"the public key is not an {key_type} key")
    return key


def require_aes(name: str, key_type: str, doing: str) -> None:
    """Refuses (WrongKeyType) an AES-only operation on a key pair, saying what to use instead."""
    if key_type != AES_256:
        raise WrongKeyType(
            f"key {name} is an {key_type} key pair, not an AES key: it cannot {doing}; use kms-agent "
            f"sign/verify --key {name}, public-key {name} or fetch-key {name}"
        )


def require_key_pair(name: str, key_type: str, doing: str) -> None:
    """Refuses (WrongKeyType) a key-pair operation on an AES key, saying what to use instead."""
    if not is_key_pair(key_type):
        raise WrongKeyType(
            f"key {name} is an {key_type} key, not a key pair: it cannot {doing}; use kms-agent "
            f"encrypt/decrypt or run for AES keys, or create a key pair with kms-server key create "
            f"NAME --type {'|'.join(KEY_PAIR_TYPES)}"
        )
