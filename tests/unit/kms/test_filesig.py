"""kms/filesig.py: the signature binds file, time and signer; malformed files are refused."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from kms import filesig, profile
from kms.errors import DataLoss, InvalidArgument
from kms.handshake import PeerRejected
from kms.peers import agent_peer
from tests.pki import foreign_ca_and_client

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
    return lambda when: agent_peer([ca], "t.org", name, when, lambda s: False)


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


def _doc(**fields: object) -> bytes:
    base: dict[str, object] = {
        "format": filesig.FORMAT,
        "signed_at": 1_700_000_000,
        "digest": "sha256:" + "ab" * 32,
        "signer_chain": ["not pem"],
        "signature": "c2ln",
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


@pytest.mark.parametrize(
    "data, reason",
    [
        pytest.param(b"", "it is empty", id="empty"),
        pytest.param(b"garbage\n", "it is not JSON", id="not-json"),
        pytest.param(b"\xff\xfe" * 10, "it is not JSON", id="binary"),
        pytest.param(b"[1]", "it is a JSON list, not an object", id="list"),
        pytest.param(b"{}", 'it has no "format" field', id="no-format"),
        pytest.param(_doc(signed_at=None), 'the "signed_at" field is missing', id="no-time"),
        pytest.param(_doc(signed_at="1"), 'the "signed_at" field is not a whole number', id="time-text"),
        pytest.param(_doc(signed_at=True), 'the "signed_at" field is not a whole number', id="time-bool"),
        pytest.param(
            _doc(signed_at=10**20), '"signed_at" field (the signing time) is out of range', id="time"
        ),
        pytest.param(_doc(signer_chain=None), 'the "signer_chain" field is missing', id="no-chain"),
        pytest.param(_doc(signer_chain="x"), 'the "signer_chain" field is not a list', id="chain-text"),
        pytest.param(
            _doc(), 'the "signer_chain" field is not a list of PEM certificates', id="chain-not-pem"
        ),
    ],
)
def test_malformed_says_what_is_wrong(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        filesig.parse(data)
    assert info.value.message.startswith("not a kms-agent signature file: "), info.value.message
    assert reason in info.value.message
    assert "Error)" not in info.value.message  # no exception class names


def test_malformed_fields_after_the_chain(signer) -> None:  # type: ignore[no-untyped-def]
    _, chain = signer
    pem = x509.load_der_x509_certificate(chain[0]).public_bytes(Encoding.PEM).decode()
    for fields, reason in [
        ({"digest": None}, 'the "digest" field is missing'),
        ({"digest": "md5:00"}, 'the "digest" field is not "sha256:" and 64 hex digits'),
        ({"digest": "sha256:zz"}, 'the "digest" field is not "sha256:" and 64 hex digits'),
        ({"signature": None}, 'the "signature" field is missing'),
        ({"signature": "!!"}, 'the "signature" field is not base64'),
    ]:
        with pytest.raises(InvalidArgument, match="not a kms-agent signature file: ") as info:
            filesig.parse(_doc(signer_chain=[pem], **fields))
        assert reason in info.value.message


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"version": None}, 'the "version" field is missing'),
        ({"version": 1.5}, 'the "version" field is not a whole number'),
        ({"version": 0}, 'the "version" field is out of range'),
        ({"key": "../x"}, 'the "key" field is not a key name'),
        ({"key_type": 7}, 'the "key_type" field is not a string'),
    ],
)
def test_malformed_key_signature_says_what_is_wrong(fields: dict[str, object], reason: str) -> None:
    doc = {"format": filesig.KEY_FORMAT, "key": "k", "version": 1, "key_type": "rsa-2048"}
    doc |= {"digest": "sha256:" + "ab" * 32, "signature": "c2ln"}
    doc |= fields
    data = json.dumps({k: v for k, v in doc.items() if v is not None}).encode()
    with pytest.raises(InvalidArgument, match="not a kms-agent signature file: ") as info:
        filesig.parse_key_signature(data)
    assert reason in info.value.message


def test_signature_from_another_ca_says_so(signer, rsa_key: rsa.RSAPrivateKey) -> None:  # type: ignore[no-untyped-def]
    """Issue 17: a signature made in another deployment is not the verifier's to fix by enrolling again."""
    ca, _ = signer
    _, foreign = foreign_ca_and_client(rsa_key, "t.org", "web-1")
    digest = hashlib.sha256(b"file").digest()
    now = int(NOW.timestamp())
    sig = filesig.create(rsa_key, (foreign.public_bytes(Encoding.DER),), digest, now)
    check = lambda when: agent_peer([ca], "t.org", None, when, lambda s: False, "signer")  # noqa: E731
    with pytest.raises(PeerRejected) as info:
        filesig.verify_file(sig, digest, check, now)
    assert info.value.message.startswith(
        "the signer is not acceptable: certificate was not issued by this CA"
    )
    assert "enroll" not in info.value.message
