"""Join tokens and enrollment: the one way an agent gets its first identity.

The name and groups come from the token, the public key from the CSR, and
nothing else from the request. A token is consumed in the same transaction
that records the certificate, so a failed enrollment leaves it unused and
two racing ones cannot both be issued a certificate.

The token is checked before the CSR is parsed: only the holder of a valid
token reaches the ASN.1 parser, and a bad token is refused for the price of
one store read. Refusals are neither logged nor audited here one by one: the
interceptor counts them per peer address (server/endpoints/failures.py), because
anybody can send bad tokens as fast as the network allows.

A reply can be lost after the commit (the server dies, the connection
drops). The agent then retries with the same token and the same key: within
the token's lifetime, that gets the certificate already issued for that key,
not a refusal. Any other reuse of a token is refused exactly like an unknown
one.

One name is one identity: a token for a name that holds a valid certificate
is made only with ``replace``, and enrolling with it revokes the earlier
certificates (superseded) in the same transaction.
"""

from __future__ import annotations

import hmac
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from kms.csr import check_csr
from kms.errors import InvalidArgument, Unauthenticated
from kms.identity import MAX_GROUPS, agent_spiffe_id, validate_agent_name, validate_group
from kms.tokens import JoinToken, secret_matches
from server.ca.authority import CertificateAuthority
from server.clock import Clock, now_seconds, seconds
from server.endpoints.authn import Caller
from server.endpoints.limits import AnonymousFailure
from server.store import (
    AgentRecord,
    AuditEntry,
    CertificateRecord,
    Enrollment,
    JoinTokenRecord,
    RevocationEvent,
    Store,
    rules,
)
from server.store.completion import after_commit

__all__ = ["Enrolled", "EnrollmentService", "IssuedToken", "MalformedToken", "RefusedToken", "serial_hex"]

logger = logging.getLogger(__name__)

