"""CA rotation, its first part (issue 19 §1): generations, preparing the next CA, the trust bundle.

The deployment's CA is generation 1 (adopted at start). ``rotate`` prepares the next:
a new key (sealed under the master key, in the store) and self-signed certificate, and
a cross-certificate of the new key signed by the active CA (newWithOld), so an agent
that pinned the active CA can verify the new one. The prepared CA goes out in the
trust bundle (GetCABundle) and as a 'bundle' event on the watch feed. Nothing is
activated yet: the active CA keeps issuing, and agents keep verifying the server with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kms.errors import FailedPrecondition
from kms.identity import fingerprint
from server.ca.authority import CertificateAuthority, create_root
from server.ca.keytype import CAKeyType
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
    ) -> None:
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
        active = [g for g in await self._store.ca_generations(None) if g.state == "active"]
        if active and active[0].certificate != cert:
            logger.error(
                "the store's active CA (generation %d) is not this server's CA", active[0].generation
            )

    async def rotate(self, key_type: CAKeyType | None) -> CAGeneration:
        """Prepares the next generation. Raises FailedPrecondition when one is prepared already,
        or when the CA key is in a PKCS#11 token (rotation in the token comes later)."""
        if not self._ca.key_in_software:
            raise FailedPrecondition(
                "the CA key is in a PKCS#11 token: preparing the next CA in the token is not supported yet"
            )
        generations = await self._store.ca_generations(None)
        if prepared := [g for g in generations if g.state == "prepared"]:  # the store decides; this is early
            raise prepared_already(prepared[0].generation)
        key_type = key_type or self._ca.key_type
        now = self._clock()
        pair = await asyncio.to_thread(create_root, self._ca.trust_domain, key_type, self._ca_ttl, now)
        cross = self._ca.cross_certify(pair.cert)
        new = NewGeneration(
            key_type.value,
            pair.cert.public_bytes(Encoding.PEM).decode(),
            cross.public_bytes(Encoding.PEM).decode(),
            sealed_key=seal_key(pair, self._sealer, _CA_SLOT),
            cross_signed_by=self._ca.certificate.public_bytes(Encoding.PEM).decode(),
        )
        at = now_seconds(self._clock)
        print_fp = fingerprint(pair.cert.public_bytes(Encoding.DER))
        generation, event = await self._store.prepare_ca(
            new,
            at,
            audit=lambda done: AuditEntry(at, "admin", "ca.rotate", f"ca:{done[0].generation} {print_fp}"),
        )
        self._publish(event)
        logger.info(
            "prepared CA generation %d",
            generation.generation,
            extra={"fingerprint": print_fp, "seq": event.seq},
        )
        return generation

    async def generations(self) -> list[CAGeneration]:
        return await self._store.ca_generations(now_seconds(self._clock))

    async def bundle_pem(self) -> str:
        """The trust bundle: the active CA, then each prepared CA followed by its cross-certificate."""
        seq = self._last_seq()
        if self._bundle is not None and self._bundle[0] == seq >= 0:
            return self._bundle[1]
        generations = await self._store.ca_generations(None)
        active = [g.certificate for g in generations if g.state == "active"]
        prepared = [g.certificate + (g.cross_certificate or "") for g in generations if g.state == "prepared"]
        pem = "".join(active + prepared) or self._ca.bundle_pem.decode()
        self._bundle = (seq, pem)
        return pem
