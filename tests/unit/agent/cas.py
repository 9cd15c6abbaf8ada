"""CA certificates for the agent's trust tests: generations, cross-certificates, PEM, fingerprints."""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kms import cabundle, profile
from kms.identity import fingerprint

Key = ec.EllipticCurvePrivateKey


def make_ca(now: datetime, days: int = 30) -> tuple[x509.Certificate, Key]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = profile.ca_builder(
        key.public_key(), "t", x509.random_serial_number(), now, timedelta(days=days)
    )
    return builder.sign(key, hashes.SHA256()), key


def cross(new: x509.Certificate, old: x509.Certificate, old_key: Key, now: datetime) -> x509.Certificate:
    """new certified by old (newWithOld, or oldWithNew the other way round)."""
    return cabundle.cross_builder(new, old, x509.random_serial_number(), now).sign(old_key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def fp(cert: x509.Certificate) -> str:
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))