# One message for unknown, used, expired and mismatched tokens: no oracle.
_BAD_TOKEN = "join token is invalid, expired or already used: ask the administrator for a new one"  # noqa: S105 - a message, not a secret
MIN_TOKEN_TTL_SECONDS = 1
_RENEWALS_KEPT = 100_000


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


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    """The key's SubjectPublicKeyInfo, DER: one exact byte string per public key."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _certificate_record(
    cert: x509.Certificate, agent_name: str, issued_at: int, token_id: str | None, generation: int
) -> CertificateRecord:
    """What the store keeps of a certificate issued to agent_name (token_id: None for a renewal)."""
    return CertificateRecord(
        serial=serial_hex(cert),
        agent_name=agent_name,
        not_before=seconds(cert.not_valid_before_utc),
        not_after=seconds(cert.not_valid_after_utc),
        der=cert.public_bytes(serialization.Encoding.DER),
        issued_at=issued_at,
        token_id=token_id,
        ca_generation=generation,
    )


def _enroll_audit(
    record: JoinTokenRecord, cert_record: CertificateRecord, now: int
) -> Callable[[Enrollment], AuditEntry]:
    """The enrollment's audit record, made in its transaction: it names the certificates it superseded."""

    def audit(done: Enrollment) -> AuditEntry:
        replaced = ",".join(e.serial or "" for e in done.superseded)
        return AuditEntry(
            now,
            f"token:{record.token_id}",
            "enroll",
            f"agent:{record.name} serial:{cert_record.serial}"
            + (f" superseded:{replaced}" if replaced else ""),
        )

    return audit


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
    # The chain of the CA generation that signed certificate (empty: the active CA's).
    ca_chain_der: tuple[bytes, ...] = ()


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
        on_revoked: Callable[[RevocationEvent], object] = lambda event: None,
        renew_window: timedelta = timedelta(0),
        log_position: Callable[[], int] | None = None,
    ) -> None:
        self._store = store
        # Told of each certificate stored (enrollment or renewal): the expiry gauges.
        self._on_issued = on_issued
        self._ca = ca
        self._clock = clock
        self._default_ttl = default_token_ttl
        self._max_ttl = max_token_ttl
        # Applies a revocation committed here (a superseded certificate) in memory:
        # the revoked map that authenticates calls, the watch feed, open streams.
        self._on_revoked = on_revoked
        # The event log's position as this server's feed knows it: never ahead of the store (an
        # event is published after it commits), so an agent's first watch replays at most what
        # committed meanwhile and skips nothing; and no store read on every enrollment.
        self._log_position = log_position
        # One renewal per agent in this long: a stolen certificate cannot mint certificates
        # by the hundred, and its thief's renewals are bounded like its owner's.
        self._renew_window = int(renew_window.total_seconds())
        # When each agent last renewed through this server: refuses a renewal before the CA
        # signs anything. The store's check, in the renewal's transaction, is the one that holds.
        self._renewed_at: OrderedDict[str, int] = OrderedDict()

    def tell(self, hook: Callable[[CertificateRecord], None]) -> None:
        """hook is told of each certificate stored here too (of several workers: server/workers/figures.py)."""
        told = self._on_issued

        def both(cert: CertificateRecord) -> None:
            told(cert)
            hook(cert)

        self._on_issued = both

    async def create_token(
        self,
        name: str,
        groups: list[str],
        ttl_seconds: int | None,
        *,
        allow_reenroll: bool = False,
        replace: bool = False,
    ) -> IssuedToken:
        """Creates a single-use join token bound to name and groups.

        Raises:
            InvalidArgument: bad name or group, too many groups, TTL out of bounds.
            FailedPrecondition: the name was revoked (and not allow_reenroll), or holds a
                valid certificate (and not replace).
        """
        validate_agent_name(name)
        clean = sorted({validate_group(g) for g in groups})
        if len(clean) > MAX_GROUPS:
            raise InvalidArgument(f"a token may carry at most {MAX_GROUPS} groups")
        longest = int(self._max_ttl.total_seconds())
        if ttl_seconds is not None and not MIN_TOKEN_TTL_SECONDS <= ttl_seconds <= longest:
            raise InvalidArgument(f"token TTL must be between 1s and {longest}s")
        ttl = timedelta(seconds=ttl_seconds) if ttl_seconds is not None else self._default_ttl
        now = now_seconds(self._clock)
        token = JoinToken.generate()
        record = JoinTokenRecord(
            token.token_id, token.secret_hash, name, tuple(clean), now, now + int(ttl.total_seconds())
        )
        flags = "".join(f" {f}" for f, on in (("allow-reenroll", allow_reenroll), ("replace", replace)) if on)
        await self._store.add_join_token(
            record,
            allow_reenroll=allow_reenroll,
            replace=replace,
            audit=AuditEntry(now, "admin", "token.create", f"agent:{name} token:{token.token_id}{flags}"),
        )
        logger.info("join token created", extra={"token_id": token.token_id, "agent": name})
        return IssuedToken(token, record)

    async def enroll(self, token_text: str, csr_der: bytes) -> Enrolled:
        """Checks the token, then the CSR, issues, then consumes the token and records the certificate.

        A token already spent on a certificate for this very key (a retry after a
        lost reply) gets that certificate again, while the token is unexpired.

        Raises:
            MalformedToken: the token's shape is bad.
            RefusedToken: the token is unknown, used (for another key), expired or wrong.
            InvalidArgument: the CSR is bad (the token is left unused).
            PermissionDenied, FailedPrecondition: the name was revoked, or holds a valid
                certificate the token does not replace (token untouched).
        """
        token, record, now = await self._usable_token(token_text)
        public_key = check_csr(csr_der)
        if record.used_at is not None:
            return await self._repeat(record, token, _spki(public_key), now)

        cert, issuer = await self._ca.issue(public_key, record.name)  # one CA for all three
        cert_record = _certificate_record(cert, record.name, now, record.token_id, issuer.generation)
        # Read before the enrollment commits: an event committed meanwhile is
        # replayed to the new agent (harmless), never skipped.
        watch_from_seq = await self._position()
        write = self._store.enroll(
            record.token_id,
            token.secret_hash,
            now,
            cert_record,
            audit=_enroll_audit(record, cert_record, now),
        )
        done = await after_commit(write, partial(self._committed, cert_record))
        if done is None:
            # Lost a race for the token (perhaps to this very request, sent twice), or it expired meanwhile.
            again = await self._store.get_join_token(token.token_id)
            if again is not None and again.used_at is not None and again.expires_at > now:
                return await self._repeat(again, token, _spki(public_key), now)
            raise RefusedToken(token.token_id)
        agent = done.agent
        # The superseded revocations committed with the enrollment are history before it:
        # the new agent's first watch starts after them.
        watch_from_seq = max([watch_from_seq, *(e.seq for e in done.superseded)])
        logger.info(
            "agent enrolled",
            extra={
                "agent": agent.name,
                "serial": cert_record.serial,
                "token_id": record.token_id,
                "superseded": ",".join(e.serial or "" for e in done.superseded) or None,
            },
        )
        spiffe_id = agent_spiffe_id(self._ca.trust_domain, agent.name)
        return Enrolled(agent, cert, spiffe_id, watch_from_seq, issuer.chain_der)

    async def _usable_token(self, token_text: str) -> tuple[JoinToken, JoinTokenRecord, int]:
        """The token, its record and the time it was found unexpired at (the enrollment's time),
        if it is well-formed, known and its secret right.

        A spent one passes here: _repeat decides whether it earns anything.
        """
        try:
            token = JoinToken.parse(token_text)
        except InvalidArgument as exc:
            raise MalformedToken(exc.message) from None
        record = await self._store.get_join_token(token.token_id)
        now = seconds(self._clock())
        if record is None or not secret_matches(token, record.secret_hash) or record.expires_at <= now:
            raise RefusedToken(token.token_id)
        return token, record, now

    def _committed(self, cert_record: CertificateRecord, done: Enrollment | None) -> Enrollment | None:
        # Runs even if the caller has gone: the old certificates must stop working now,
        # and the expiry gauges count the new one (after the revocations, which drop the name).
        if done is not None:
            for event in done.superseded:
                self._on_revoked(event)
            self._on_issued(cert_record)
        return done

    async def _position(self) -> int:
        return self._log_position() if self._log_position is not None else await self._store.last_seq()

    async def _repeat(self, record: JoinTokenRecord, token: JoinToken, spki: bytes, now: int) -> Enrolled:
        """The certificate a spent token was issued for this same key, if it is still good; else refused.

        Only the holder of the token's secret and of the private key behind the CSR
        (check_csr verified its signature) gets here, and it gets nothing new: the
        same certificate, still unrevoked and unexpired. Everything else is refused
        with the one message of an unknown token.
        """
        issued = await self._store.get_certificate(record.used_by_serial) if record.used_by_serial else None
        if issued is None or issued.revoked_at is not None or issued.not_after <= now:
            raise RefusedToken(token.token_id)
        cert = x509.load_der_x509_certificate(issued.der)
        agent = await self._store.get_agent_by_serial(issued.serial)
        # Public keys are not secret, but compare_digest costs nothing and keeps the habit.
        if agent is None or not hmac.compare_digest(_spki(cert.public_key()), spki):
            raise RefusedToken(token.token_id)
        await self._store.append_audit(
            AuditEntry(
                now, f"token:{record.token_id}", "enroll.repeat", f"agent:{agent.name} serial:{issued.serial}"
            )
        )
        logger.info(
            "enrollment repeated: same token and key, same certificate",
            extra={"agent": agent.name, "serial": issued.serial, "token_id": record.token_id},
        )
        # The agent has held nothing yet, so the log up to now is none of its business.
        watch_from_seq = await self._position()
        return Enrolled(agent, cert, agent_spiffe_id(self._ca.trust_domain, agent.name), watch_from_seq)

    async def renew(self, caller: Caller, csr_der: bytes) -> x509.Certificate:
        return (await self.renew_chained(caller, csr_der))[0]

    async def renew_chained(
        self, caller: Caller, csr_der: bytes
    ) -> tuple[x509.Certificate, tuple[bytes, ...]]:
        """Issues a new certificate for a new key, with the caller's identity and groups; returns it
        with the chain of the CA generation that signed it.

        The caller was authenticated on this call (valid, unexpired, unrevoked);
        the new key must differ from the current one (renewal rekeys). The new
        certificate records the caller's as the one it was renewed from.

        Raises:
            ResourceExhausted: the agent was issued a renewed certificate within the renewal window.
        """
        public_key = check_csr(csr_der)
        if public_key == caller.public_key:
            raise InvalidArgument("renewal needs a new key: make a new RSA key and a CSR for it")
        now = now_seconds(self._clock)
        # Never more than a quarter of the caller's own lifetime: agents renew at 2/3 of it, so a
        # certificate issued before a longer window (or cut short by the CA's end) still renews.
        lifetime = int((caller.not_after - caller.not_before).total_seconds())
        window = min(self._renew_window, lifetime // 4)
        last = self._renewed_at.get(caller.name)
        if window and last is not None and last > now - window:
            raise rules.renewed_too_soon(caller.name, last, now - window, now)
        cert, issuer = await self._ca.issue(public_key, caller.name)  # one CA for all three
        record = _certificate_record(cert, caller.name, now, None, issuer.generation)
        await self._store.add_certificate(
            record,
            caller.groups,
            renewed_from=caller.serial,
            not_renewed_since=now - window if window else None,
            audit=AuditEntry(now, f"agent:{caller.name}/{caller.serial}", "renew", f"serial:{record.serial}"),
        )
        self._renewed_at[caller.name] = now
        self._renewed_at.move_to_end(caller.name)
        if len(self._renewed_at) > _RENEWALS_KEPT:
            self._renewed_at.popitem(last=False)
        self._on_issued(record)
        logger.info(
            "certificate renewed", extra={"agent": caller.name, "old": caller.serial, "new": record.serial}
        )
        return cert, issuer.chain_der
