"""CA rotation (issue 19 §1): generations, preparing the next CA, the trust bundle, activation.

The deployment's CA is generation 1 (adopted at start). ``rotate`` prepares the next:
a new key (sealed under the master key, in the store) and self-signed certificate, and
a cross-certificate of the new key signed by the active CA (newWithOld), so an agent
that pinned the active CA can verify the new one. The prepared CA goes out in the
trust bundle (GetCABundle) and as a 'bundle' event on the watch feed. ``activate``
(after the propagation period) makes it the active one and the old one retiring (still
trusted, no longer issuing); every replica, on the 'bundle' event or at start
(``follow``), issues with the store's active generation from then on, and reissues its
own TLS certificate from it, without a restart. With the CA key in a PKCS#11 token, the next
key is made in the same token (hsm_generations.py). ``activate(revoke_old=True)`` is the
emergency path: the active CA is taken to be compromised (server/store/sql/ca_compromise.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kms import cabundle
from kms.errors import FailedPrecondition, InvalidArgument
from kms.identity import fingerprint
from server.ca.authority import CertificateAuthority, create_root, software_root
from server.ca.generation_keys import CA_SLOT, KEYS_STAY_PUT, TokenAccess, check_generation_key
from server.ca.issuer import Issuer
from server.ca.keytype import CAKeyType
from server.ca.signer import CARoot
from server.ca.trust import CATrust
from server.clock import Clock, now_seconds
from server.deployment.datadir import seal_key
from server.deployment.sealing import Sealer
from server.store import AuditEntry, RevocationEvent, Store
from server.store.sql.cas import CAGeneration, NewGeneration, prepared_already

__all__ = ["CAGeneration", "CARotation", "generation_fingerprint"]

logger = logging.getLogger(__name__)

# How long an oldWithNew outlives the last certificate of the CA it vouches for: the retirement
# check runs at that moment and at least every 10 minutes (server/ca/retire.py).
RETIRE_MARGIN = timedelta(minutes=15)


def generation_fingerprint(generation: CAGeneration) -> str:
    return fingerprint(_cert(generation.certificate).public_bytes(Encoding.DER))


async def _cross_certify(
    issuer: Issuer, new: x509.Certificate, now: datetime, until: datetime | None = None
) -> x509.Certificate:
    """issuer.cross_certify, in a thread when its key is slow to sign (a token)."""
    certify = functools.partial(issuer.cross_certify, new, now, until)
    return await asyncio.to_thread(certify) if issuer.slow else certify()


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


@dataclass(frozen=True)
class _NewCA:
    """A next CA made before its transaction: its key sealed, or in the token (key_uri)."""

    root: CARoot
    sealed_key: bytes | None
    key_uri: str | None = None
    settle: Callable[[bool], object] = lambda recorded: None  # told whether the store recorded it


class CARotation:
    def __init__(
        self,
        store: Store,
        ca: CertificateAuthority,
        trust: CATrust,
        sealer: Sealer,
        clock: Clock,
        ca_ttl: timedelta,
        key_uri: str | None,
        publish: Callable[[RevocationEvent], object],
        propagation: timedelta = timedelta(hours=24),
        on_switch: Callable[[], Awaitable[object]] | None = None,
        on_activated: Callable[[], object] = lambda: None,
        token: TokenAccess | None = None,
    ) -> None:
        self._token = token  # the CA keys' PKCS#11 token (--ca-key); None: they are in software
        self._propagation = propagation
        self._on_switch = on_switch  # the server's TLS certificate, reissued from the new CA
        self._on_activated = on_activated  # the retirement check (server/ca/retire.py)
        self._store = store
        self._ca = ca
        self._trust = trust
        self._sealer = sealer
        self._clock = clock
        self._ca_ttl = ca_ttl
        self._key_uri = key_uri
        self._publish = publish
        # oldWithNew per (retiring generation, active generation): signed once, not per bundle.
        self._old_with_new: dict[tuple[int, int], str] = {}
        trust.on_bundle(self.follow)

    async def adopt(self) -> None:
        """Records the deployment's CA as generation 1 (once), then reads the verified generations
        and follows the store's active one."""
        cert = self._ca.certificate.public_bytes(Encoding.PEM).decode()
        key_type = self._ca.key_type.value
        if await self._store.adopt_ca(cert, key_type, self._key_uri, now_seconds(self._clock)):
            logger.info("CA recorded as generation 1, active", extra={"fingerprint": self._ca.fingerprint})
        await self._trust.refresh()
        if self._ca.refusing is not None:  # the active CA's key did not open: try again until it does
            self._trust.refresh_in_background()

    async def follow(self) -> None:
        """Issues with the verified active generation when it is not the one this server issues with:
        a CATrust hook, at start and on each 'bundle' event (an activation here or on another replica)."""
        active = [g for g in self._trust.generations if g.state == "active"]
        issuer = self._trust.active
        if not active:
            return
        if active[0].generation == self._ca.generation:
            self._ca.refuse(None)
            return
        if issuer is None:  # its key did not open here (logged by CATrust): never issue with the old CA
            self._refuse(active[0].generation)
            return
        self._ca.switch(issuer)
        logger.info(
            "issuing with CA generation %d", issuer.generation, extra={"fingerprint": issuer.fingerprint}
        )
        if self._on_switch is not None:
            await self._on_switch()

    def _refuse(self, active: int) -> None:
        why = (
            f"this kms-server replica cannot open the active CA's key (generation {active}), so it issues no"
            " certificate: enroll or renew through another replica, and fix this one's CA key access"
            " (its token, --ca-key, the master key; its log says why): it issues again once that key opens"
        )
        if self._ca.refusing != why:
            logger.error(
                "refusing to issue: the store's active CA is generation %d, whose key does not open here,"
                " and this replica issues with generation %d (replaced%s)",
                active,
                self._ca.generation,
                ", retired"
                if any(
                    g.state == "retired" and g.generation == self._ca.generation
                    for g in self._trust.generations
                )
                else "",
            )
        self._ca.refuse(why)

    async def activate(self, now: bool, revoke_old: bool = False, *, actor: str = "admin") -> CAGeneration:
        """Activates the prepared generation once its propagation period is over (now: at once).
        revoke_old (with now): the active CA is compromised; see server/store/sql/ca_compromise.py.
        Raises FailedPrecondition when none is prepared, or it is too early."""
        if revoke_old and not now:
            raise InvalidArgument(
                "--revoke-old needs --now: a compromised CA must stop issuing at once, not after ca-propagation"
            )
        prepared = [g for g in await self._store.ca_generations(None) if g.state == "prepared"]
        expected = None
        if prepared:  # its key opens (a token's may be gone) before the store makes it active
            own = self._trust.own
            await asyncio.to_thread(check_generation_key, prepared[0], self._sealer, own, self._token)
            expected = (prepared[0].generation, prepared[0].certificate)  # the one checked, or refused
        at = now_seconds(self._clock)

        def audit(done: tuple[CAGeneration, object]) -> AuditEntry:
            action = "ca.activate.revoke_old" if revoke_old else "ca.activate"
            return AuditEntry(at, actor, action, f"ca:{done[0].generation} {generation_fingerprint(done[0])}")

        if revoke_old:
            generation, events = await self._store.activate_ca_revoking_old(
                at, audit=audit, expected=expected
            )
        else:
            ready_at = None if now else at - int(self._propagation.total_seconds())
            generation, event = await self._store.activate_ca(at, ready_at, audit=audit, expected=expected)
            events = [event]
        await self._trust.refresh()  # this replica issues with it before its events go out
        for event in events:  # the activation's 'bundle'; with revoke_old, each revocation, the retirement
            self._publish(event)
        self._on_activated()
        revoked = (
            f", revoking {len(events) - 2} certificates of the CA before it, retired" if revoke_old else ""
        )
        logger.info(
            "activated CA generation %d%s", generation.generation, revoked, extra={"seq": events[-1].seq}
        )
        return generation

    async def cancel(self) -> CAGeneration:
        """Removes the prepared generation (agents drop it on the 'bundle' event).
        Raises FailedPrecondition when none is prepared."""
        at = now_seconds(self._clock)
        generation, event = await self._store.cancel_ca(
            at,
            audit=lambda done: AuditEntry(
                at, "admin", "ca.cancel", f"ca:{done[0].generation} {generation_fingerprint(done[0])}"
            ),
        )
        await self._trust.refresh()
        self._publish(event)
        logger.info("cancelled CA generation %d", generation.generation, extra={"seq": event.seq})
        if generation.key_uri is not None and self._token is not None:
            await self._destroy_token_key(self._token, generation)
        return generation

    @staticmethod
    async def _destroy_token_key(token: TokenAccess, generation: CAGeneration) -> None:
        """A cancelled generation's key leaves the token: the next rotation makes generation N again,
        under the same label, and a label is never overwritten (hsm_generations.py)."""
        from server.ca.hsm_generations import destroy_generation_key  # python-pkcs11: only with --ca-key

        try:
            await asyncio.to_thread(destroy_generation_key, token, generation.generation)
        except Exception as exc:  # noqa: BLE001 - HsmError, a token down: cancelled all the same
            logger.error(
                "cancelled CA generation %d, but its key %s stays in the token (%s): delete it with the"
                " token's tools before the next ca rotate",
                generation.generation,
                generation.key_uri,
                exc,
            )

    async def rotate(
        self,
        key_type: CAKeyType | None,
        at_once: bool = False,
        revoke_old: bool = False,
        *,
        actor: str = "admin",
    ) -> CAGeneration:
        """Prepares the next generation: its key where the active CA's is (in software, sealed in the
        store; or in the same PKCS#11 token); at_once, activates it too (see activate). Raises
        FailedPrecondition when one is prepared already, or the token cannot make the key."""
        if revoke_old and not at_once:
            raise InvalidArgument("--revoke-old needs --now: a compromised CA must stop issuing at once")
        if self._ca.key_in_software != (self._token is None):
            raise FailedPrecondition(
                f"the active CA's key is not where this server keeps them: {KEYS_STAY_PUT}"
            )
        generations = await self._store.ca_generations(None)
        if prepared := [g for g in generations if g.state == "prepared"]:  # the store decides; this is early
            raise prepared_already(prepared[0].generation)
        issuer = self._ca.current
        number = max(g.generation for g in generations) + 1
        made = await asyncio.to_thread(self._new_ca, number, key_type or issuer.key_type)
        try:
            generation, event = await self._prepare(issuer, made, actor)
        except BaseException:
            made.settle(False)
            raise
        made.settle(True)
        await self._trust.refresh()
        self._publish(event)
        logger.info(
            "prepared CA generation %d",
            generation.generation,
            extra={"fingerprint": generation_fingerprint(generation), "seq": event.seq},
        )
        return await self.activate(True, revoke_old, actor=actor) if at_once else generation

    def _new_ca(self, generation: int, key_type: CAKeyType) -> _NewCA:
        """The next CA's key and self-signed certificate, in a thread (a token takes seconds for RSA)."""
        now = self._clock()
        if self._token is None:
            pair = create_root(self._ca.trust_domain, key_type, self._ca_ttl, now)
            return _NewCA(software_root(pair), seal_key(pair, self._sealer, CA_SLOT))
        from server.ca.hsm_generations import new_token_root  # python-pkcs11 is imported only with --ca-key

        root, made = new_token_root(
            self._token, generation, key_type, self._ca.trust_domain, self._ca_ttl, now
        )
        # Recorded: its session closes (activation opens it from key_uri); not: it is destroyed.
        return _NewCA(root, None, made.uri, lambda recorded: made.key.close() if recorded else made.discard())

    async def _prepare(
        self, issuer: Issuer, made: _NewCA, actor: str
    ) -> tuple[CAGeneration, RevocationEvent]:
        """Cross-certifies made by the active CA (issuer) and records it as the prepared generation."""
        cross = await _cross_certify(issuer, made.root.cert, self._clock())
        new = NewGeneration(
            made.root.signer.key_type.value,
            made.root.cert_pem.decode(),
            cross.public_bytes(Encoding.PEM).decode(),
            sealed_key=made.sealed_key,
            key_uri=made.key_uri,
            cross_signed_by=issuer.bundle_pem.decode(),
        )
        at = now_seconds(self._clock)
        print_fp = fingerprint(made.root.cert.public_bytes(Encoding.DER))
        return await self._store.prepare_ca(
            new,
            at,
            audit=lambda done: AuditEntry(at, actor, "ca.rotate", f"ca:{done[0].generation} {print_fp}"),
        )

    async def generations(self) -> list[CAGeneration]:
        return await self._store.ca_generations(now_seconds(self._clock))

    async def bundle_pem(self) -> str:
        """The trust bundle (served_bundle's)."""
        return (await self.served_bundle())[0]

    async def served_bundle(self) -> tuple[str, int]:
        """The trust bundle and its version (the seq of the newest 'bundle' event the generations
        reflect, CATrust.version: both from one CATrust state; 0 for this replica's own CA, served
        while it has not followed the active one: it reflects no event). The bundle: from the
        verified generations not retired: the active CA with its
        cross-certificate (from the CA before it), each retiring CA with its own and one made by the
        active CA (oldWithNew: for agents that pinned the active one; its own links an agent pinned
        to an older one through it, when several are retiring), then each prepared CA followed by
        its cross-certificate. Served to anonymous callers: from memory (CATrust re-reads the store on
        each 'bundle' event); each oldWithNew is made once, kept in the store, so every replica
        serves the same bundle."""
        generations, version = self._trust.generations, self._trust.version  # one state: no await between
        issuer = self._ca.current
        active = [g for g in generations if g.state == "active"]
        if not active or active[0].generation != issuer.generation:  # not followed (yet): its own CA
            return issuer.bundle_pem.decode(), 0
        parts = [active[0].certificate + (active[0].cross_certificate or "")]
        parts += [
            g.certificate + (g.cross_certificate or "") + await self._cross_from(issuer, g)
            for g in generations
            if g.state == "retiring"
        ]
        parts += [g.certificate + (g.cross_certificate or "") for g in generations if g.state == "prepared"]
        return "".join(parts), version

    async def _old_with_new_until(self, generation: int, now: datetime) -> datetime:
        """How long an oldWithNew for generation (retiring) may vouch for it: until the last
        certificate it signed expires (then it is retired), or one signed in flight as it was
        replaced (within cert_ttl of now), with RETIRE_MARGIN for the retirement check to run. No
        longer: a bundle replayed later (catch_up in the agent reads it over an unverified
        connection) must not vouch for a retired CA, whose key may since have leaked."""
        last = await self._store.ca_last_not_after(generation)
        latest = max(now + self._ca.cert_ttl, datetime.fromtimestamp(last or 0, UTC))
        return latest + RETIRE_MARGIN

    async def _cross_from(self, issuer: Issuer, generation: CAGeneration) -> str:
        """oldWithNew for generation, by issuer: signed by the first replica that needs it, stored
        (meta, first one wins), checked when read back; then kept in memory."""
        key = (generation.generation, issuer.generation)
        if (pem := self._old_with_new.get(key)) is not None:
            return pem
        old, now = _cert(generation.certificate), self._clock()
        until = await self._old_with_new_until(generation.generation, now)
        cross = await _cross_certify(issuer, old, now, until)
        name = f"ca_old_with_new:{generation.generation}:{issuer.generation}"
        stored = await self._store.set_meta(name, cross.public_bytes(Encoding.PEM).decode(), replace=False)
        try:
            cabundle.check_cross(_cert(stored), old, issuer.cert, now)
        except (ValueError, cabundle.BundleError) as exc:  # a forged row: not served
            logger.error("the stored cross-certificate %s is ignored: %s", name, exc)
            stored = ""  # logged once: the bundle goes out without it
        self._old_with_new[key] = stored
        return stored
