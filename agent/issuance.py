"""What enrollment and renewal share: a fresh key and CSR, and checking what the server issued."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from kms.errors import Unauthenticated
from kms.policy import AgentIdentity, AllOf, CertificateRejected, ChainsTo, ClientAuth

__all__ = ["accept_issued", "csr_for", "new_key_and_csr", "own_key", "trust_domain_of"]


def new_key_and_csr(bits: int) -> tuple[rsa.RSAPrivateKey, bytes]:
    """A new RSA key made here (it never leaves the machine) and a CSR (DER) for it.

    The subject is empty: the server takes nothing from a CSR but its key.
    """
    return csr_for(rsa.generate_private_key(public_exponent=65537, key_size=bits))


def own_key(pem: bytes) -> PrivateKeyTypes:
    """A private key this agent made and keeps in its 0600 state dir.

    Without OpenSSL's RSA consistency check (about 36 ms of every command's start for a
    2048-bit key): that check guards against keys crafted by someone else, and whoever can
    write this file holds the agent already. The key is still checked against the agent's
    certificate, and OpenSSL verifies each CRT result it computes with it.
    """
    return serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)


def csr_for(key: rsa.RSAPrivateKey) -> tuple[rsa.RSAPrivateKey, bytes]:
    """A CSR (DER) for an existing key, with an empty subject."""
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return key, csr.public_bytes(serialization.Encoding.DER)


def trust_domain_of(spiffe_id: str) -> str:
    return spiffe_id.removeprefix("spiffe://").split("/", 1)[0]


def accept_issued(
    cert_der: bytes, roots: Sequence[x509.Certificate], trust_domain: str, name: str, key: rsa.RSAPrivateKey
) -> x509.Certificate:
    """The issued certificate, if it chains to a trusted CA (the pinned one, or one of its verified
    trust bundle), names this agent and carries our key."""
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        AllOf(ChainsTo(roots), ClientAuth(), AgentIdentity(trust_domain, name)).verify(
            cert, datetime.now(UTC)
        )
    except CertificateRejected as exc:
        raise Unauthenticated(
            f"the server issued a certificate this agent cannot use: {exc.message}"
        ) from exc
    if cert.public_key() != key.public_key():
        raise Unauthenticated("the server issued a certificate for another key")
    return cert
