"""Writes the vectors docs/protocol.md adds to wrap, envelope and key-schedule ones (checked in).

    python tests/vectors/generate_spec.py

transcript.json  two whole exchanges (agent-server over X25519 with an EC P-256 server, agent-agent
                 over X25519) run by kms.handshake's own state machines with fixed nonces and
                 ephemeral keys; every message, the session key and id; the throwaway CA and
                 certificates are public only (their private keys are never written)
join_token.json  join tokens from fixed random bytes, their stored hashes, and texts refused as tokens
signature.json   a detached file signature (kms.filesig format 1) by a throwaway agent certificate, and
                 one by a throwaway EC P-256 key pair (the key-signature format), with its public key

RSA-PSS and ECDSA draw randomness, so re-running changes the signatures (and what is derived from
the transcript after them); only re-run when a format changes.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from kms import filesig, keypairs, profile
from kms.groups import Ephemeral, Group
from kms.handshake import Initiator, LocalIdentity, PeerInfo, Responder
from kms.tokens import JoinToken

HERE = Path(__file__).resolve().parent
TD = "vectors.example"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _seed(tag: str, n: int = 32) -> bytes:
    return hashlib.sha256(f"seed-kms spec vector {tag}".encode()).digest()[:n]


def _pki() -> tuple[x509.Certificate, LocalIdentity, LocalIdentity, LocalIdentity]:
    """A throwaway CA (EC P-256), server (EC P-256, for 127.0.0.1) and agents a and b (RSA-2048)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = profile.ca_builder(ca_key.public_key(), TD, 1 << 70, NOW, timedelta(days=3650)).sign(
        ca_key, hashes.SHA256()
    )
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = profile.server_builder(srv_key.public_key(), ca, ("127.0.0.1",), 1 << 71, NOW, timedelta(days=3650))
    server = LocalIdentity(srv_key, (srv.sign(ca_key, hashes.SHA256()).public_bytes(Encoding.DER),))
    agents = []
    for name, serial in (("a", 1 << 72), ("b", 1 << 73)):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = profile.agent_builder(key.public_key(), ca, TD, name, serial, NOW, timedelta(days=3650))
        agents.append(LocalIdentity(key, (cert.sign(ca_key, hashes.SHA256()).public_bytes(Encoding.DER),)))
    return ca, server, agents[0], agents[1]


def _peer(name: str, identity: LocalIdentity) -> PeerInfo:
    cert = x509.load_der_x509_certificate(identity.chain[0])
    return PeerInfo(name, format(cert.serial_number, "x"), cert.public_key())  # type: ignore[arg-type]


def _exchange(tag: str, initiator: LocalIdentity, responder: LocalIdentity, name: str) -> dict[str, object]:
    eph_i = _seed(f"{tag} ephemeral i")
    eph_r = _seed(f"{tag} ephemeral r")
    nonce_i, nonce_r = _seed(f"{tag} nonce i"), _seed(f"{tag} nonce r")
    i = Initiator(
        initiator,
        lambda chain: _peer(name, responder),
        name,
        nonce=nonce_i,
        ephemeral=Ephemeral.from_private_value(Group.X25519, eph_i),
    )
    r = Responder(
        responder,
        lambda chain: _peer("a", initiator),
        name,
        nonce=nonce_r,
        ephemeral_factory=lambda group: Ephemeral.from_private_value(group, eph_r),
    )
    hello = i.start()
    resp = r.receive(hello)
    init = i.receive(resp)
    assert init is not None
    fin = r.receive(init)
    assert i.receive(fin) is None and i.session is not None and r.session is not None
    assert i.session.key == r.session.key
    return {
        "initiator_ephemeral_private": eph_i.hex(),
        "responder_ephemeral_private": eph_r.hex(),
        "hello": {
            "version": hello.version,
            "group": hello.group,
            "nonce": hello.nonce.hex(),
            "share": hello.share.hex(),
            "responder": hello.responder,
        },
        "resp_auth": {
            "nonce": resp.nonce.hex(),  # type: ignore[union-attr]
            "share": resp.share.hex(),  # type: ignore[union-attr]
            "chain": [c.hex() for c in resp.chain],  # type: ignore[union-attr]
            "signature": resp.signature.hex(),  # type: ignore[union-attr]
            "mac": resp.mac.hex(),  # type: ignore[union-attr]
        },
        "init_auth": {
            "chain": [c.hex() for c in init.chain],
            "signature": init.signature.hex(),
            "mac": init.mac.hex(),
        },
        "finished": {"confirm": fin.confirm.hex()},  # type: ignore[union-attr]
        "session_key": i.session.key.hex(),
        "session_id": i.session.session_id,
    }


