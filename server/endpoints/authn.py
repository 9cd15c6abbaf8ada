"""Who is calling: turns a peer certificate into a Caller, on every call.

TLS has already checked the chain for the mTLS listener; this re-checks it
with our policy objects (chain to this CA, clientAuth, one agent ID), once per
distinct certificate, and then on every call checks the validity window and
revocation. Parsed certificates are cached by their PEM, each with its Caller
once the store has named the certificate's agent and groups (which never
change), so the hot path neither re-parses, re-verifies, waits for the store
nor builds a Caller. Revocation
is checked against the revocation service's in-memory map, which is loaded
at start and updated as each revocation commits, before it is acknowledged
and even if the revoking call was cancelled meanwhile (server/store/completion.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from kms.errors import Unauthenticated
from kms.identity import agent_spiffe_id
from kms.policy import AgentIdentity, AllOf, ChainsTo, ClientAuth, agent_name_of
from server.clock import Clock
from server.store import Store, rules

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


class _Checked:
    """A certificate that passed the policy, and its Caller once the store named its agent's groups."""

    __slots__ = ("caller", "name", "not_after", "not_before", "public_key", "serial")

    def __init__(
        self, name: str, serial: str, not_before: datetime, not_after: datetime, public_key: rsa.RSAPublicKey
    ) -> None:
        self.name = name
        self.serial = serial
        self.not_before = not_before
        self.not_after = not_after
        self.public_key = public_key
        # Built on the first call the store admitted: what it holds never changes for a
        # certificate (its groups are the agent's at enrollment), so every later call reuses it.
        self.caller: Caller | None = None


class PeerAuthenticator:
    def __init__(
        self,
        ca_cert: x509.Certificate,
        trust_domain: str,
        store: Store,
        clock: Clock,
        revocation_reason: Callable[[str], str | None],
        cache_size: int = 4096,
    ) -> None:
        self._trust_domain = trust_domain
        self._store = store
        self._clock = clock
        self._revocation_reason = revocation_reason
        self._cache: OrderedDict[bytes, _Checked] = OrderedDict()
        self._cache_size = cache_size
        # Each agent's last authenticated call (Unix seconds), since start: `kms-server top`.
        self._seen: dict[str, int] = {}
        self.trust([ca_cert])

    def trust(self, roots: Sequence[x509.Certificate]) -> None:
        """Accepts certificates of these CAs from now on (server/ca/trust.py: every generation not
        retired); what was checked under the old ones is checked again."""
        self._policy = AllOf(
            ChainsTo(roots, advice="enroll again"), ClientAuth(), AgentIdentity(self._trust_domain)
        )
        self._cache.clear()

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

    async def _lookup(self, checked: _Checked) -> Caller:
        """The store's word on a certificate not seen before: its Caller (cached), unless unknown or revoked."""
        agent = await self._store.get_agent_by_serial(checked.serial)
        if agent is None or agent.name != checked.name:
            raise Unauthenticated(
                f"client certificate {checked.serial} is not known to this server: enroll again"
            )
        if agent.latest.revoked_at is not None:
            raise rules.caller_revoked(checked.serial, agent.latest.revocation_reason or "unspecified")
        checked.caller = Caller(
            checked.name,
            agent.groups,
            checked.serial,
            agent_spiffe_id(self._trust_domain, checked.name),
            checked.not_before,
            checked.not_after,
            checked.public_key,
        )
        return checked.caller

    def last_seen(self, name: str) -> int:
        """When name last made an authenticated call to this server (Unix seconds; 0: not since start)."""
        return self._seen.get(name, 0)

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
        caller = checked.caller or await self._lookup(checked)
        reason = self._revocation_reason(checked.serial)  # after any await: the freshest word
        if reason is not None:
            raise rules.caller_revoked(checked.serial, reason)
        self._seen[checked.name] = int(now.timestamp())
        return caller
