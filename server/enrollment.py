"""Join tokens and enrollment: the one way an agent gets its first identity.

The name and groups come from the token, the public key from the CSR, and
nothing else from the request. A token is consumed in the same transaction
that records the certificate, so a failed enrollment leaves it unused and
two racing ones cannot both succeed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kms.csr import check_csr
from kms.errors import InvalidArgument, Unauthenticated
from kms.identity import MAX_GROUPS, agent_spiffe_id, validate_agent_name, validate_group
from kms.tokens import JoinToken, secret_matches
from server.authn import Caller
from server.ca import CertificateAuthority
from server.clock import Clock
from server.store import AgentRecord, AuditEntry, CertificateRecord, JoinTokenRecord, Store, rules

__all__ = ["Enrolled", "EnrollmentService", "IssuedToken", "serial_hex"]

logger = logging.getLogger(__name__)

# One message for unknown, used, expired and mismatched tokens: no oracle.
_BAD_TOKEN = "join token is invalid, expired or already used: ask the administrator for a new one"  # noqa: S105 - a message, not a secret
MIN_TOKEN_TTL_SECONDS = 1
_RENEWALS_KEPT = 100_000


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


class EnrollmentService:
    def __init__(
        self,
        store: Store,
        ca: CertificateAuthority,
        clock: Clock,
        *,
        default_token_ttl: timedelta,
        max_token_ttl: timedelta,
        renew_window: timedelta = timedelta(0),
    ) -> None:
        self._store = store
        self._ca = ca
        self._clock = clock
        self._default_ttl = default_token_ttl
        self._max_ttl = max_token_ttl
        # One renewal per agent in this long: a stolen certificate cannot mint certificates
        # by the hundred, and its thief's renewals are bounded like its owner's.
        self._renew_window = int(renew_window.total_seconds())
        # When each agent last renewed through this server: refuses a renewal before the CA
        # signs anything. The store's check, in the renewal's transaction, is the one that holds.
        self._renewed_at: OrderedDict[str, int] = OrderedDict()

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
        """Checks the CSR and the token, issues, then consumes the token and records the certificate.

        Raises:
            InvalidArgument: the CSR or the token's shape is bad (token untouched).
            Unauthenticated: the token is unknown, used, expired or wrong.
        """
        public_key = check_csr(csr_der)
        token = JoinToken.parse(token_text)
        record = await self._store.get_join_token(token.token_id)
        now = self._clock()
        if (
            record is None
            or not secret_matches(token, record.secret_hash)
            or record.used_at is not None
            or record.expires_at <= int(now.timestamp())
        ):
            await self._refused(token, int(now.timestamp()))

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
            await self._refused(token, int(now.timestamp()))
        logger.info(
            "agent enrolled",
            extra={"agent": agent.name, "serial": cert_record.serial, "token_id": record.token_id},
        )
        return Enrolled(agent, cert, agent_spiffe_id(self._ca.trust_domain, agent.name))

    async def renew(self, caller: Caller, csr_der: bytes) -> x509.Certificate:
        """Issues a new certificate for a new key, with the caller's identity and groups.

        The caller was authenticated on this call (valid, unexpired, unrevoked);
        the new key must differ from the current one (renewal rekeys). The new
        certificate records the caller's as the one it was renewed from.

        Raises:
            ResourceExhausted: the agent was issued a renewed certificate within the renewal window.
        """
        public_key = check_csr(csr_der)
        if public_key == caller.public_key:
            raise InvalidArgument("renewal needs a new key: make a new RSA key and a CSR for it")
        now = int(self._clock().timestamp())
        last = self._renewed_at.get(caller.name)
        if self._renew_window and last is not None and last > now - self._renew_window:
            raise rules.renewed_too_soon(caller.name, last, now - self._renew_window, now)
        cert = await self._ca.issue_agent(public_key, caller.name)
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
            not_renewed_since=now - self._renew_window if self._renew_window else None,
            audit=AuditEntry(now, f"agent:{caller.name}/{caller.serial}", "renew", f"serial:{record.serial}"),
        )
        self._renewed_at[caller.name] = now
        self._renewed_at.move_to_end(caller.name)
        if len(self._renewed_at) > _RENEWALS_KEPT:
            self._renewed_at.popitem(last=False)
        logger.info(
            "certificate renewed", extra={"agent": caller.name, "old": caller.serial, "new": record.serial}
        )
        return cert

    async def _refused(self, token: JoinToken, now: int) -> NoReturn:
        logger.info("enrollment refused", extra={"token_id": token.token_id})
        await self._store.append_audit(AuditEntry(now, f"token:{token.token_id}", "enroll", "-", "denied"))
        raise Unauthenticated(_BAD_TOKEN)
