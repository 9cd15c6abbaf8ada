"""Enrollment from the agent's side: pin the CA, make a key, trade a CSR and a token."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.bootstrap import pin_ca
from agent.client import KmsClient
from agent.issuance import accept_issued, new_key_and_csr, trust_domain_of
from agent.state import AgentIdentity, AgentSettings
from kms.addresses import parse_hostport
from kms.csr import ALLOWED_RSA_BITS
from kms.errors import InvalidArgument, Unauthenticated
from kms.identity import fingerprint, fingerprint_matches, parse_fingerprint

__all__ = ["enroll"]


def _pem_bundle(pem: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise Unauthenticated("the server sent a CA bundle that does not parse") from None


def enroll(
    *, server: str, enroll_server: str, token: str, ca_fingerprint: str, key_size: int, timeout: float
) -> AgentIdentity:
    """Runs the whole enrollment and returns the new identity (not yet saved).

    The token is sent only after the enrollment endpoint proved it holds a key
    certified by the pinned CA.
    """
    pinned = parse_fingerprint(ca_fingerprint)
    if key_size not in ALLOWED_RSA_BITS:
        raise InvalidArgument("--key-size must be 2048, 3072 or 4096")
    parse_hostport(server, what="--server")
    host, port = parse_hostport(enroll_server, what="--enroll-server")
    ca = pin_ca(host, port, pinned, timeout)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)

    key, csr_der = new_key_and_csr(key_size)

    with KmsClient(enroll_server, ca_pem, timeout=timeout) as client:
        bundle = _pem_bundle(client.get_ca_bundle())
        if not any(fingerprint_matches(c.public_bytes(serialization.Encoding.DER), pinned) for c in bundle):
            raise Unauthenticated("the server's CA bundle does not contain the pinned CA")
        resp = client.enroll(token, csr_der)

    cert = accept_issued(resp.certificate_der, ca, trust_domain_of(resp.spiffe_id), resp.name, key)
    settings = AgentSettings(
        name=resp.name,
        groups=list(resp.groups),
        spiffe_id=resp.spiffe_id,
        server=server,
        enroll_server=enroll_server,
        ca_fingerprint=fingerprint(ca.public_bytes(serialization.Encoding.DER)),
    )
    return AgentIdentity(settings, key, cert, ca_pem)
