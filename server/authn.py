"""Who is calling: turns a peer certificate into a Caller, on every call.

TLS has already checked the chain for the mTLS listener; this re-checks it
with our policy objects (chain to this CA, clientAuth, one agent ID), once per
distinct certificate, and then on every call checks the validity window and
that the store knows the serial. Parsed certificates are cached by their PEM
so the hot path never re-parses or re-verifies.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from kms.errors import REVOKED_MARK, Revoked, Unauthenticated
from kms.identity import agent_spiffe_id
from kms.policy import AgentIdentity, AllOf, ChainsTo, ClientAuth, agent_name_of
from server.clock import Clock
from server.store import Store

__all__ = ["Caller", "PeerAuthenticator"]


@dataclass(frozen=True)
class Caller:
    name: str
    groups: tuple[str, ...]
    serial: str
    spiffe_id: str
    not_before: datetime
    not_after: datetime
    # The calling certificate's key: keys are wrapped for it (parsed once, cached).
    public_key: rsa.RSAPublicKey


@dataclass(frozen=True)
class _Checked:
    name: str
    serial: str
    not_before: datetime
    not_after: datetime
    public_key: rsa.RSAPublicKey


class PeerAuthenticator:
    def __init__(
        self, ca_cert: x509.Certificate, trust_domain: str, store: Store, clock: Clock, cache_size: int = 4096
    ) -> None:
        self._policy = AllOf(ChainsTo([ca_cert]), ClientAuth(), AgentIdentity(trust_domain))
        self._trust_domain = trust_domain
        self._store = store
        self._clock = clock
        self._cache: OrderedDict[bytes, _Checked] = OrderedDict()
        self._cache_size = cache_size

    def _check(self, pem: bytes, now: datetime) -> _Checked:
        checked = self._cache.get(pem)
        if checked is not None:
            self._cache.move_to_end(pem)
            return checked
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise Unauthenticated("client certificate does not parse: enroll again") from None
        self._policy.verify(cert, now)
        public_key = cert.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise Unauthenticated("client certificate key is not RSA: enroll again")
        checked = _Checked(
            agent_name_of(cert, self._trust_domain),
            format(cert.serial_number, "x"),
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
            public_key,
        )
        self._cache[pem] = checked
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return checked

    async def authenticate(self, pem: bytes) -> Caller:
        """Returns the caller named by a peer certificate (PEM).

        Raises:
            Unauthenticated: the certificate is not ours, not a client
                certificate, outside its validity, or unknown to the store.
        """
        now = self._clock()
        checked = self._check(pem, now)
        if not checked.not_before <= now < checked.not_after:
            raise Unauthenticated(
                f"client certificate {checked.serial} is valid only from {checked.not_before:%Y-%m-%dT%H:%M:%SZ}"
                f" to {checked.not_after:%Y-%m-%dT%H:%M:%SZ}: check the clock, or enroll again with a new token"
            )
        agent = await self._store.get_agent_by_serial(checked.serial)
        if agent is None or agent.name != checked.name:
            raise Unauthenticated(
                f"client certificate {checked.serial} is not known to this server: enroll again"
            )
        if agent.latest.revoked_at is not None:
            raise Revoked(
                f"client certificate {checked.serial} {REVOKED_MARK} ({agent.latest.revocation_reason}):"
                " enroll again with a token created with --allow-reenroll"
            )
        return Caller(
            checked.name,
            agent.groups,
            checked.serial,
            agent_spiffe_id(self._trust_domain, checked.name),
            checked.not_before,
            checked.not_after,
            checked.public_key,
        )
