"""The vectors docs/protocol.md added (tests/vectors/generate_spec.py), recomputed here as the
document says: the transcript of whole exchanges, join tokens, a file signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import x25519

from kms import filesig
from kms.errors import DataLoss, FailedPrecondition, InvalidArgument
from kms.handshake import key_schedule, session_keys
from kms.peers import agent_peer
from kms.signing import verify
from kms.tokens import JoinToken

VECTORS = Path(__file__).parents[2] / "vectors"


def _load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text())


TRANSCRIPT = _load("transcript.json")


def _enc(*fields: int | str | bytes | list[bytes]) -> bytes:
    """protocol.md §6.3, written from the document."""
    out = b""
    for f in fields:
        if isinstance(f, int):
            out += struct.pack(">Q", f)
        elif isinstance(f, list):
            out += struct.pack(">I", len(f)) + b"".join(struct.pack(">I", len(i)) + i for i in f)
        else:
            data = f.encode() if isinstance(f, str) else f
            out += struct.pack(">I", len(data)) + data
    return out


def _mac(key: bytes, label: bytes, th: bytes) -> bytes:
    return hmac.new(key, label + b"\x00" + th, hashlib.sha256).digest()


def _key(chain_hex: list[str]) -> Any:
    return x509.load_der_x509_certificate(bytes.fromhex(chain_hex[0])).public_key()


@pytest.mark.parametrize("case", TRANSCRIPT["exchanges"], ids=lambda c: c["name"])
def test_transcript_recomputes_as_the_document_says(case: dict[str, Any]) -> None:
    h, r, i = case["hello"], case["resp_auth"], case["init_auth"]
    b = bytes.fromhex
    eph_i = x25519.X25519PrivateKey.from_private_bytes(b(case["initiator_ephemeral_private"]))
    shared = eph_i.exchange(x25519.X25519PublicKey.from_public_bytes(b(r["share"])))
    chain_r, chain_i = [b(c) for c in r["chain"]], [b(c) for c in i["chain"]]
    th1 = hashlib.sha256(
        _enc(h["version"], h["group"], b(h["nonce"]), b(h["share"]), h["responder"])
        + _enc(b(r["nonce"]), b(r["share"]), chain_r)
    ).digest()
    keys = key_schedule(shared, b(h["nonce"]), b(r["nonce"]), th1)
    assert _mac(keys.mac_r, b"responder", th1).hex() == r["mac"]
    verify(_key(r["chain"]), b(r["signature"]), b"seed-kms handshake v1 responder", th1)
    th2 = hashlib.sha256(th1 + _enc(b(r["signature"]), b(r["mac"])) + _enc(chain_i)).digest()
    assert _mac(keys.mac_i, b"initiator", th2).hex() == i["mac"]
    verify(_key(i["chain"]), b(i["signature"]), b"seed-kms handshake v1 initiator", th2)
    th3 = hashlib.sha256(th2 + _enc(b(i["signature"]), b(i["mac"]))).digest()
    key, session_id, confirm_key = session_keys(shared, b(h["nonce"]), b(r["nonce"]), th3)
    assert _mac(confirm_key, b"finished", th3).hex() == case["finished"]["confirm"]
    assert (key.hex(), session_id) == (case["session_key"], case["session_id"])


def test_join_tokens() -> None:
    vectors = _load("join_token.json")
    for case in vectors["valid"]:
        token = JoinToken.parse(case["text"])
        assert (token.token_id, token.secret.hex()) == (case["id_bytes"], case["secret"])
        assert token.secret_hash.hex() == case["secret_hash"]
    for case in vectors["invalid"]:
        with pytest.raises(InvalidArgument):
            JoinToken.parse(case["text"])


def test_file_signature() -> None:
    v = _load("signature.json")
    ca = x509.load_der_x509_certificate(bytes.fromhex(v["ca"]))
    sig = filesig.parse(v["signature_file"].encode())
    digest = hashlib.sha256(bytes.fromhex(v["file_hex"])).digest()
    assert filesig._statement(digest, sig.signed_at).hex() == v["statement_hex"]

    def check_at(when: datetime) -> Any:
        return agent_peer([ca], v["trust_domain"], v["signer"], when, lambda serial: False, "signer")

    now = sig.signed_at + 60
    assert filesig.verify_file(sig, digest, check_at, now).name == v["signer"]
    tampered = hashlib.sha256(bytes.fromhex(v["tampered_file_hex"])).digest()
    with pytest.raises(DataLoss):
        filesig.verify_file(sig, tampered, check_at, now)
    assert datetime.fromtimestamp(sig.signed_at, UTC).year == 2026


def test_key_pair_signature() -> None:
    v = _load("signature.json")
    ks = v["key_signature"]
    sig = filesig.parse_key_signature(ks["signature_file"].encode())
    spki = bytes.fromhex(ks["public_key_spki_hex"])
    digest = hashlib.sha256(bytes.fromhex(v["file_hex"])).digest()
    filesig.verify_key_file(sig, digest, "ec-p256", "active", spki)
    with pytest.raises(FailedPrecondition):
        filesig.verify_key_file(sig, digest, "ec-p256", "compromised", spki)
    with pytest.raises(DataLoss):
        filesig.verify_key_file(
            sig, hashlib.sha256(bytes.fromhex(v["tampered_file_hex"])).digest(), "ec-p256", "active", spki
        )
