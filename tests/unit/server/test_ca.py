"""server/ca/authority.py: agent certificates from every CA key type, signed on the loop only when that is cheap."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kms import profile
from server.ca.authority import CertificateAuthority, create_root, software_root
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
