"""One-time join tokens: format, hashing and constant-time checking.

A token reads ``<id>.<secret>``: 8 random bytes of id in hex (not secret; it
names the token in logs and the audit trail) and 32 random bytes of secret in
unpadded base64url. The server stores only SHA-256 of the secret, so a copy
of the store cannot enroll anybody.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from kms.errors import InvalidArgument

__all__ = ["JoinToken", "hash_secret", "secret_matches"]

ID_BYTES = 8
SECRET_BYTES = 32
_SHAPE = re.compile(r"^([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
_HASH_PREFIX = b"seed-kms join token v1\x00"


@dataclass(frozen=True)
class JoinToken:
    token_id: str
    secret: bytes

    @classmethod
    def generate(cls) -> JoinToken:
        """Draws a fresh token from the OS CSPRNG."""
        return cls.from_parts(secrets.token_bytes(ID_BYTES), secrets.token_bytes(SECRET_BYTES))

    @classmethod
    def from_parts(cls, id_bytes: bytes, secret: bytes) -> JoinToken:
        """Builds a token from given random bytes (the deterministic twin of generate)."""
        if len(id_bytes) != ID_BYTES or len(secret) != SECRET_BYTES:
            raise ValueError("join token parts have the wrong length")
        return cls(id_bytes.hex(), secret)

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        """Parses a token as printed by ``kms-server token create``.

        Raises:
            InvalidArgument: the text does not have the shape of a join token.
        """
        match = _SHAPE.fullmatch(text.strip())
        if not match:
            raise InvalidArgument(
                "join token is malformed: pass it exactly as `kms-server token create` printed it"
            )
        try:
            secret = base64.urlsafe_b64decode(match.group(2) + "=")
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument("join token is malformed: pass it exactly as printed") from exc
        token = cls(match.group(1), secret)
        # base64 ignores the unused low bits of the last character: accept only
        # the one canonical spelling.
        if str(token) != text.strip():
            raise InvalidArgument("join token is malformed: pass it exactly as printed")
        return token

    def __str__(self) -> str:
        encoded = base64.urlsafe_b64encode(self.secret).rstrip(b"=").decode()
        return f"{self.token_id}.{encoded}"

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"JoinToken(token_id={self.token_id!r}, secret=<redacted>)"

    @property
    def secret_hash(self) -> bytes:
        return hash_secret(self.secret)


def hash_secret(secret: bytes) -> bytes:
    """SHA-256 of the secret, domain-separated. 256 random bits need no slow KDF."""
    return hashlib.sha256(_HASH_PREFIX + secret).digest()


def secret_matches(token: JoinToken, stored_hash: bytes) -> bool:
    """Constant-time check of a presented token against the stored hash."""
    return hmac.compare_digest(token.secret_hash, stored_hash)
