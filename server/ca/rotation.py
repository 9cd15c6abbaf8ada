"""CA rotation (issue 19 §1): generations, preparing the next CA, the trust bundle, activation.

The deployment's CA is generation 1 (adopted at start). ``rotate`` prepares the next:
a new key (sealed under the master key, in the store; or, when the CA key is in a PKCS#11
token, made in the same token: hsm_generations.py) and self-signed certificate, and
a cross-certificate of the new key signed by the active CA (newWithOld), so an agent
that pinned the active CA can verify the new one. The prepared CA goes out in the
trust bundle (GetCABundle) and as a 'bundle' event on the watch feed. ``activate``
(after the propagation period) makes it the active one and the old one retiring (still
trusted, no longer issuing); every replica, on the 'bundle' event or at start
(``follow``), issues with the store's active generation from then on, and reissues its
own TLS certificate from it, without a restart.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kms.errors import FailedPrecondition, InvalidArgument
from kms.identity import fingerprint
from server.ca.authority import CertificateAuthority, create_root, software_root
from server.ca.generation_keys import KEYS_STAY_PUT, TokenAccess, check_generation_key, open_generation_signer
from server.ca.keytype import CAKeyType
from server.ca.signer import CARoot
from server.clock import Clock, now_seconds
from server.deployment.datadir import seal_key
from server.deployment.sealing import Sealer
from server.store import AuditEntry, RevocationEvent, Store
from server.store.sql.cas import CAGeneration, NewGeneration, prepared_already

__all__ = ["CAGeneration", "CARotation", "generation_fingerprint"]

logger = logging.getLogger(__name__)

# The sealing slot of every CA key, as the deployment's own (deployment.py's _CA_SLOT).
_CA_SLOT = "ca.key"


def generation_fingerprint(generation: CAGeneration) -> str:
    return fingerprint(_cert(generation.certificate).public_bytes(Encoding.DER))


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
        sealer: Sealer,
        clock: Clock,
        ca_ttl: timedelta,
        key_uri: str | None,
        publish: Callable[[RevocationEvent], object],
        last_seq: Callable[[], int] = lambda: -1,
        propagation: timedelta = timedelta(hours=24),
        on_switch: Callable[[], object] = lambda: None,
        token: TokenAccess | None = None,
    ) -> None:
        self._token = token  # the CA keys' PKCS#11 token (--ca-key); None: they are in software
        self._propagation = propagation
        self._on_switch = on_switch  # the server's TLS certificate, reissued from the new CA
        # The bundle is served to anonymous callers: read from the store once per position of the
        # event feed (a 'bundle' event, here or from another replica, moves it), not per call.
        self._last_seq = last_seq
        self._bundle: tuple[int, str] | None = None
        self._store = store
        self._ca = ca
        self._sealer = sealer
        self._clock = clock
        self._ca_ttl = ca_ttl
        self._key_uri = key_uri
        self._publish = publish

    async def adopt(self) -> None:
        """Records the deployment's CA as generation 1 (once), and says when the store's active CA differs."""
        cert = self._ca.certificate.public_bytes(Encoding.PEM).decode()
        key_type = self._ca.key_type.value
        if await self._store.adopt_ca(cert, key_type, self._key_uri, now_seconds(self._clock)):
            logger.info("CA recorded as generation 1, active", extra={"fingerprint": self._ca.fingerprint})
        await self.follow()

    async def follow(self) -> None:
        """Issues with the store's active generation, when it is not the one this server issues with:
        at start, and on each 'bundle' event (an activation here or on another replica)."""
        active = [g for g in await self._store.ca_generations(None) if g.state == "active"]
        if not active or active[0].certificate.encode() == self._ca.bundle_pem:
            return
        if active[0].generation == 1:  # the deployment's own CA: a replica started with another
            logger.error(
                "the store's active CA (generation %d) is not this server's CA", active[0].generation
            )
            return
        generation = active[0].generation
        # Its key sealed in the store, or in the token (generation_keys.py: the one way to open one).
        root = await asyncio.to_thread(open_generation_signer, active[0], self._sealer, self._token)
        self._ca.switch(root, generation)
        self._bundle = None
        logger.info("issuing with CA generation %d", generation, extra={"fingerprint": self._ca.fingerprint})
        self._on_switch()

    async def activate(self, now: bool, revoke_old: bool = False, *, actor: str = "admin") -> CAGeneration:
        """Activates the prepared generation once its propagation period is over (now: at once).
        revoke_old (with now): the active CA is compromised; see server/store/sql/ca_compromise.py.
        Raises FailedPrecondition when none is prepared, or it is too early."""
        if revoke_old and not now:
            raise InvalidArgument(
                "--revoke-old needs --now: a compromised CA must stop issuing at once, not after ca-propagation"
            )
        prepared = [g for g in await self._store.ca_generations(None) if g.state == "prepared"]
        if prepared:  # its key opens (a token's may be gone) before the store makes it active
            await asyncio.to_thread(check_generation_key, prepared[0], self._sealer, self._token)
        at = now_seconds(self._clock)

        def audit(done: tuple[CAGeneration, object]) -> AuditEntry:
            action = "ca.activate.revoke_old" if revoke_old else "ca.activate"
            return AuditEntry(at, actor, action, f"ca:{done[0].generation} {generation_fingerprint(done[0])}")

        if revoke_old:
            generation, events = await self._store.activate_ca_revoking_old(at, audit=audit)
        else:
            ready_at = None if now else at - int(self._propagation.total_seconds())
            generation, event = await self._store.activate_ca(at, ready_at, audit=audit)
            events = [event]
        await self.follow()  # this replica issues with it before its events go out
        for (
            event
        ) in events:  # the activation's 'bundle' event; with revoke_old, each revocation, the retirement
            self._publish(event)
        logger.info(
            "activated CA generation %d%s",
            generation.generation,
            f", revoking {len(events) - 2} certificates of the CA before it, retired" if revoke_old else "",
            extra={"seq": events[-1].seq},
        )
        return generation

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
        number = max(g.generation for g in generations) + 1
        made = await asyncio.to_thread(self._new_ca, number, key_type or self._ca.key_type)
        try:
            generation, event = await self._prepare(made, actor)
        except BaseException:
            made.settle(False)
            raise
        made.settle(True)
        print_fp = generation_fingerprint(generation)
        self._publish(event)
        logger.info(
            "prepared CA generation %d",
            generation.generation,
            extra={"fingerprint": print_fp, "seq": event.seq},
        )
        return await self.activate(True, revoke_old, actor=actor) if at_once else generation

    def _new_ca(self, generation: int, key_type: CAKeyType) -> _NewCA:
        """The next CA's key and self-signed certificate, in a thread (a token takes seconds for RSA)."""
        now = self._clock()
        if self._token is None:
            pair = create_root(self._ca.trust_domain, key_type, self._ca_ttl, now)
            return _NewCA(software_root(pair), seal_key(pair, self._sealer, _CA_SLOT))
        from server.ca.hsm_generations import new_token_root  # python-pkcs11 is imported only with --ca-key

        root, made = new_token_root(
            self._token, generation, key_type, self._ca.trust_domain, self._ca_ttl, now
        )
        # Recorded: its session closes (activation opens it from key_uri); not: it is destroyed.
        return _NewCA(root, None, made.uri, lambda recorded: made.key.close() if recorded else made.discard())

    async def _prepare(self, made: _NewCA, actor: str) -> tuple[CAGeneration, RevocationEvent]:
        """Cross-certifies made by the active CA and records it as the prepared generation."""
        certify = functools.partial(self._ca.cross_certify, made.root.cert)
        cross = (
            await asyncio.to_thread(certify) if self._ca.slow_signing else certify()
        )  # a token: in a thread
        new = NewGeneration(
            made.root.signer.key_type.value,
            made.root.cert_pem.decode(),
            cross.public_bytes(Encoding.PEM).decode(),
            sealed_key=made.sealed_key,
            key_uri=made.key_uri,
            cross_signed_by=self._ca.certificate.public_bytes(Encoding.PEM).decode(),
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
        """The trust bundle: the active CA with its cross-certificate (from the CA before it), each
        retiring CA with one made by the active CA (oldWithNew: for agents that pinned the active
        one), then each prepared CA followed by its cross-certificate."""
        seq = self._last_seq()
        if self._bundle is not None and self._bundle[0] == seq >= 0:
            return self._bundle[1]
        generations = await self._store.ca_generations(None)
        active = [g.certificate + (g.cross_certificate or "") for g in generations if g.state == "active"]
        issuing = bool(active) and active[0].startswith(self._ca.bundle_pem.decode())
        retiring = [
            g.certificate + self._old_with_new(g) for g in generations if issuing and g.state == "retiring"
        ]
        prepared = [g.certificate + (g.cross_certificate or "") for g in generations if g.state == "prepared"]
        pem = "".join(active + retiring + prepared) or self._ca.bundle_pem.decode()
        if issuing or not active:  # not before this replica follows an activation
            self._bundle = (seq, pem)
        return pem

    def _old_with_new(self, generation: CAGeneration) -> str:
        return self._ca.cross_certify(_cert(generation.certificate)).public_bytes(Encoding.PEM).decode()
