"""Enrollment from the agent's side: pin the CA, verify the trust bundle from it, make a key,
trade a CSR and a token.

With several enrollment addresses (replicas), each is tried in order, the whole
flow (pin, CA bundle, enroll) at each; only UNAVAILABLE moves on to the next.
Any other answer is final: a refused token must not be offered to another
replica (tokens are single-use), nor a mismatched CA be tried elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.bootstrap import presented_ca
from agent.client import KmsClient
from agent.issuance import accept_issued, csr_for, new_key_and_csr, trust_domain_of
from agent.servers import Servers
from agent.state import AgentIdentity, AgentSettings
from kms.addresses import parse_hostport
from kms.cabundle import BundleError, parse_bundle, verify_bundle
from kms.csr import ALLOWED_RSA_BITS
from kms.errors import FailedPrecondition, InvalidArgument, Unauthenticated, Unavailable
from kms.identity import fingerprint, fingerprint_matches, parse_fingerprint
from kms.v1 import enrollment_pb2

__all__ = ["Enrolled", "enroll"]


@dataclass(frozen=True)
class Enrolled:
    """What a finished enrollment hands back to be saved (StateDir.save)."""

    identity: AgentIdentity
    watch_from_seq: int  # the event log's position at enrollment: the first watch resumes after it
    trust_bundle_pem: bytes  # the server's trust bundle, verified from the pinned CA
    trust_bundle_version: int  # its version (GetCABundle's trust_bundle_version), stored with it


def _trust_from_pin(
    address: str, pem: str, pinned: str, now: datetime
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The pinned CA and every CA of the server's trust bundle (pem), verified from it.

    Raises:
        Unauthenticated: the bundle does not hold the pinned CA, or a CA of it does not verify
            from it; one line saying what was expected, what the server offers and what to do.
    """
    fix = (
        "check --ca-fingerprint against `kms-server ca status` (a CA retired since the token was made:"
        " ask for a new token and pin the active CA); the join token was not sent"
    )
    try:
        bundle = parse_bundle(pem)
    except BundleError as exc:
        raise Unauthenticated(
            f"the server at {address} sent a trust bundle that does not parse: {exc}"
        ) from None
    held = [c for c in bundle.cas if fingerprint_matches(c.public_bytes(serialization.Encoding.DER), pinned)]
    if not held:
        offered = ", ".join(fingerprint(c.public_bytes(serialization.Encoding.DER)) for c in bundle.cas)
        raise Unauthenticated(
            f"the server's trust bundle at {address} (CAs {offered}) does not match --ca-fingerprint {pinned}: {fix}"
        )
    try:
        trusted = verify_bundle(bundle, held[0], now)
    except BundleError as exc:
        raise Unauthenticated(
            f"the server's trust bundle at {address} does not verify from the CA of --ca-fingerprint"
            f" {pinned} ({exc}): {fix}"
        ) from None
    return held[0], [t.cert for t in trusted]


def _enroll_at(
    address: str, pinned: str, token: str, csr: Callable[[], bytes], timeout: float
) -> tuple[x509.Certificate, list[x509.Certificate], tuple[str, int], enrollment_pb2.EnrollResponse]:
    """The whole exchange with one enrollment address: the pinned CA, the CAs of the server's
    trust bundle verified from it, the bundle and its version, and the server's answer.

    The bundle is public and checked by its signatures, so it is read over a connection that
    verifies the server only under the CA it presents; the token then goes over one that
    verifies it under the bundle's CAs (after a `ca activate` the server's certificate comes
    from a CA newer than the pinned one).
    """
    host, port = parse_hostport(address, what="--enroll-server")
    presented = presented_ca(host, port, timeout)
    with KmsClient([address], presented.public_bytes(serialization.Encoding.PEM), timeout=timeout) as client:
        pem, version = client.get_trust_bundle()
    ca, trusted = _trust_from_pin(address, pem, pinned, datetime.now(UTC))
    if presented not in trusted:  # else the connection below fails, and looks like a network fault
        seen = fingerprint(presented.public_bytes(serialization.Encoding.DER))
        raise Unauthenticated(
            f"the server at {address} presents a certificate of CA {seen}, which is not in its trust"
            f" bundle verified from --ca-fingerprint {pinned}: check the address; the join token was not sent"
        )
    roots = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in trusted)
    csr_der = csr()  # made once a server answered: no slow key generation before a quick failure
    with KmsClient([address], roots, timeout=timeout) as client:
        try:
            return ca, trusted, (pem, version), client.enroll(token, csr_der)
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
) -> Enrolled:
    """Runs the whole enrollment; returns the new identity, the event sequence number its first
    watch resumes after (the log's position at enrollment) and the trust bundle, none yet saved.

    The token is sent only after the server's trust bundle verified from the pinned CA (which
    must be in it) and the enrollment endpoint proved it holds a key certified by a CA of it:
    a token made before a `ca activate` still enrolls, while the old CA is in the bundle.

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

    ca, trusted, (bundle_pem, version), resp = Servers(enroll_servers).first_available(
        lambda address: _enroll_at(address, pinned, token, csr, timeout),
        what="the enrollment endpoint",
        hint="check --enroll-server (default: each --server's port + 1)",
    )

    key = made[0][0]
    cert = accept_issued(resp.certificate_der, trusted, trust_domain_of(resp.spiffe_id), resp.name, key)
    settings = AgentSettings(
        name=resp.name,
        groups=list(resp.groups),
        spiffe_id=resp.spiffe_id,
        servers=tuple(servers),
        enroll_servers=tuple(enroll_servers),
        ca_fingerprint=fingerprint(ca.public_bytes(serialization.Encoding.DER)),
    )
    identity = AgentIdentity(settings, key, cert, ca.public_bytes(serialization.Encoding.PEM), tuple(trusted))
    return Enrolled(identity, resp.watch_from_seq, bundle_pem.encode(), version)
