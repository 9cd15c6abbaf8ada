"""Detached file signatures: by agent keys, carrying the signer's certificate, or by managed key pairs.

Format (JSON, version 1)::

    {"format": "seed-kms-signature-v1", "signed_at": <unix seconds>,
     "digest": "sha256:<hex>", "signer_chain": ["<PEM>", ...], "signature": "<base64>"}

The signature covers the context string, the digest and the signing time, so
it cannot be moved to another file or re-dated. Verification checks the
chain to the CA and the signer's name *at the signing time*, revocation
*now* (through the caller's check), then the signature.

A managed key pair's signature (``kms-agent sign --key NAME``) names the key
and its version, so it still verifies after the key rotates::

    {"format": "seed-kms-key-signature-v1", "key": "<name>", "version": <n>,
     "key_type": "rsa-2048", "digest": "sha256:<hex>", "signature": "<base64>"}

Its signature is over the file's SHA-256 as it is (kms.signing.sign_digest),
so ``openssl dgst -sha256 -verify`` checks it with the version's public key.
The verifier fetches that public key, with its state, from the server.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kms.errors import DataLoss, FailedPrecondition, InvalidArgument
from kms.handshake import PeerCheck, PeerInfo, PeerRejected
from kms.identity import validate_key_name
from kms.keypairs import load_public_key
from kms.signing import PrivateKey, SignatureInvalid, sign, sign_digest, verify, verify_digest

__all__ = [
    "FORMAT",
    "KEY_FORMAT",
    "FileSignature",
    "KeySignature",
    "create",
    "parse",
    "parse_key_signature",
    "sign_key_file",
    "verify_file",
    "verify_key_file",
]

FORMAT = "seed-kms-signature-v1"
KEY_FORMAT = "seed-kms-key-signature-v1"
_CONTEXT = b"seed-kms file signature v1"
_MAX = 64 * 1024
MAX_CLOCK_SKEW = 300


@dataclass(frozen=True)
class FileSignature:
    signed_at: int
    digest: bytes
    chain: tuple[bytes, ...]  # DER, leaf first
    signature: bytes

    def encode(self) -> bytes:
        doc = {
            "format": FORMAT,
            "signed_at": self.signed_at,
            "digest": "sha256:" + self.digest.hex(),
            "signer_chain": [
                x509.load_der_x509_certificate(c).public_bytes(Encoding.PEM).decode() for c in self.chain
            ],
            "signature": base64.b64encode(self.signature).decode(),
        }
        return (json.dumps(doc, indent=2) + "\n").encode()


def _statement(digest: bytes, signed_at: int) -> bytes:
    return struct.pack(">I", len(digest)) + digest + struct.pack(">q", signed_at)


def create(key: PrivateKey, chain: tuple[bytes, ...], digest: bytes, signed_at: int) -> FileSignature:
    if len(digest) != 32:
        raise ValueError("digest must be SHA-256")
    return FileSignature(signed_at, digest, chain, sign(key, _CONTEXT, _statement(digest, signed_at)))


@dataclass(frozen=True)
class KeySignature:
    """A signature by version `version` of managed key pair `key`."""

    key: str
    version: int
    key_type: str
    digest: bytes
    signature: bytes

    def encode(self) -> bytes:
        doc = {
            "format": KEY_FORMAT,
            "key": self.key,
            "version": self.version,
            "key_type": self.key_type,
            "digest": "sha256:" + self.digest.hex(),
            "signature": base64.b64encode(self.signature).decode(),
        }
        return (json.dumps(doc, indent=2) + "\n").encode()


_NOT_A_SIGNATURE = "not a kms-agent signature file"


def _bad(what: str) -> InvalidArgument:
    return InvalidArgument(f"{_NOT_A_SIGNATURE}: {what}")


def _document(data: bytes, want: str) -> dict[str, Any]:
    """The JSON object of a signature file of format want; refuses the other format saying what to do."""
    if len(data) > _MAX:
        raise _bad(f"it is over {_MAX // 1024} KiB (kms-agent sign writes a small JSON file)")
    try:
        doc = json.loads(data)
    except ValueError:  # UnicodeDecodeError too
        what = "it is empty" if not data.strip() else "it is not JSON"
        raise _bad(f"{what} (kms-agent sign writes a JSON file)") from None
    if not isinstance(doc, dict):
        raise _bad(f"it is a JSON {type(doc).__name__}, not an object")
    found = doc.get("format")
    if found is None:
        raise _bad('it has no "format" field')
    if found == want:
        return doc
    if found == KEY_FORMAT:
        raise InvalidArgument(
            f"this signature is by key {str(doc.get('key'))[:64]!r}: verify it with --key NAME"
        )
    if found == FORMAT:
        raise InvalidArgument(
            "this signature is by an agent's certificate, not a key pair: verify it without --key"
        )
    raise InvalidArgument(f"signature format {str(found)[:64]!r} is not {want}")


def _field(doc: dict[str, Any], name: str, kind: type) -> Any:
    """doc[name], which must be of type kind (bool is not a whole number)."""
    if name not in doc:
        raise _bad(f'the "{name}" field is missing')
    value = doc[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        noun = {int: "a whole number", str: "a string", list: "a list"}[kind]
        raise _bad(f'the "{name}" field is not {noun}')
    return value


def _digest(doc: dict[str, Any]) -> bytes:
    text = _field(doc, "digest", str)
    if not text.startswith("sha256:"):
        raise _bad('the "digest" field is not "sha256:" and 64 hex digits')
    try:
        digest = bytes.fromhex(text[len("sha256:") :])
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise _bad('the "digest" field is not "sha256:" and 64 hex digits')
    return digest


def _signature(doc: dict[str, Any]) -> bytes:
    try:
        value = base64.b64decode(_field(doc, "signature", str), validate=True)
    except binascii.Error:
        value = b""
    if not value:
        raise _bad('the "signature" field is not base64')
    return value


def parse_key_signature(data: bytes) -> KeySignature:
    """Raises InvalidArgument for anything that is not a key-pair signature file, saying what is wrong."""
    doc = _document(data, KEY_FORMAT)
    version = _field(doc, "version", int)  # not 1.5, "1" or true: JSON's whole numbers only
    if not 0 < version < 2**31:
        raise _bad('the "version" field is out of range')
    try:
        key = validate_key_name(_field(doc, "key", str))
    except InvalidArgument as exc:
        raise _bad(f'the "key" field is not a key name ({exc.message})') from None
    return KeySignature(key, version, _field(doc, "key_type", str), _digest(doc), _signature(doc))


def parse(data: bytes) -> FileSignature:
    """Raises InvalidArgument for anything that is not a version-1 signature file, saying what is wrong."""
    doc = _document(data, FORMAT)
    signed_at = _field(doc, "signed_at", int)
    if not 0 < signed_at < 2**40:
        raise _bad('the "signed_at" field (the signing time) is out of range')
    pems = _field(doc, "signer_chain", list)
    try:
        chain = tuple(
            x509.load_pem_x509_certificate(str(p).encode()).public_bytes(Encoding.DER) for p in pems
        )
    except ValueError:
        chain = ()
    if not chain:
        raise _bad('the "signer_chain" field is not a list of PEM certificates')
    return FileSignature(signed_at, _digest(doc), chain, _signature(doc))


def verify_file(
    sig: FileSignature, digest: bytes, check_at: Callable[[datetime], PeerCheck], now: int
) -> PeerInfo:
    """Returns the signer if all holds. Raises DataLoss (wrong file or signature) or PeerRejected.

    Args:
        sig: the parsed signature file.
        digest: SHA-256 of the file being verified.
        check_at: makes the signer check for a point in time (the signing time).
        now: the verifier's clock (Unix seconds); a signing time beyond it is refused.

    The signing time is the signer's own claim: a key whose certificate has
    expired but was never revoked could still sign with an earlier date.
    Revoke certificates whose keys may be exposed.
    """
    if digest != sig.digest:
        raise DataLoss("the signature is for different contents: the file was changed, or it is another file")
    if sig.signed_at > now + MAX_CLOCK_SKEW:
        raise PeerRejected("the signature claims to be made in the future: check the signer's clock")
    signer = check_at(datetime.fromtimestamp(sig.signed_at, UTC))(sig.chain)
    try:
        verify(signer.public_key, sig.signature, _CONTEXT, _statement(sig.digest, sig.signed_at))
    except SignatureInvalid:
        raise DataLoss("the signature does not verify with the signer's certificate") from None
    return signer


def sign_key_file(key: PrivateKey, name: str, version: int, key_type: str, digest: bytes) -> KeySignature:
    """Signs a file's SHA-256 with version `version` of key pair `name`."""
    return KeySignature(name, version, key_type, digest, sign_digest(key, digest))


def verify_key_file(sig: KeySignature, digest: bytes, key_type: str, state: str, public_key: bytes) -> None:
    """Checks a key-pair signature against the version's public key (SPKI DER) and state, as the
    server gave them for sig.key, sig.version. Raises FailedPrecondition (a compromised version:
    nothing it signed is trusted) or DataLoss (wrong file, wrong key or a bad signature)."""
    if state in ("compromised", "destroyed_compromised"):
        raise FailedPrecondition(
            f"version {sig.version} of key {sig.key} is compromised: signatures by it are not trusted"
        )
    if digest != sig.digest:
        raise DataLoss("the signature is for different contents: the file was changed, or it is another file")
    try:
        key = load_public_key(public_key, key_type)
        if key_type != sig.key_type:
            raise ValueError("the key's type differs")
        verify_digest(key, sig.signature, sig.digest)
    except (ValueError, SignatureInvalid):
        raise DataLoss(f"the signature does not verify with version {sig.version} of key {sig.key}") from None
