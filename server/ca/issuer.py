"""One CA generation as the server signs with it: an immutable snapshot (issue 19 §1).

The authority swaps its whole Issuer in one assignment when it follows an activation, and
every signing method reads it once at its start: a certificate, its issuer name and the
generation recorded with it always come from the same CA, whatever thread signs meanwhile.
OCSP and the CRLs hold one per live generation (active and retiring).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kms import cabundle
from kms.identity import fingerprint
from server.ca.keytype import CAKeyType
from server.ca.signer import CARoot, CASigner

__all__ = ["Issuer", "issuer_key_hash", "make_issuer"]

# The hashes an OCSP request may name its issuer with: SHA-1 (openssl's default) or SHA-256.
OCSP_HASHES = (hashes.SHA1(), hashes.SHA256())  # noqa: S303 - RFC 6960 CertID, not a signature


@dataclass(frozen=True)
class Issuer:
    generation: int  # 1: the deployment's own CA (the data dir's)
    cert: x509.Certificate
    signer: CASigner
    fingerprint: str
    bundle_pem: bytes  # the CA certificate, PEM
    chain_der: tuple[bytes, ...]
    # The RFC 6960 issuerKeyHash of this CA per hash name ("sha1", "sha256").
    key_hashes: dict[str, bytes] = field(default_factory=dict)

    @property
    def key_type(self) -> CAKeyType:
        return self.signer.key_type

    @property
    def slow(self) -> bool:
        return self.signer.slow

    def cross_certify(
        self, new: x509.Certificate, now: datetime, until: datetime | None = None
    ) -> x509.Certificate:
        """new's key and subject certified by this CA (RFC 4210 newWithOld, or oldWithNew for an
        older CA), valid no longer than until when given; checked before it leaves."""
        builder = cabundle.cross_builder(new, self.cert, x509.random_serial_number(), now, until)
        cross = self.signer.sign_certificate(builder)
        cabundle.check_cross(cross, new, self.cert, now)
        return cross


def make_issuer(root: CARoot, generation: int) -> Issuer:
    der = root.cert.public_bytes(Encoding.DER)
    return Issuer(
        generation,
        root.cert,
        root.signer,
        fingerprint(der),
        root.cert_pem,
        (der,),
        {algorithm.name: issuer_key_hash(root.cert, algorithm) for algorithm in OCSP_HASHES},
    )


def issuer_key_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """RFC 6960 §4.1.1 issuerKeyHash: the hash of the issuer's subjectPublicKey BIT STRING value."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        bits = key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    elif isinstance(key, rsa.RSAPublicKey):
        bits = key.public_bytes(Encoding.DER, PublicFormat.PKCS1)
    else:
        raise TypeError("unsupported CA key type")
    digest = hashes.Hash(algorithm)
    digest.update(bits)
    return digest.finalize()
