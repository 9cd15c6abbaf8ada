"""Join tokens and enrollment: the one way an agent gets its first identity.

The name and groups come from the token, the public key from the CSR, and
nothing else from the request. A token is consumed in the same transaction
that records the certificate, so a failed enrollment leaves it unused and
two racing ones cannot both succeed.

The token is checked before the CSR is parsed: only the holder of a valid
token reaches the ASN.1 parser, and a bad token is refused for the price of
one store read. Refusals are neither logged nor audited here one by one: the
interceptor counts them per peer address (server/failures.py), because
anybody can send bad tokens as fast as the network allows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kms.csr import check_csr
from kms.errors import InvalidArgument, Unauthenticated
from kms.identity import MAX_GROUPS, agent_spiffe_id, validate_agent_name, validate_group
from kms.tokens import JoinToken, secret_matches
from server.authn import Caller
from server.ca import CertificateAuthority
from server.clock import Clock
from server.limits import AnonymousFailure
from server.store import AgentRecord, AuditEntry, CertificateRecord, JoinTokenRecord, Store

__all__ = ["Enrolled", "EnrollmentService", "IssuedToken", "MalformedToken", "RefusedToken", "serial_hex"]

logger = logging.getLogger(__name__)

# One message for unknown, used, expired and mismatched tokens: no oracle.
_BAD_TOKEN = "join token is invalid, expired or already used: ask the administrator for a new one"  # noqa: S105 - a message, not a secret
MIN_TOKEN_TTL_SECONDS = 1


class RefusedToken(Unauthenticated, AnonymousFailure):
    """A join token that is unknown, used, expired or wrong (one message for all: no oracle)."""

    kind = "bad-token"

    def __init__(self, token_id: str) -> None:
        super().__init__(_BAD_TOKEN)
        self.token_id = token_id  # not secret: it names the token in logs


class MalformedToken(InvalidArgument, AnonymousFailure):
    """Text that does not have the shape of a join token."""

    kind = "malformed-token"


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


@dataclass(frozen=True)
class IssuedToken:
    token: JoinToken
    record: JoinTokenRecord


@dataclass(frozen=True)
class Enrolled:
    agent: AgentRecord
    certificate: x509.Certificate
    spiffe_id: str
    # The event log's position just before the enrollment committed: the agent's
    # first Watch starts after it, so it is not replayed the history before it.
    watch_from_seq: int = 0


class EnrollmentService:
    def __init__(
        self,
        store: Store,
        ca: CertificateAuthority,
        clock: Clock,
        *,
        default_token_ttl: timedelta,
        max_token_ttl: timedelta,
        on_issued: Callable[[CertificateRecord], None] = lambda cert: None,
    ) -> None:
        self._store = store
        # Told of each certificate stored (enrollment or renewal): the expiry gauges.
        self._on_issued = on_issued
        self._ca = ca
        self._clock = clock
        self._default_ttl = default_token_ttl
        self._max_ttl = max_token_ttl

    async def create_token(
        self, name: str, groups: list[str], ttl_seconds: int | None, *, allow_reenroll: bool = False
    ) -> IssuedToken:
        """Creates a single-use join token bound to name and groups.

        Raises:
            InvalidArgument: bad name or group, too many groups, TTL out of bounds.
        """
        validate_agent_name(name)
        clean = sorted({validate_group(g) for g in groups})
        if len(clean) > MAX_GROUPS:
            raise InvalidArgument(f"a token may carry at most {MAX_GROUPS} groups")
        longest = int(self._max_ttl.total_seconds())
        if ttl_seconds is not None and not MIN_TOKEN_TTL_SECONDS <= ttl_seconds <= longest:
            raise InvalidArgument(f"token TTL must be between 1s and {longest}s")
        ttl = timedelta(seconds=ttl_seconds) if ttl_seconds is not None else self._default_ttl
        now = int(self._clock().timestamp())
        token = JoinToken.generate()
        record = JoinTokenRecord(
            token.token_id, token.secret_hash, name, tuple(clean), now, now + int(ttl.total_seconds())
        )
        await self._store.add_join_token(
            record,
            allow_reenroll=allow_reenroll,
            audit=AuditEntry(now, "admin", "token.create", f"agent:{name} token:{token.token_id}"),
        )
        logger.info("join token created", extra={"token_id": token.token_id, "agent": name})
        return IssuedToken(token, record)

    async def enroll(self, token_text: str, csr_der: bytes) -> Enrolled:
        """Checks the token, then the CSR, issues, then consumes the token and records the certificate.

        Raises:
            MalformedToken: the token's shape is bad.
            RefusedToken: the token is unknown, used, expired or wrong.
            InvalidArgument: the CSR is bad (the token is left unused).
        """
        try:
            token = JoinToken.parse(token_text)
        except InvalidArgument as exc:
            raise MalformedToken(exc.message) from None
        record = await self._store.get_join_token(token.token_id)
        now = self._clock()
        if (
            record is None
            or not secret_matches(token, record.secret_hash)
            or record.used_at is not None
            or record.expires_at <= int(now.timestamp())
        ):
            raise RefusedToken(token.token_id)
        public_key = check_csr(csr_der)

        cert = await self._ca.issue_agent(public_key, record.name)
        cert_record = CertificateRecord(
            serial=serial_hex(cert),
            agent_name=record.name,
            not_before=int(cert.not_valid_before_utc.timestamp()),
            not_after=int(cert.not_valid_after_utc.timestamp()),
            der=cert.public_bytes(serialization.Encoding.DER),
            issued_at=int(now.timestamp()),
            token_id=record.token_id,
        )
        # Read before the enrollment commits: an event committed meanwhile is
        # replayed to the new agent (harmless), never skipped.
        watch_from_seq = await self._store.last_seq()
        agent = await self._store.enroll(
            record.token_id,
            token.secret_hash,
            int(now.timestamp()),
            cert_record,
            audit=AuditEntry(
                int(now.timestamp()),
                f"token:{record.token_id}",
                "enroll",
                f"agent:{record.name} serial:{cert_record.serial}",
            ),
        )
        if agent is None:  # lost a race for the token, or it expired meanwhile
            raise RefusedToken(token.token_id)
        self._on_issued(cert_record)
        logger.info(
            "agent enrolled",
            extra={"agent": agent.name, "serial": cert_record.serial, "token_id": record.token_id},
        )
        return Enrolled(agent, cert, agent_spiffe_id(self._ca.trust_domain, agent.name), watch_from_seq)

    async def renew(self, caller: Caller, csr_der: bytes) -> x509.Certificate:
        """Issues a new certificate for a new key, with the caller's identity and groups.

        The caller was authenticated on this call (valid, unexpired, unrevoked);
        the new key must differ from the current one (renewal rekeys).
        """
        public_key = check_csr(csr_der)
        if public_key == caller.public_key:
            raise InvalidArgument("renewal needs a new key: make a new RSA key and a CSR for it")
        cert = await self._ca.issue_agent(public_key, caller.name)
        now = int(self._clock().timestamp())
        record = CertificateRecord(
            serial=serial_hex(cert),
            agent_name=caller.name,
            not_before=int(cert.not_valid_before_utc.timestamp()),
            not_after=int(cert.not_valid_after_utc.timestamp()),
            der=cert.public_bytes(serialization.Encoding.DER),
            issued_at=now,
            token_id=None,
        )
        await self._store.add_certificate(
            record,
            caller.groups,
            renewed_from=caller.serial,
            audit=AuditEntry(now, f"agent:{caller.name}/{caller.serial}", "renew", f"serial:{record.serial}"),
        )
        self._on_issued(record)
        logger.info(
            "certificate renewed", extra={"agent": caller.name, "old": caller.serial, "new": record.serial}
        )
        return cert
