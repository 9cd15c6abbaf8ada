"""The certificate authority: owns the root key and issues certificates.

Issuing follows STYLE 6: a template from kms.profile, the signature here, and
the profile's re-check before anything leaves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp

from kms import profile
from kms.errors import Unavailable
from server.ca.issuer import Issuer, make_issuer
from server.ca.keytype import CAKeyType
from server.ca.signer import CARoot, CASigner, SoftwareSigner
from server.clock import Clock
from server.deployment.datadir import DataDir, DataDirError, KeyPair
from server.deployment.sealing import Sealer

__all__ = [
    "CertificateAuthority",
    "check_key_type",
    "create_external_root",
    "create_root",
    "external_root",
    "software_root",
    "generate_key",
    "key_type_of",
]

logger = logging.getLogger(__name__)


def generate_key(key_type: CAKeyType) -> profile.IssuerKey:
    if key_type is CAKeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is CAKeyType.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    bits = 3072 if key_type is CAKeyType.RSA_3072 else 4096
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_type_of(key: profile.IssuerKey) -> CAKeyType:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return CAKeyType.EC_P384 if key.curve.key_size == 384 else CAKeyType.EC_P256
    return CAKeyType.RSA_3072 if key.key_size == 3072 else CAKeyType.RSA_4096


class CertificateAuthority:
    """Issues with one CA generation at a time: ``current``, an immutable Issuer swapped whole.

    Every method reads ``current`` once at its start and uses only that snapshot, so an activation
    followed while another thread signs never mixes two CAs in one certificate or record.
    """

    def __init__(
        self,
        root: CARoot,
        trust_domain: str,
        cert_ttl: timedelta,
        clock: Clock,
        status_urls: profile.StatusUrls | None = None,
    ) -> None:
        self._status_urls = status_urls
        self.trust_domain = trust_domain
        self.cert_ttl = cert_ttl
        self._clock = clock
        self.clock = clock
        self.current: Issuer = make_issuer(root, 1)
        # Why this server issues nothing (None: it issues): the store's active CA is another
        # generation than current, and its key does not open here (issue 19 §1).
        self.refusing: str | None = None

    def switch(self, issuer: Issuer) -> None:
        """Issues with issuer from now on: the CA generation an activation made active (issue 19 §1),
        in memory, without a restart; one assignment, so readers see the old CA or the new, whole."""
        self.current = issuer
        self.refusing = None

    def refuse(self, why: str | None) -> None:
        """Issues no agent certificate while why is set (UNAVAILABLE, why): never with a replaced CA."""
        self.refusing = why

    # Each of these reads the snapshot once: for a single value only (a method that needs two
    # reads current itself).
    @property
    def generation(self) -> int:
        return self.current.generation

    @property
    def certificate(self) -> x509.Certificate:
        return self.current.cert

    @property
    def bundle_pem(self) -> bytes:
        return self.current.bundle_pem

    @property
    def chain_der(self) -> tuple[bytes, ...]:
        return self.current.chain_der

    @property
    def fingerprint(self) -> str:
        return self.current.fingerprint

    @property
    def key_type(self) -> CAKeyType:
        return self.current.key_type

    @property
    def key_in_software(self) -> bool:
        return self.current.signer.in_software

    @property
    def slow_signing(self) -> bool:
        return self.current.slow

    async def issue_agent(self, public_key: rsa.RSAPublicKey, name: str) -> x509.Certificate:
        return (await self.issue(public_key, name))[0]

    async def issue(self, public_key: rsa.RSAPublicKey, name: str) -> tuple[x509.Certificate, Issuer]:
        """Issues an agent client certificate; returns it with the CA generation that signed it (the
        generation its record carries, the chain sent with it). Only public_key comes from the request.

        Only the signature leaves the event loop, and only when it is slow (see
        slow_signing): building and checking the certificate hold the GIL
        wherever they run.
        """
        issuer = self.current
        if (why := self.refusing) is not None:
            raise Unavailable(why)
        now = self._clock()
        builder = profile.agent_builder(
            public_key,
            issuer.cert,
            self.trust_domain,
            name,
            x509.random_serial_number(),
            now,
            self.cert_ttl,
            self._status_urls_for(issuer.generation),
        )
        sign = functools.partial(issuer.signer.sign_certificate, builder)
        cert = await asyncio.to_thread(sign) if issuer.slow else sign()
        profile.check_agent_certificate(
            cert,
            issuer.cert,
            trust_domain=self.trust_domain,
            name=name,
            public_key=public_key,
            max_ttl=self.cert_ttl,
            status=self._status_urls_for(issuer.generation),
        )
        return cert, issuer

    def _status_urls_for(self, generation: int) -> profile.StatusUrls | None:
        """Generation 1's certificates point at <base>/crl (as they always did), a later generation's
        at its own CRL, <base>/crl/N (server/ca/crl.py); OCSP answers for every live generation."""
        urls = self._status_urls
        if urls is None or generation == 1:
            return urls
        return dataclasses.replace(urls, crl=f"{urls.crl}/{generation}")

    def sign_crl(
        self,
        revoked: list[tuple[int, datetime, x509.ReasonFlags]],
        number: int,
        this_update: datetime,
        next_update: datetime,
        issuer: Issuer | None = None,
    ) -> x509.CertificateRevocationList:
        """An X.509 v2 CRL (RFC 5280 §5) of issuer (default: the current CA): CRL number, AKI,
        nextUpdate, a reason code per entry.

        this_update is used as given: not backdated, since a CRL must not list a revocation
        dated after its own thisUpdate (RFC 5280 §5.1.2.4: the date this CRL was issued).
        """
        issuer = issuer or self.current
        ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.cert.subject)
            .last_update(this_update)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
        )
        for serial, when, reason in revoked:
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
            if reason is not x509.ReasonFlags.unspecified:  # RFC 5280 §5.3.1: omit rather than unspecified
                entry = entry.add_extension(x509.CRLReason(reason), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        return issuer.signer.sign_crl(builder)

    def sign_ocsp(self, builder: ocsp.OCSPResponseBuilder, issuer: Issuer | None = None) -> ocsp.OCSPResponse:
        """Signs an OCSP response as the CA itself (RFC 6960 §4.2.2.2: the issuer may respond)."""
        issuer = issuer or self.current
        return issuer.signer.sign_ocsp(builder, issuer.cert)

    def issue_server(self, sans: tuple[str, ...], ttl: timedelta, issuer: Issuer | None = None) -> KeyPair:
        """Issues the server's own TLS certificate on a fresh P-256 key (from issuer: default current)."""
        issuer = issuer or self.current
        key = ec.generate_private_key(ec.SECP256R1())
        builder = profile.server_builder(
            key.public_key(), issuer.cert, sans, x509.random_serial_number(), self._clock(), ttl
        )
        cert = issuer.signer.sign_certificate(builder)
        profile.check_server_certificate(cert, issuer.cert, sans, ttl)
        return KeyPair(cert, key)


