"""server/ca/authority.py: agent certificates from every CA key type, signed on the loop only when that is cheap."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
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
