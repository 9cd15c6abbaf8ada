"""server/enrollment/service.py: the renewal window, over a real SQLite store and a real CA."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from kms.errors import ResourceExhausted
from server.ca.authority import CertificateAuthority, create_root, software_root
from server.ca.keytype import CAKeyType
from server.endpoints.authn import Caller
from server.enrollment.service import EnrollmentService
from server.store import SqliteStore
from tests.pki import csr_der

TD = "example.org"
START = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


class _Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def _caller(cert: x509.Certificate, name: str) -> Caller:
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return Caller(
        name,
        (),
        format(cert.serial_number, "x"),
        f"spiffe://{TD}/agent/{name}",
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        key,
    )


@pytest.mark.parametrize(
    "cert_ttl, refused_at, allowed_at",
    [
        # The window (1h) is capped at a quarter of the caller's own lifetime: 15 minutes of 1h.
        (timedelta(hours=1), timedelta(minutes=10), timedelta(minutes=16)),
        # A long-lived certificate gets the whole window.
        (timedelta(hours=24), timedelta(minutes=50), timedelta(minutes=61)),
    ],
)
def test_one_renewal_per_window_capped_by_the_callers_lifetime(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    cert_ttl: timedelta,
    refused_at: timedelta,
    allowed_at: timedelta,
) -> None:
    async def body() -> None:
        clock = _Clock()
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            root = create_root(TD, CAKeyType.EC_P256, timedelta(days=30), START - timedelta(hours=1))
            ca = CertificateAuthority(software_root(root), TD, cert_ttl, clock)
            service = EnrollmentService(
                store,
                ca,
                clock,
                default_token_ttl=timedelta(minutes=15),
                max_token_ttl=timedelta(days=1),
                renew_window=timedelta(hours=1),
            )
            issued = await service.create_token("web-1", [], None)
            enrolled = await service.enroll(str(issued.token), csr_der(rsa_key))
            first = await service.renew(_caller(enrolled.certificate, "web-1"), csr_der(other_rsa_key))
            clock.now = START + refused_at
            with pytest.raises(ResourceExhausted, match="renews at most once"):
                await service.renew(_caller(first, "web-1"), csr_der(rsa_key))
            clock.now = START + allowed_at
            await service.renew(_caller(first, "web-1"), csr_der(rsa_key))
        finally:
            await store.close()

    asyncio.run(body())
