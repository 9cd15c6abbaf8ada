"""The CA's signer: the one thing that signs certificates, CRLs and OCSP responses.

Two kinds: ``SoftwareSigner`` (the key in memory, sealed at rest; cryptography's
builders sign with it, exactly as before) and ``ExternalSigner`` (external.py:
the key elsewhere, a PKCS#11 token, see hsm.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp

from kms import profile
from server.ca.keytype import CAKeyType

__all__ = ["CARoot", "CASigner", "PublicKey", "SoftwareSigner", "public_key_type", "signature_hash"]

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class CASigner(Protocol):
    key_type: CAKeyType
    slow: bool  # sign in a thread, not on the event loop
    in_software: bool  # the private key is in this process (sealed in the data dir)

    def public_key(self) -> PublicKey: ...
    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate: ...
    def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList: ...
    def sign_ocsp(self, builder: ocsp.OCSPResponseBuilder, responder: x509.Certificate) -> ocsp.OCSPResponse:
        """Sets the responder ID (by key hash) to responder's and signs."""
        ...


@dataclass(frozen=True)
class CARoot:
    """The CA certificate and what signs for it."""

    cert: x509.Certificate
    signer: CASigner

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def public_key_type(key: PublicKey) -> CAKeyType | None:
    """The CA key type of a public key, or None when the CA cannot use it."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {256: CAKeyType.EC_P256, 384: CAKeyType.EC_P384}.get(key.curve.key_size)
    return {3072: CAKeyType.RSA_3072, 4096: CAKeyType.RSA_4096}.get(key.key_size)


def signature_hash(key_type: CAKeyType) -> hashes.SHA256 | hashes.SHA384:
    return hashes.SHA384() if key_type is CAKeyType.EC_P384 else hashes.SHA256()


class SoftwareSigner:
    """The key in memory: cryptography's builders sign with it, as they always did."""

    in_software = True

    def __init__(self, key: profile.IssuerKey) -> None:
        self.key = key
        pub = key.public_key()
        self.key_type = public_key_type(pub) or CAKeyType.EC_P256
        # Signing with an RSA CA key takes about 1 ms (3072) to 2.5 ms (4096), with
        # P-384 about 0.4 ms, and cryptography lets other threads run meanwhile;
        # with P-256 about 50 us, less than handing it to a thread costs (bench
        # enroll, P-256 CA: 0.58-0.61 in a thread, 0.71-0.73 on the loop).
        self.slow = self.key_type is not CAKeyType.EC_P256
        self._hash = profile.signature_hash(key)

    def public_key(self) -> PublicKey:
        return self.key.public_key()

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self.key, self._hash)

    def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        return builder.sign(self.key, self._hash)

    def sign_ocsp(self, builder: ocsp.OCSPResponseBuilder, responder: x509.Certificate) -> ocsp.OCSPResponse:
        return builder.responder_id(ocsp.OCSPResponderEncoding.HASH, responder).sign(self.key, self._hash)
