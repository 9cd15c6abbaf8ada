"""CA generations as messages (the Admin service's RotateCA and ListCAs)."""

from __future__ import annotations

from cryptography import x509

from kms.errors import InvalidArgument
from kms.v1 import admin_pb2
from server.ca.keytype import CAKeyType
from server.ca.rotation import CAGeneration, generation_fingerprint

__all__ = ["ca_generation", "parse_ca_key_type"]


def parse_ca_key_type(text: str) -> CAKeyType:
    try:
        return CAKeyType(text)
    except ValueError:
        choices = ", ".join(k.value for k in CAKeyType)
        raise InvalidArgument(f"unknown CA key type {text!r}: one of {choices}") from None


def ca_generation(g: CAGeneration) -> admin_pb2.CAGeneration:
    cert = x509.load_pem_x509_certificate(g.certificate.encode())
    return admin_pb2.CAGeneration(
        generation=g.generation,
        state=g.state,
        key_type=g.key_type,
        fingerprint=generation_fingerprint(g),
        not_before=int(cert.not_valid_before_utc.timestamp()),
        not_after=int(cert.not_valid_after_utc.timestamp()),
        valid_certificates=g.valid_certificates,
        created_at=g.created_at,
        activated_at=g.activated_at or 0,
        retired_at=g.retired_at or 0,
        certificate_pem=g.certificate,
        cross_certificate_pem=g.cross_certificate or "",
        key_uri=g.key_uri or "",
    )
