"""server/ca/authority.py: agent certificates from every CA key type, signed on the loop only when that is cheap."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from kms import profile
from server.ca.authority import CertificateAuthority, create_root, software_root
from server.ca.crl import BACKDATE, crl_this_update
from server.ca.keytype import CAKeyType

TD = "example.org"


@pytest.mark.parametrize(
    "key_type, slow",
    [
        (CAKeyType.EC_P256, False),
        (CAKeyType.EC_P384, True),
        (CAKeyType.RSA_3072, True),
    ],
)
def test_issues_a_checked_agent_certificate_with_each_key_type(
    rsa_key: rsa.RSAPrivateKey, key_type: CAKeyType, slow: bool
) -> None:
    now = datetime.now(UTC)
    ca = CertificateAuthority(
        software_root(create_root(TD, key_type, timedelta(days=30), now)), TD, timedelta(hours=1), lambda: now
    )
    assert ca.slow_signing is slow  # a slow signature runs in a thread, a fast one on the loop
    cert = asyncio.run(ca.issue_agent(rsa_key.public_key(), "web-1"))
    profile.check_agent_certificate(
        cert,
        ca.certificate,
        trust_domain=TD,
        name="web-1",
        public_key=rsa_key.public_key(),
        max_ttl=timedelta(hours=1),
    )


def test_crl_this_update_is_never_before_the_newest_entry_nor_after_now() -> None:
    now = datetime(2026, 12, 7, 12, 0, 0, 750_000, tzinfo=UTC)
    second = now.replace(microsecond=0)
    # No entry after it (the CRL would contradict itself), backdated no further than that.
    entry = datetime(2026, 12, 7, 11, 59, 55, tzinfo=UTC)
    assert crl_this_update(now, [entry]) == entry
    assert crl_this_update(now, [now.replace(microsecond=0)]) == second  # just revoked
    # Old entries only (or none): backdated BACKDATE, for relying parties whose clocks run slow.
    assert crl_this_update(now, [now - timedelta(days=1)]) == second - BACKDATE
    assert crl_this_update(now, []) == second - BACKDATE
    # An entry from a replica whose clock runs ahead does not date the CRL in the future.
    assert crl_this_update(now, [now + timedelta(seconds=3)]) == second


def test_a_crl_is_never_dated_before_the_one_issued_before_it(tmp_path: Path) -> None:
    """A release within BACKDATE of a revocation: the next CRL lists less, but is not older."""
    from server.ca.crl import CrlPublisher
    from server.store import CertificateRecord, JoinTokenRecord, SqliteStore

    t0 = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    now = [t0]
    at = int(t0.timestamp())

    async def body() -> list[datetime]:
        store = await SqliteStore.open(tmp_path / "kms.db")
        try:
            ca = CertificateAuthority(
                software_root(create_root(TD, CAKeyType.EC_P256, timedelta(days=30), t0)),
                TD,
                timedelta(hours=1),
                lambda: now[0],
            )
            crls = CrlPublisher(ca, store, lambda: now[0])
            await store.add_join_token(JoinTokenRecord("t1", b"h" * 32, "web-1", (), at, at + 900))
            assert await store.enroll(
                "t1", b"h" * 32, at, CertificateRecord("aa", "web-1", at, at + 3600, b"der", at, None)
            )
            await store.revoke_certificate("aa", "certificateHold", at)
            dates = [x509.load_der_x509_crl(await crls.current()).last_update_utc]
            now[0] = t0 + timedelta(seconds=10)
            await store.release_certificate("aa", at + 10)
            crls.invalidate()
            dates.append(x509.load_der_x509_crl(await crls.current()).last_update_utc)
            return dates
        finally:
            await store.close()

    first, second = asyncio.run(body())
    assert first == t0 and second >= first
