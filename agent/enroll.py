"""Enrollment from the agent's side: pin the CA, make a key, trade a CSR and a token.

With several enrollment addresses (replicas), each is tried in order, the whole
flow (pin, CA bundle, enroll) at each; only UNAVAILABLE moves on to the next.
Any other answer is final: a refused token must not be offered to another
replica (tokens are single-use), nor a mismatched CA be tried elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.bootstrap import pin_ca
from agent.client import KmsClient
from agent.issuance import accept_issued, csr_for, new_key_and_csr, trust_domain_of
from agent.servers import Servers
from agent.state import AgentIdentity, AgentSettings
from kms.addresses import parse_hostport
from kms.csr import ALLOWED_RSA_BITS
from kms.errors import FailedPrecondition, InvalidArgument, Unauthenticated, Unavailable
from kms.identity import fingerprint, fingerprint_matches, parse_fingerprint
from kms.v1 import enrollment_pb2

__all__ = ["enroll"]


def _pem_bundle(pem: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise Unauthenticated("the server sent a CA bundle that does not parse") from None


def _enroll_at(
    address: str, pinned: str, token: str, csr: Callable[[], bytes], timeout: float
) -> tuple[x509.Certificate, enrollment_pb2.EnrollResponse]:
    """The whole exchange with one enrollment address: the pinned CA and the server's answer."""
    host, port = parse_hostport(address, what="--enroll-server")
    ca = pin_ca(host, port, pinned, timeout)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    csr_der = csr()  # made once a server answered: no slow key generation before a quick failure
    with KmsClient([address], ca_pem, timeout=timeout) as client:
        bundle = _pem_bundle(client.get_ca_bundle())
        if not any(fingerprint_matches(c.public_bytes(serialization.Encoding.DER), pinned) for c in bundle):
            raise Unauthenticated("the server's CA bundle does not contain the pinned CA")
        try:
            return ca, client.enroll(token, csr_der)
        except Unavailable as exc:
            # The token may have reached the server and been spent: another address
            # would only refuse it, and hide what happened. Final, not failed over.
            raise FailedPrecondition(
                f"enrollment at {address} was cut off after the token was sent ({exc.message}): it may have "
                "completed. Run the same kms-agent enroll again, with the same token, before the token expires:"
                " this agent kept its key, so the server answers with the certificate it issued, if it did"
            ) from None


def enroll(
    *,
    servers: Sequence[str],
    enroll_servers: Sequence[str],
    token: str,
    ca_fingerprint: str,
    key_size: int,
    timeout: float,
    key: rsa.RSAPrivateKey | None = None,
    keep_key: Callable[[rsa.RSAPrivateKey], None] = lambda key: None,
) -> tuple[AgentIdentity, int]:
    """Runs the whole enrollment; returns the new identity (not yet saved) and the
    event sequence number its first watch resumes after (the log's position at enrollment).

    The token is sent only after the enrollment endpoint proved it holds a key
    certified by the pinned CA.

    Args:
        key: the key of an earlier attempt with this token, whose reply was lost: the
            server answers a retry with the same key with the certificate it issued.
        keep_key: called with the key before the token is sent, to keep it for such a retry.

    Raises:
        Unavailable: no enrollment address answered (one line naming each).
        Unauthenticated: a CA that does not match the pin, or a refused token.
    """
    pinned = parse_fingerprint(ca_fingerprint)
    if key_size not in ALLOWED_RSA_BITS:
        raise InvalidArgument("--key-size must be 2048, 3072 or 4096")
    for address in (*servers, *enroll_servers):
        parse_hostport(address, what="server address")

    made: list[tuple[rsa.RSAPrivateKey, bytes]] = []

    def csr() -> bytes:
        if not made:
            made.append(csr_for(key) if key is not None else new_key_and_csr(key_size))
            keep_key(made[0][0])
        return made[0][1]

    ca, resp = Servers(enroll_servers).first_available(
        lambda address: _enroll_at(address, pinned, token, csr, timeout),
        what="the enrollment endpoint",
        hint="check --enroll-server (default: each --server's port + 1)",
    )

    key = made[0][0]
    cert = accept_issued(resp.certificate_der, [ca], trust_domain_of(resp.spiffe_id), resp.name, key)
    settings = AgentSettings(
        name=resp.name,
        groups=list(resp.groups),
        spiffe_id=resp.spiffe_id,
        servers=tuple(servers),
        enroll_servers=tuple(enroll_servers),
        ca_fingerprint=fingerprint(ca.public_bytes(serialization.Encoding.DER)),
    )
    return AgentIdentity(
        settings, key, cert, ca.public_bytes(serialization.Encoding.PEM)
    ), resp.watch_from_seq
