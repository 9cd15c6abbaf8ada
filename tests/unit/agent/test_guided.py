"""What kms-agent enroll shows before trusting a CA on first use (agent/commands/guided.py)."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.commands.guided import describe_ca
from kms.identity import fingerprint
from tests.pki import foreign_ca_and_client


def test_the_ca_is_shown_with_subject_fingerprint_and_validity() -> None:
    ca = foreign_ca_and_client(rsa.generate_private_key(65537, 2048), "example.org", "a")[0]
    text = describe_ca(ca, "kms.example:8443")
    assert "kms.example:8443" in text
    assert f"subject:     {ca.subject.rfc4514_string()}" in text
    assert f"fingerprint: {fingerprint(ca.public_bytes(serialization.Encoding.DER))}" in text
    assert f"valid:       {ca.not_valid_before_utc:%Y-%m-%d}" in text
    assert "kms-server ca fingerprint" in text
