"""Who is on the other end of a handshake or a signature: peer checks built from policy objects.

Each returns a PeerCheck for kms.handshake (chain -> PeerInfo, or PeerRejected).
Revocation status comes in as a callable, so this stays pure: the server
answers it from its own records, an agent asks the server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from kms.errors import KmsError
from kms.handshake import PeerCheck, PeerInfo, PeerRejected
from kms.policy import AgentIdentity, AllOf, ChainsTo, ClientAuth, agent_name_of

__all__ = ["agent_peer", "server_peer"]

IsRevoked = Callable[[str], bool]


def _load(chain: tuple[bytes, ...]) -> tuple[x509.Certificate, list[x509.Certificate]]:
    try:
        certs = [x509.load_der_x509_certificate(c) for c in chain]
    except ValueError:
        raise PeerRejected("the peer's certificate does not parse") from None
    return certs[0], certs[1:]


def _not_revoked(serial: str, is_revoked: IsRevoked) -> None:
    if is_revoked(serial):
        raise PeerRejected(f"the peer's certificate {serial} was revoked")


def agent_peer(
    ca: x509.Certificate, trust_domain: str, expected: str | None, now: datetime, is_revoked: IsRevoked
) -> PeerCheck:
    """An agent of this CA (the one named expected, if given), valid at now and not revoked."""
    policy = AllOf(ChainsTo([ca]), ClientAuth(), AgentIdentity(trust_domain, expected))

    def check(chain: tuple[bytes, ...]) -> PeerInfo:
        leaf, _ = _load(chain)
        try:
            policy.verify(leaf, now)
        except KmsError as exc:
            raise PeerRejected(f"the peer is not acceptable: {exc.message}") from None
        key = leaf.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise PeerRejected("the peer's key is not RSA")
        serial = format(leaf.serial_number, "x")
        _not_revoked(serial, is_revoked)
        return PeerInfo(agent_name_of(leaf, trust_domain), serial, key)

    return check


def server_peer(ca: x509.Certificate, host: str, now: datetime) -> PeerCheck:
    """The kms-server itself: a serverAuth certificate of this CA for host, valid at now."""
    try:
        subject: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)

    def check(chain: tuple[bytes, ...]) -> PeerInfo:
        leaf, intermediates = _load(chain)
        verifier = PolicyBuilder().store(Store([ca])).time(now).build_server_verifier(subject)  # type: ignore[arg-type]
        try:
            verifier.verify(leaf, intermediates)
        except VerificationError as exc:
            raise PeerRejected(f"the server's certificate is not acceptable for {host}: {exc}") from None
        key = leaf.public_key()
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise PeerRejected("the server's key type is not supported")
        return PeerInfo("server", format(leaf.serial_number, "x"), key)

    return check
