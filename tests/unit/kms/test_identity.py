"""kms/identity.py: names, trust domains, SPIFFE IDs and fingerprints."""

from __future__ import annotations

import hashlib

import pytest

from kms.errors import InvalidArgument
from kms.identity import (
    agent_spiffe_id,
    fingerprint,
    fingerprint_matches,
    parse_agent_spiffe_id,
    parse_fingerprint,
    validate_agent_name,
    validate_trust_domain,
)


@pytest.mark.parametrize("name", ["a", "web-1", "db.eu_1", "x" * 63])
def test_good_names(name: str) -> None:
    assert validate_agent_name(name) == name


@pytest.mark.parametrize("name", ["", "Web", "-a", "a-", "a b", "a/b", "x" * 64, "é", "a\n", "server"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_agent_name(name)


@pytest.mark.parametrize("td", ["", "Example.org", "a b", "a/b"])
def test_bad_trust_domains(td: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_trust_domain(td)


def test_spiffe_round_trip() -> None:
    uri = agent_spiffe_id("example.org", "web-1")
    assert uri == "spiffe://example.org/agent/web-1"
    assert parse_agent_spiffe_id(uri, "example.org") == "web-1"
    for bad in (
        "spiffe://other.org/agent/web-1",
        "spiffe://example.org/server/x",
        "spiffe://example.org/agent/a/b",
    ):
        with pytest.raises(InvalidArgument):
            parse_agent_spiffe_id(bad, "example.org")


def test_fingerprint_formats() -> None:
    der = b"certificate bytes"
    digest = hashlib.sha256(der).hexdigest()
    assert fingerprint(der) == "sha256:" + digest
    colons = ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()
    for spelling in ("sha256:" + digest, digest, "SHA256:" + colons, colons):
        assert parse_fingerprint(spelling) == "sha256:" + digest
        assert fingerprint_matches(der, spelling)
    assert not fingerprint_matches(b"other", digest)
    for bad in ("", "sha256:", "sha1:" + digest, digest[:-1], digest + "00", "zz" * 32):
        with pytest.raises(InvalidArgument):
            parse_fingerprint(bad)
