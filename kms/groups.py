"""Ephemeral Diffie-Hellman for the handshake: X25519 (default), RFC 7919 ffdhe2048 and ffdhe3072.

Peer values are checked before use: X25519 shares must be 32 bytes and not
give an all-zero secret (RFC 7748 §6.1); ffdhe shares must be encoded at the
prime's length and satisfy 1 < y < p-1 and y^q = 1 mod p for q = (p-1)/2,
so small-subgroup and degenerate values are refused (RFC 7919 §5.1).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric import dh, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning

__all__ = ["Ephemeral", "Group", "InvalidShare", "ffdhe_prime", "quadratic_character"]

# RFC 7919 Appendix A; tests/unit/kms/test_groups.py re-derives both from the RFC's formula.
FFDHE2048_P = int(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695"
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A"
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A"
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4"
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005"
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B423861285C97FFFFFFFFFFFFFFFF",
    16,
)
FFDHE3072_P = int(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695"
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A"
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A"
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4"
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005"
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B"
    "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C"
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF"
    "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E"
    "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B66C62E37FFFFFFFFFFFFFFFF",
    16,
)
_GENERATOR = 2


@contextmanager
def _ffdh() -> Iterator[None]:
    # cryptography deprecates finite-field DH; RFC 7919 groups are a requirement
    # here for those who need them, so the warning is acknowledged in one place.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        yield


def quadratic_character(a: int, p: int) -> int:
    """The Legendre symbol (a/p) of a modulo an odd prime p: 1, -1, or 0 when p divides a.

    For a safe prime p = 2q + 1, as every RFC 7919 prime is, the subgroup of
    order q is exactly the quadratic residues, and by Euler's criterion
    ``pow(a, q, p) == 1`` if and only if this is 1 (RFC 7919 §5.1's check).
    Computed as a Jacobi symbol by the binary algorithm: about 0.5 ms at 3072
    bits where pow takes 65 ms, and in small Python steps that let other
    threads (the server's event loop) run, where one pow call holds the GIL
    throughout.
    """
    a %= p
    n, result = p, 1
    while a:
        while not a & 1:
            a >>= 1
            if n & 7 in (3, 5):  # (2/n) = -1 for n = 3, 5 mod 8
                result = -result
        a, n = n, a  # quadratic reciprocity: a sign change when both are 3 mod 4
        if a & 3 == 3 and n & 3 == 3:
            result = -result
        a %= n
    return result if n == 1 else 0


class InvalidShare(ValueError):
    """A peer's public value is malformed, degenerate or outside the prime-order subgroup."""


class Group(StrEnum):
    X25519 = "x25519"
    FFDHE2048 = "ffdhe2048"
    FFDHE3072 = "ffdhe3072"


def ffdhe_prime(group: Group) -> int:
    return {Group.FFDHE2048: FFDHE2048_P, Group.FFDHE3072: FFDHE3072_P}[group]


@functools.cache
def _parameters(group: Group) -> dh.DHParameters:
    with _ffdh():
        return dh.DHParameterNumbers(ffdhe_prime(group), _GENERATOR).parameters()


@dataclass(frozen=True)
class Ephemeral:
    """One side's ephemeral key: its public share, and exchange with the peer's share."""

    group: Group
    _private: x25519.X25519PrivateKey | dh.DHPrivateKey

    @classmethod
    def generate(cls, group: Group) -> Ephemeral:
        if group is Group.X25519:
            return cls(group, x25519.X25519PrivateKey.generate())
        # OpenSSL knows the RFC 7919 groups by their prime and draws a short exponent (§5.2) of
        # the length appendix A asks for: 225 bits for ffdhe2048, 275 for ffdhe3072 (groups of
        # about 103 and 125 bits of strength); g^x takes well under a millisecond of C. The same
        # in Python's pow, with a 512-bit exponent, took 13 ms of GIL-holding steps, which an
        # agent flooding a server with ffdhe3072 hellos turned into stalls for everyone else.
        with _ffdh():
            return cls(group, _parameters(group).generate_private_key())

    @classmethod
    def from_private_value(cls, group: Group, value: int | bytes) -> Ephemeral:
        """The deterministic twin of generate, for known-answer tests."""
        if group is Group.X25519:
            assert isinstance(value, bytes)
            return cls(group, x25519.X25519PrivateKey.from_private_bytes(value))
        assert isinstance(value, int)
        p = ffdhe_prime(group)
        with _ffdh():
            numbers = dh.DHParameterNumbers(p, _GENERATOR)
            public = dh.DHPublicNumbers(pow(_GENERATOR, value, p), numbers)
            return cls(group, dh.DHPrivateNumbers(value, public).private_key())

    @property
    def public_share(self) -> bytes:
        if isinstance(self._private, x25519.X25519PrivateKey):
            return self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        p = ffdhe_prime(self.group)
        with _ffdh():
            y = self._private.public_key().public_numbers().y
        return y.to_bytes((p.bit_length() + 7) // 8, "big")

    def exchange(self, peer_share: bytes) -> bytes:
        """The shared secret with a peer's share. Raises InvalidShare."""
        if isinstance(self._private, x25519.X25519PrivateKey):
            if len(peer_share) != 32:
                raise InvalidShare("X25519 share must be 32 bytes")
            try:
                return self._private.exchange(x25519.X25519PublicKey.from_public_bytes(peer_share))
            except ValueError:  # all-zero output: a low-order point
                raise InvalidShare("X25519 share is a low-order point") from None
        p = ffdhe_prime(self.group)
        size = (p.bit_length() + 7) // 8
        if len(peer_share) != size:
            raise InvalidShare(f"{self.group} share must be {size} bytes")
        y = int.from_bytes(peer_share, "big")
        if not 1 < y < p - 1 or quadratic_character(y, p) != 1:
            raise InvalidShare(f"{self.group} share is outside the prime-order subgroup")
        with _ffdh():
            peer = dh.DHPublicNumbers(y, dh.DHParameterNumbers(p, _GENERATOR)).public_key()
            return self._private.exchange(peer).rjust(size, b"\x00")