def create_root(trust_domain: str, key_type: CAKeyType | None, ca_ttl: timedelta, now: datetime) -> KeyPair:
    """Makes a new root key and self-signed certificate, in memory only."""
    key = generate_key(key_type or CAKeyType.EC_P256)
    cert = profile.ca_builder(key.public_key(), trust_domain, x509.random_serial_number(), now, ca_ttl).sign(
        key, profile.signature_hash(key)
    )
    profile.check_ca_certificate(cert, ca_ttl)
    return KeyPair(cert, key)


def create_external_root(signer: CASigner, trust_domain: str, ca_ttl: timedelta, now: datetime) -> CARoot:
    """A new self-signed CA certificate for a key held outside (a PKCS#11 token)."""
    builder = profile.ca_builder(signer.public_key(), trust_domain, x509.random_serial_number(), now, ca_ttl)
    cert = signer.sign_certificate(builder)
    profile.check_ca_certificate(cert, ca_ttl)
    return CARoot(cert, signer)


def software_root(pair: KeyPair) -> CARoot:
    return CARoot(pair.cert, SoftwareSigner(pair.key))


def load_root(datadir: DataDir, sealer: Sealer, key_type: CAKeyType | None) -> CARoot:
    """Loads the root; a --ca-key-type that differs from it is an error (a CA's key cannot change)."""
    root = datadir.load_pair(datadir.ca_cert, datadir.ca_key, sealer)
    check_key_type(key_type_of(root.key), key_type, str(datadir.path))
    return software_root(root)


def external_root(cert: x509.Certificate, signer: CASigner, key_type: CAKeyType | None, where: str) -> CARoot:
    """The CA certificate with the key held outside, checked to belong together."""
    if cert.public_key() != signer.public_key():
        raise DataDirError(
            f"{signer} is not the CA key of {where}: its public key is not the CA certificate's"
        )
    check_key_type(signer.key_type, key_type, where)
    return CARoot(cert, signer)


def check_key_type(actual: CAKeyType, key_type: CAKeyType | None, where: str) -> None:
    if key_type is not None and actual is not key_type:
        raise DataDirError(
            f"the CA in {where} has a {actual.value} key; --ca-key-type {key_type.value} cannot change an existing CA"
        )