def _transcript(
    ca: x509.Certificate, server: LocalIdentity, a: LocalIdentity, b: LocalIdentity
) -> dict[str, object]:
    return {
        "comment": "kms.handshake v1 exchanges by the real state machines; throwaway PKI (public parts only)",
        "ca": ca.public_bytes(Encoding.DER).hex(),
        "trust_domain": TD,
        "exchanges": [
            {"name": "agent-server", **_exchange("agent-server", a, server, "server")},
            {"name": "agent-agent", **_exchange("agent-agent", a, b, "b")},
        ],
    }


def _join_tokens() -> dict[str, object]:
    valid = []
    for i in range(2):
        token = JoinToken.from_parts(_seed(f"token id {i}", 8), _seed(f"token secret {i}"))
        valid.append(
            {
                "id_bytes": bytes.fromhex(token.token_id).hex(),
                "secret": token.secret.hex(),
                "text": str(token),
                "secret_hash": token.secret_hash.hex(),
            }
        )
    good = valid[0]["text"]
    assert isinstance(good, str)
    invalid = [
        {"text": good.upper(), "why": "id in upper case"},
        {"text": good.replace(".", ":"), "why": "separator is not a dot"},
        {"text": good + "=", "why": "base64 padding"},
        {"text": good[:-1], "why": "secret one character short"},
        {"text": good[:-1] + ("B" if good[-1] != "B" else "C"), "why": "non-canonical last character"},
        {"text": good.replace("-", "+").replace("_", "/"), "why": "standard, not url-safe, base64"},
    ]
    for case in invalid:  # keep only real refusals (a random secret may lack '-' or '_')
        if case["text"] == good:
            case["text"] = good[:-1] + "+"
    return {"comment": "kms.tokens v1: fixed id and secret bytes", "valid": valid, "invalid": invalid}


def _signature(a: LocalIdentity, ca: x509.Certificate) -> dict[str, object]:
    content = b"release 1.2.3 of something worth signing\n"
    signed_at = int(NOW.timestamp()) + 86400
    sig = filesig.create(a.key, a.chain, hashlib.sha256(content).digest(), signed_at)
    return {
        "comment": "kms.filesig format 1 by throwaway agent 'a' of transcript.json's CA",
        "ca": ca.public_bytes(Encoding.DER).hex(),
        "trust_domain": TD,
        "signer": "a",
        "file_hex": content.hex(),
        "signature_file": sig.encode().decode(),
        "statement_hex": filesig._statement(sig.digest, signed_at).hex(),
        # The same file with one byte changed: the digest no longer matches.
        "tampered_file_hex": (content[:-2] + b"4\n").hex(),
        "key_signature": _key_signature(content),
    }


def _key_signature(content: bytes) -> dict[str, object]:
    """Version 3 of key pair "release-signer" (ec-p256) signs content: the file and the public key."""
    key = keypairs.generate("ec-p256")
    sig = filesig.sign_key_file(key, "release-signer", 3, "ec-p256", hashlib.sha256(content).digest())
    return {"public_key_spki_hex": keypairs.public_der(key).hex(), "signature_file": sig.encode().decode()}


def main() -> None:
    ca, server, a, b = _pki()
    (HERE / "transcript.json").write_text(json.dumps(_transcript(ca, server, a, b), indent=2) + "\n")
    (HERE / "join_token.json").write_text(json.dumps(_join_tokens(), indent=2) + "\n")
    (HERE / "signature.json").write_text(json.dumps(_signature(a, ca), indent=2) + "\n")


if __name__ == "__main__":
    main()
