"""Certificate renewal: a new key, a CSR, and the current certificate as the proof of identity."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.client import KmsClient
from agent.state import AgentIdentity, StateDir
from kms.errors import Unauthenticated
from kms.policy import AgentIdentity as AgentIdentityPolicy
from kms.policy import AllOf, CertificateRejected, ChainsTo, ClientAuth

__all__ = ["DEFAULT_RENEW_FRACTION", "renew", "renewal_due"]

logger = logging.getLogger(__name__)

DEFAULT_RENEW_FRACTION = 2 / 3


def renewal_due(identity: AgentIdentity, fraction: float, now: datetime | None = None) -> bool:
    start, end = identity.cert.not_valid_before_utc, identity.cert.not_valid_after_utc
    return (now or datetime.now(UTC)) >= start + (end - start) * fraction


def renew(state: StateDir, identity: AgentIdentity, client: KmsClient) -> AgentIdentity:
    """Renews now (with a new key of the same size) and saves the result; returns the new identity."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=identity.key.key_size)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    resp = client.renew(csr.public_bytes(serialization.Encoding.DER))
    cert = x509.load_der_x509_certificate(resp.certificate_der)
    ca = x509.load_pem_x509_certificate(identity.ca_bundle_pem)
    trust_domain = identity.settings.spiffe_id.removeprefix("spiffe://").split("/", 1)[0]
    try:
        AllOf(ChainsTo([ca]), ClientAuth(), AgentIdentityPolicy(trust_domain, identity.settings.name)).verify(
            cert, datetime.now(UTC)
        )
    except CertificateRejected as exc:
        raise Unauthenticated(
            f"the server issued a certificate this agent cannot use: {exc.message}"
        ) from exc
    if cert.public_key() != key.public_key():
        raise Unauthenticated("the server issued a certificate for another key")
    renewed = AgentIdentity(identity.settings, key, cert, identity.ca_bundle_pem)
    state.save(renewed)
    logger.info(
        "certificate renewed",
        extra={"serial": format(cert.serial_number, "x"), "not_after": cert.not_valid_after_utc.isoformat()},
    )
    return renewed
