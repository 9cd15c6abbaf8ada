"""The server's own TLS identity: issued from the CA, renewed before it expires, served without restart.

gRPC asks ``_fetcher`` for the certificate configuration on each new TLS
handshake (dynamic credentials), so a renewed certificate reaches new
connections at once while established connections keep theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kms import profile
from kms.handshake import LocalIdentity
from server.ca.authority import CertificateAuthority
from server.clock import Clock
from server.deployment.datadir import DataDir, DataDirError, KeyPair
from server.deployment.sealing import Sealer

__all__ = ["ServerTls"]

logger = logging.getLogger(__name__)

# How long rotate_forever waits after a failed rotation before trying again.
RETRY_DELAY = 30.0
# How often a worker that does not issue looks for the primary's new certificate, told or not.
FOLLOW_EVERY = 30.0


class ServerTls:
    def __init__(
        self,
        datadir: DataDir,
        sealer: Sealer,
        ca: CertificateAuthority,
        sans: tuple[str, ...],
        ttl: timedelta,
        renew_fraction: float,
        clock: Clock,
        *,
        issues: bool = True,
    ) -> None:
        self._datadir = datadir
        self._sealer = sealer
        self._ca = ca
        self._sans = sans
        self._ttl = ttl
        self._fraction = renew_fraction
        self._clock = clock
        self._lock = threading.Lock()  # gRPC's fetcher runs on its own threads
        self._issuing = threading.Lock()  # one reissue at a time (renewal, an activation followed)
        self._generation = 0
        # The CAs the mTLS port accepts client certificates from (trust_clients; at first this CA).
        self._client_roots = ca.bundle_pem
        self._chain_ca = ca.bundle_pem  # the CA that issued current, sent after it
        # False in a worker other than the primary (server/workers/): it serves what the primary
        # issued and wrote, reloaded when told (changed) and every FOLLOW_EVERY seconds.
        self._issues = issues
        self.changed = asyncio.Event()
        self.on_rotated: Callable[[], None] = lambda: None  # the primary tells the other workers
        self.current = self._load_or_issue() if issues else self._load()

    # --- lifecycle -------------------------------------------------------------------

    def renew_at(self, pair: KeyPair | None = None) -> datetime:
        cert = (pair or self.current).cert
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        return start + (end - start) * self._fraction

    def _load_or_issue(self) -> KeyPair:
        """Reuses the stored certificate unless its names changed or its renewal is due."""
        d = self._datadir
        if d.server_cert.exists():
            pair = d.load_pair(d.server_cert, d.server_key, self._sealer)
            lifetime = pair.cert.not_valid_after_utc - pair.cert.not_valid_before_utc
            try:
                profile.check_server_certificate(
                    pair.cert, self._ca.certificate, self._sans, max(self._ttl, lifetime)
                )
                current = self._clock() < self.renew_at(pair)
            except (profile.ProfileError, x509.ExtensionNotFound):
                current = False  # names changed (--san) or issued under another profile
            if current:
                return pair
            logger.info("reissuing server certificate (names changed, renewal due or another CA)")
        pair, self._chain_ca = self._issue()
        return pair

    def _load(self) -> KeyPair:
        """The pair the primary wrote (read again if it was between its two writes)."""
        d = self._datadir
        for _ in range(20):
            try:
                return d.load_pair(d.server_cert, d.server_key, self._sealer)
            except DataDirError:
                time.sleep(0.05)
        return d.load_pair(d.server_cert, d.server_key, self._sealer)

    def _issue(self) -> tuple[KeyPair, bytes]:
        """A new certificate and the PEM of the CA that issued it (one snapshot for both)."""
        if not self._issues:
            pair = self._load()
            return pair, self._ca.bundle_pem if self._issued_by_active(pair) else self._chain_ca
        issuer = self._ca.current
        pair = self._ca.issue_server(self._sans, self._ttl, issuer)
        self._datadir.save_pair(self._datadir.server_cert, self._datadir.server_key, self._sealer, pair)
        return pair, issuer.bundle_pem

    def from_active_ca(self) -> bool:
        """Whether the certificate served was issued by the CA this server issues with now."""
        return self._issued_by_active(self.current)

    def _issued_by_active(self, pair: KeyPair) -> bool:
        try:
            pair.cert.verify_directly_issued_by(self._ca.certificate)
        except Exception:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError: another CA
            return False
        return True

    def due(self) -> bool:
        """Renewal is due, or the certificate is not from the active CA (an activation followed)."""
        return self._clock() >= self.renew_at() or not self.from_active_ca()

    def rotate(self) -> KeyPair:
        """Issues and installs a new certificate (and key) now (one at a time)."""
        with self._issuing:
            pair, chain = self._issue()
            with self._lock:
                if pair.cert == self.current.cert and chain == self._chain_ca:
                    return pair  # a worker reloading what it serves already
                self.current, self._chain_ca = pair, chain
                self._generation += 1
        if self._issues:
            self.on_rotated()
        logger.info(
            "server certificate rotated",
            extra={
                "serial": format(pair.cert.serial_number, "x"),
                "not_after": pair.cert.not_valid_after_utc,
            },
        )
        return pair

    async def reissue(self) -> bool:
        """Reissues now when the certificate is not from the active CA (after an activation was
        followed); a failure is logged, and rotate_forever retries it. Returns whether it is."""
        if self.from_active_ca() and self._issues:
            return True
        # A worker that does not issue reloads all the same: the primary's certificate may have
        # come before this worker followed the activation, sent then with the old CA's chain.
        return await self._rotate_logged()

    async def _rotate_logged(self) -> bool:
        try:
            await asyncio.to_thread(self.rotate)
        except Exception as exc:  # noqa: BLE001 - one failure (a token, the disk) must not end the loop
            why = str(exc).splitlines()[0] if str(exc) else ""
            logger.error(
                "server certificate rotation failed, retrying in %.0f s: %s%s",
                RETRY_DELAY,
                type(exc).__name__,
                f": {why}" if why else "",
            )
            return False
        return True

    async def rotate_forever(self) -> None:
        while True:
            if self.due():
                if not await self._rotate_logged():
                    await asyncio.sleep(RETRY_DELAY)
                continue
            wait = (self.renew_at() - self._clock()).total_seconds()
            await asyncio.sleep(min(wait, 60.0))

    async def follow_forever(self) -> None:
        """A worker other than the primary: serves each certificate the primary writes."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FOLLOW_EVERY):
                    await self.changed.wait()
            self.changed.clear()
            await self._rotate_logged()

    # --- what TLS and the handshake use ---------------------------------------------------

    @property
    def handshake_identity(self) -> LocalIdentity:
        pair = self.current
        return LocalIdentity(pair.key, (pair.cert.public_bytes(Encoding.DER),))

    def _configuration(
        self, pair: KeyPair, chain_ca: bytes, client_roots: bytes | None
    ) -> grpc.ServerCertificateConfiguration:
        chain = pair.cert_pem + chain_ca
        return grpc.ssl_server_certificate_configuration(
            [(pair.key_pem(), chain)], root_certificates=client_roots
        )

    def trust_clients(self, roots: Sequence[x509.Certificate]) -> None:
        """The mTLS port accepts client certificates of these CAs from the next handshake on
        (server/ca/trust.py: every CA generation not retired)."""
        pem = b"".join(root.public_bytes(Encoding.PEM) for root in roots)
        with self._lock:
            if pem != self._client_roots:
                self._client_roots = pem
                self._generation += 1

    def credentials(self, *, require_client_auth: bool) -> grpc.ServerCredentials:
        served = {"generation": self._generation}

        def fetcher() -> grpc.ServerCertificateConfiguration | None:
            with self._lock:
                if served["generation"] == self._generation:
                    return None  # unchanged: keep serving the current configuration
                served["generation"] = self._generation
                pair, chain_ca, roots = self.current, self._chain_ca, self._client_roots
            return self._configuration(pair, chain_ca, roots if require_client_auth else None)

        with self._lock:
            roots = self._client_roots if require_client_auth else None
            pair, chain_ca = self.current, self._chain_ca
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(pair, chain_ca, roots),
            fetcher,
            require_client_authentication=require_client_auth,
        )
