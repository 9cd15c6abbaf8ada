"""The CA generations this server uses (issue 19 §1): verified, then trusted and signed with.

Trusted (agents' certificates accepted): every verified generation not retired: the active CA,
a prepared one, and a retiring one (replaced, with valid certificates still out). A prepared
CA issues nothing, but trusting it from the moment it is prepared means that when any replica
activates it, the others already accept what it issues, before they hear of the activation;
its key never left the store, sealed. A retired one is never trusted, not even the one this
replica still issues with (CARotation.follow then refuses to issue). Live (answering OCSP,
signing CRLs, each as an Issuer with its own key): the active and the retiring ones, and any
other while a certificate it signed is unexpired, retired included (RFC 5280: a revoked
certificate stays on its issuer's CRL until it expires). A generation is verified first
(server/ca/verify.py): a row that does not verify is ignored.

The set is read from the store at start and again on each 'bundle' event (this replica's or
another's, from the feed), retried with backoff while the store cannot be read (or the active
CA's key cannot be opened here); then the hooks run (CARotation.follow switches the CA to the
verified active one), then each listener gets the roots: the caller authenticator, the
handshake peers' check and the mTLS port's client CA list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from cryptography import x509

from server.ca.authority import CertificateAuthority
from server.ca.generation_keys import TokenAccess, open_generation_signer
from server.ca.issuer import Issuer, make_issuer
from server.ca.signer import CARoot
from server.ca.verify import GenerationCheck
from server.deployment.sealing import Sealer
from server.store import RevocationEvent, Store
from server.store.sql.cas import CAGeneration

__all__ = ["CATrust"]

logger = logging.getLogger(__name__)

Listener = Callable[[Sequence[x509.Certificate]], None]

RETRY_FIRST = 1.0  # seconds before the first retry of a failed refresh; doubling up to RETRY_MAX
RETRY_MAX = 30.0


class CATrust:
    def __init__(
        self, store: Store, ca: CertificateAuthority, sealer: Sealer, token: TokenAccess | None = None
    ) -> None:
        self._store = store
        self.token = token  # the CA keys' PKCS#11 token (--ca-key); None: they are in software
        self._ca = ca  # the CA this server issues with (it changes when it follows an activation)
        self._sealer = sealer
        # Built while the authority issues with the deployment's own CA: generation 1.
        self.own = CARoot(ca.current.cert, ca.current.signer)
        self._check = GenerationCheck(ca.current.cert)
        self.roots: list[x509.Certificate] = [ca.certificate]
        self.generations: list[CAGeneration] = []  # verified, oldest first
        # The trust bundle's version: the seq of the newest 'bundle' event the generations reflect.
        self.version = 0
        self.issuers: dict[int, Issuer] = {1: ca.current}  # live: active and retiring
        self.active: Issuer | None = None  # the verified active generation, its key opened
        self._opened: dict[tuple[int, str], Issuer] = {}
        self._failed: set[tuple[int, str]] = set()  # keys that did not open, logged once
        self._listeners: list[Listener] = []
        self._before: list[Callable[[], Awaitable[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._reading = asyncio.Lock()  # one read at a time: an older one never lands after a newer
        self._refreshed = 0  # successful refreshes: a retry stops once a later one succeeded
        self._loops = 0  # retry loops started: one stops when a newer one started (it reads itself)
        self.retry_first, self.retry_max = RETRY_FIRST, RETRY_MAX

    def listen(self, *listeners: Listener) -> None:
        """Each listener gets the roots now, and again each time they change."""
        for listener in listeners:
            self._listeners.append(listener)
            listener(self.roots)

    def on_bundle(self, hook: Callable[[], Awaitable[None]]) -> None:
        """hook runs on each refresh, after the generations are verified and before the roots go to
        the listeners (CARotation.follow)."""
        self._before.append(hook)

    def issuer_by_key_hash(self, algorithm: str, key_hash: bytes) -> Issuer | None:
        """The live generation an OCSP request names (RFC 6960 issuerKeyHash), or None."""
        for issuer in list(self.issuers.values()):
            if issuer.key_hashes.get(algorithm) == key_hash:
                return issuer
        return None

    async def refresh(self) -> None:
        """Reads the bundle's version, then reads and verifies the generations, opens the live ones' keys, runs the hooks and hands
        the roots (every verified generation not retired) on."""
        async with self._reading:
            # The version first: a 'bundle' event committed between the reads then shows in the
            # generations but not in the version, which never claims more than the bundle shows.
            version = await self._store.ca_bundle_version()
            rows = await self._store.ca_generations(None)
            verified = self._check.verified(rows)
            signing = await self._signing(verified)
            issuers = {g.generation: i for g in signing if (i := self._issuer(g)) is not None}
            active = [issuers.get(g.generation) for g in verified if g.state == "active"]
            self.generations, self.active = verified, active[0] if active else None
            self.version = version
            for hook in self._before:
                await hook()
            current = self._ca.current
            states = {g.generation: g.state for g in verified}
            if current.generation not in states or any(g.generation == current.generation for g in signing):
                issuers = {current.generation: current, **issuers}
            self.issuers = issuers
            self._refreshed += 1
            own = [] if states.get(current.generation) == "retired" else [current.cert]
            trusted = [x509.load_pem_x509_certificate(g.certificate.encode()) for g in verified]
            live = [
                c
                for g, c in zip(verified, trusted, strict=True)
                if g.state != "retired" and c != current.cert
            ]
            roots = [*own, *live]
            if roots == self.roots:
                return
            self.roots = roots
            logger.info("accepting agents of %d CA generations", len(roots))
            for listener in self._listeners:
                listener(roots)

    async def _signing(self, verified: list[CAGeneration]) -> list[CAGeneration]:
        """The generations that answer OCSP and sign CRLs: the active and retiring ones, and any
        other (retired) while a certificate it signed is unexpired."""
        now = self._ca.clock().timestamp()
        out = []
        for g in verified:
            if (
                g.state in ("active", "retiring")
                or g.state == "retired"
                and (await self._store.ca_last_not_after(g.generation) or 0) > now
            ):
                out.append(g)
        return out

    def _issuer(self, generation: CAGeneration) -> Issuer | None:
        """The generation as an Issuer when its key opens."""
        key = (generation.generation, generation.certificate)
        if (issuer := self._opened.get(key)) is not None:
            return issuer
        try:
            signer = open_generation_signer(generation, self._sealer, self.own, self.token)
        except Exception as exc:  # noqa: BLE001 - FailedPrecondition, DataDirError: this generation only
            if key not in self._failed:
                self._failed.add(key)
                logger.error("CA generation %d cannot sign here: %s", generation.generation, exc)
            return None
        cert = x509.load_pem_x509_certificate(generation.certificate.encode())
        issuer = make_issuer(CARoot(cert, signer), generation.generation)
        self._opened[key] = issuer
        return issuer

    def published(self, event: RevocationEvent) -> None:
        """A feed listener: a 'bundle' event (a generation prepared, activated or retired) re-reads them."""
        if event.kind == "bundle":
            self.refresh_in_background()

    def refresh_in_background(self) -> None:
        """Refreshes in a task, retried until it succeeds (and while this replica refuses to issue)."""
        task = asyncio.create_task(self._refresh_logged())
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _refresh_logged(self) -> None:
        """refresh, retried with backoff (retry_first doubling to retry_max) until one succeeds, and
        while this replica refuses to issue (the active CA's key did not open here). A later
        successful refresh (another event's, an activation's here) ends the retries, and so does a
        newer event's (its own loop reads at once and retries in its turn)."""
        delay, self._loops = self.retry_first, self._loops + 1
        me = self._loops
        while True:
            try:
                await self.refresh()
                if self._ca.refusing is None:
                    return
            except Exception as exc:  # noqa: BLE001 - the store unreachable: read again
                logger.error(
                    "could not follow the CA generations, retrying in %.0f s: %s: %s",
                    delay,
                    type(exc).__name__,
                    exc,
                )
            done = self._refreshed
            await asyncio.sleep(delay)
            if me != self._loops or (self._refreshed != done and self._ca.refusing is None):
                return
            delay = min(delay * 2, self.retry_max)
