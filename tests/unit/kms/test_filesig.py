"""kms/filesig.py: the signature binds file, time and signer; malformed files are refused."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from kms import filesig, profile
from kms.errors import DataLoss, InvalidArgument
from kms.handshake import PeerRejected
from kms.peers import agent_peer

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def signer(rsa_key: rsa.RSAPrivateKey):  # type: ignore[no-untyped-def]
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = profile.ca_builder(ca_key.public_key(), "t.org", 1 << 70, NOW, timedelta(days=3)).sign(
        ca_key, hashes.SHA256()
    )
    cert = profile.agent_builder(
        rsa_key.public_key(), ca, "t.org", "web-1", 1 << 71, NOW, timedelta(hours=1)
    ).sign(ca_key, hashes.SHA256())
    return ca, (cert.public_bytes(Encoding.DER),)


def _check(ca, name="web-1"):  # type: ignore[no-untyped-def]
    return lambda when: agent_peer(ca, "t.org", name, when, lambda s: False)


def test_round_trip_and_binding(signer, rsa_key: rsa.RSAPrivateKey) -> None:  # type: ignore[no-untyped-def]
    ca, chain = signer
    digest = hashlib.sha256(b"file").digest()
    now = int(NOW.timestamp())
    sig = filesig.parse(filesig.create(rsa_key, chain, digest, now).encode())
    assert filesig.verify_file(sig, digest, _check(ca), now).name == "web-1"
    with pytest.raises(DataLoss):
        filesig.verify_file(sig, hashlib.sha256(b"other").digest(), _check(ca), now)
    redated = filesig.FileSignature(now - 10, sig.digest, sig.chain, sig.signature)
    with pytest.raises(DataLoss):
        filesig.verify_file(redated, digest, _check(ca), now)
    with pytest.raises(PeerRejected):
        filesig.verify_file(sig, digest, _check(ca, "web-2"), now)


def test_future_and_absurd_signing_times(signer, rsa_key: rsa.RSAPrivateKey) -> None:  # type: ignore[no-untyped-def]
    ca, chain = signer
    digest = hashlib.sha256(b"file").digest()
    now = int(NOW.timestamp())
    future = filesig.create(rsa_key, chain, digest, now + 3600)
    with pytest.raises(PeerRejected, match="future"):
        filesig.verify_file(future, digest, _check(ca), now)
    text = filesig.create(rsa_key, chain, digest, now).encode().replace(str(now).encode(), b"9" * 40)
    with pytest.raises(InvalidArgument):
        filesig.parse(text)


@pytest.mark.parametrize("data", [b"", b"{}", b"[]", b'{"format": "other"}', b"\xff" * 10])
def test_malformed(data: bytes) -> None:
    with pytest.raises(InvalidArgument):
        filesig.parse(data)
