"""Who is on the other end of a handshake or a signature: peer checks built from policy objects.

Each returns a PeerCheck for kms.handshake (chain -> PeerInfo, or PeerRejected).
Revocation status comes in as a callable, so this stays pure: the server
answers it from its own records, an agent asks the server.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from kms.errors import KmsError
from kms.handshake import PeerCheck, PeerInfo, PeerRejected
from kms.policy import AgentIdentity, AllOf, ChainsTo, ClientAuth, agent_name_of, issued_by

__all__ = ["AgentPeers", "agent_peer", "server_peer"]

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


def _verified_agent(
    policy: AllOf, trust_domain: str, chain: tuple[bytes, ...], now: datetime, who: str = "peer"
) -> tuple[PeerInfo, x509.Certificate]:
    leaf, _ = _load(chain)
    try:
        policy.verify(leaf, now)
    except KmsError as exc:
        raise PeerRejected(f"the {who} is not acceptable: {exc.message}") from None
    key = leaf.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise PeerRejected("the peer's key is not RSA")
    return PeerInfo(agent_name_of(leaf, trust_domain), format(leaf.serial_number, "x"), key), leaf


def agent_peer(
    roots: Sequence[x509.Certificate],
    trust_domain: str,
    expected: str | None,
    now: datetime,
    is_revoked: IsRevoked,
    who: str = "peer",
) -> PeerCheck:
    """An agent of one of these CAs (the one named expected, if given), valid at now and not revoked.

    who names the agent in refusals: "peer" in a handshake, "signer" for a signature.
    """
    policy = AllOf(ChainsTo(roots), ClientAuth(), AgentIdentity(trust_domain, expected))

    def check(chain: tuple[bytes, ...]) -> PeerInfo:
        peer, _ = _verified_agent(policy, trust_domain, chain, now, who)
        _not_revoked(peer.serial, is_revoked)
        return peer

    return check


class AgentPeers:
    """agent_peer (any agent) for a long-lived process that sees the same agents again and again.

    A certificate's chain signature and profile are verified once and
    remembered by its DER; its validity at the time of use, and its
    revocation, are checked on every use.
    """

    def __init__(
        self, roots: Sequence[x509.Certificate], trust_domain: str, is_revoked: IsRevoked, size: int = 4096
    ) -> None:
        self._trust_domain = trust_domain
        self._is_revoked = is_revoked
        self._verified: OrderedDict[bytes, tuple[PeerInfo, datetime, datetime]] = OrderedDict()
        self._size = size
        self.trust(roots)

    def trust(self, roots: Sequence[x509.Certificate]) -> None:
        """Accepts agents of these CAs from now on (a CA generation prepared, activated or retired):
        what was verified under the old ones is verified again."""
        self._roots = list(roots)
        self._policy = AllOf(ChainsTo(self._roots), ClientAuth(), AgentIdentity(self._trust_domain))
        self._verified.clear()

    def _ca_until(self, leaf: x509.Certificate) -> datetime:
        """When the CA that issued leaf (a verified one) expires: a cached certificate lasts no longer."""
        issuers = [root.not_valid_after_utc for root in self._roots if issued_by(leaf, root)]
        return max(issuers, default=leaf.not_valid_after_utc)

    def at(self, now: datetime) -> PeerCheck:
        def check(chain: tuple[bytes, ...]) -> PeerInfo:
            hit = self._verified.get(chain[0]) if chain else None
            if hit is None:
                peer, leaf = _verified_agent(self._policy, self._trust_domain, chain, now)
                until = min(leaf.not_valid_after_utc, self._ca_until(leaf))
                self._verified[chain[0]] = (peer, leaf.not_valid_before_utc, until)
                if len(self._verified) > self._size:
                    self._verified.popitem(last=False)
            else:
                peer, since, until = hit
                if not since <= now < until:
                    raise PeerRejected(
                        f"the peer is not acceptable: its certificate {peer.serial} is not valid now"
                    )
            _not_revoked(peer.serial, self._is_revoked)
            return peer

        return check


def server_peer(roots: Sequence[x509.Certificate], host: str, now: datetime) -> PeerCheck:
    """The kms-server itself: a serverAuth certificate of one of these CAs for host, valid at now."""
    try:
        subject: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)

    def check(chain: tuple[bytes, ...]) -> PeerInfo:
        leaf, intermediates = _load(chain)
        verifier = PolicyBuilder().store(Store(list(roots))).time(now).build_server_verifier(subject)  # type: ignore[arg-type]
        try:
            verifier.verify(leaf, intermediates)
        except VerificationError as exc:
            raise PeerRejected(f"the server's certificate is not acceptable for {host}: {exc}") from None
        key = leaf.public_key()
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise PeerRejected("the server's key type is not supported")
        return PeerInfo("server", format(leaf.serial_number, "x"), key)

    return check
