"""An RFC 6960 OCSP responder for certificates this CA issued, signed by the CA that issued them.

After an activation two or more generations are live (the active one, each retiring one, and
a retired one while a certificate it signed is unexpired, server/ca/trust.py): a request names its issuer by key hash (SHA-1 or SHA-256), and is answered
by that generation, with its own certificate and key, for the certificates it signed; a
request naming any other issuer, or a certificate another generation signed, gets unauthorized.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from kms.errors import Unavailable
from kms.revocation import CRL_REASONS
from server.ca.authority import CertificateAuthority
from server.ca.issuer import Issuer
from server.ca.trust import CATrust
from server.clock import Clock
from server.store import Store
from server.store.records import CertificateRecord

__all__ = ["OcspResponder"]

logger = logging.getLogger(__name__)

VALIDITY = timedelta(hours=1)
# How long, and for how many certificates, a signed answer is reused.
CACHE_TTL = timedelta(seconds=60)
CACHE_SIZE = 4096
# While the CA key cannot sign, the tryLater answers are logged at most this often (seconds).
LOG_EVERY = 30


class OcspResponder:
    def __init__(
        self, ca: CertificateAuthority, store: Store, clock: Clock, trust: CATrust | None = None
    ) -> None:
        self._ca = ca
        self._trust = trust  # the live generations; None: the CA's current one only
        self._store = store
        self._clock = clock
        self._quiet_until = 0.0  # monotonic: no tryLater line logged before
        self._cache: OrderedDict[tuple[int, str, str, int | None, str | None], tuple[datetime, bytes]] = (
            OrderedDict()
        )

    def _issuer(self, algorithm: str, key_hash: bytes) -> Issuer | None:
        """The live generation whose key the request names (SHA-1, openssl's default, or SHA-256)."""
        if self._trust is not None:
            return self._trust.issuer_by_key_hash(algorithm, key_hash)
        current = self._ca.current
        return current if current.key_hashes.get(algorithm) == key_hash else None

    async def respond(self, request_der: bytes) -> bytes:
        """Answers one OCSP request (DER); malformed or foreign requests get an unsuccessful response,
        and so do requests while the CA key cannot sign (a token down): tryLater."""
        try:
            return await self._respond(request_der)
        except Unavailable as exc:
            # Anyone may send requests: one line per LOG_EVERY while it lasts, not one per request.
            if time.monotonic() >= self._quiet_until:
                self._quiet_until = time.monotonic() + LOG_EVERY
                logger.warning("OCSP answers tryLater (for %d s at least): %s", LOG_EVERY, exc.message)
            return _unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)

    async def _respond(self, request_der: bytes) -> bytes:
        """respond, which a signer that cannot sign leaves with Unavailable.

        Answers are cached per certificate and status for up to CACHE_SECONDS (CACHE_SIZE at most),
        so requests, which anyone may send, do not each cost a signature. A nonce (RFC 8954) is
        echoed in a fresh answer when the CA key is in software; with a slow key (a token) the
        cached answer is sent without it, as RFC 8954 §2.1 allows, and that signature leaves the loop.
        """
        try:
            request = ocsp.load_der_ocsp_request(request_der)
        except ValueError:
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        algorithm = request.hash_algorithm
        issuer = self._issuer(algorithm.name, request.issuer_key_hash)
        if issuer is None:
            return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        record = await self._store.get_certificate(format(request.serial_number, "x"))
        if record is None or record.ca_generation != issuer.generation:
            return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        nonces = [ext.value for ext in request.extensions if isinstance(ext.value, x509.OCSPNonce)]
        now = self._clock()
        key = (issuer.generation, algorithm.name, record.serial, record.revoked_at, record.revocation_reason)
        if nonces and not issuer.slow:
            return await self._sign(issuer, self._builder(issuer, record, algorithm, now, nonces))
        cached = self._cache.get(key)
        if cached is not None and now < cached[0]:
            return cached[1]
        der = await self._sign(issuer, self._builder(issuer, record, algorithm, now, []))
        self._cache[key] = (now + CACHE_TTL, der)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return der

    def _builder(
        self,
        issuer: Issuer,
        record: CertificateRecord,
        algorithm: hashes.HashAlgorithm,
        now: datetime,
        nonces: list[x509.OCSPNonce],
    ) -> ocsp.OCSPResponseBuilder:
        cert = x509.load_der_x509_certificate(record.der)
        builder = ocsp.OCSPResponseBuilder()
        if record.revoked_at is None:
            builder = builder.add_response(
                cert,
                issuer.cert,
                algorithm,
                ocsp.OCSPCertStatus.GOOD,
                now,
                now + VALIDITY,
                None,
                None,
            )
        else:
            builder = builder.add_response(
                cert,
                issuer.cert,
                algorithm,
                ocsp.OCSPCertStatus.REVOKED,
                now,
                now + VALIDITY,
                datetime.fromtimestamp(record.revoked_at, UTC),
                CRL_REASONS[record.revocation_reason or "unspecified"],
            )
        for nonce in nonces:  # echo the nonce (RFC 8954)
            builder = builder.add_extension(nonce, critical=False)
        return builder

    async def _sign(self, issuer: Issuer, builder: ocsp.OCSPResponseBuilder) -> bytes:
        sign = functools.partial(issuer.signer.sign_ocsp, builder, issuer.cert)
        response = await asyncio.to_thread(sign) if issuer.slow else sign()  # a token: not on the loop
        return response.public_bytes(Encoding.DER)


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(Encoding.DER)
