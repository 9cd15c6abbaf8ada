"""Managed key pairs, the pure parts (issue 16 §4): key types, kms.wrap format 2 (RSA-OAEP of an
AES-256 key, AES-KWP of the PKCS#8 DER) and the key-pair signature file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, keywrap
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from kms import filesig, keypairs
from kms.errors import DataLoss, FailedPrecondition, InvalidArgument, WrongKeyType
from kms.signing import sign_digest
from kms.wrap import (
    UnwrapError,
    private_key_label,
    unwrap,
    unwrap_private_key,
    wrap,
    wrap_label,
    wrap_private_key,
)
from tests.unit.kms.test_wrap import _vector_key

KEK = bytes(range(32))
VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "wrap_private_key.json").read_text())


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    key = keypairs.generate("ec-p256")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


# --- key types -----------------------------------------------------------------------


def test_key_types_parse_and_refuse_saying_what_to_use() -> None:
    assert keypairs.parse_key_type("") == "aes-256" and keypairs.parse_key_type(" RSA-3072 ") == "rsa-3072"
    with pytest.raises(InvalidArgument, match="use one of aes-256, rsa-2048, rsa-3072, rsa-4096, ec-p256"):
        keypairs.parse_key_type("rsa-1024")
    with pytest.raises(WrongKeyType, match="use kms-agent sign/verify --key app"):
        keypairs.require_aes("app", "ec-p256", "encrypt")
    with pytest.raises(WrongKeyType, match="not a key pair.*--type rsa-2048"):
        keypairs.require_key_pair("app", "aes-256", "sign")
    keypairs.require_aes("app", "aes-256", "encrypt")
    keypairs.require_key_pair("app", "rsa-4096", "sign")


def test_encodings_round_trip_and_check_the_type(
    ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert keypairs.type_of(ec_key) == "ec-p256" and keypairs.type_of(rsa_key.public_key()) == "rsa-2048"
    der = keypairs.private_der(ec_key)
    assert keypairs.public_der(keypairs.load_private_key(der, "ec-p256")) == keypairs.public_der(ec_key)
    with pytest.raises(ValueError, match="not an rsa-2048 key"):
        keypairs.load_private_key(der, "rsa-2048")
    with pytest.raises(ValueError, match="not an ec-p256 key"):
        keypairs.load_public_key(keypairs.public_der(rsa_key), "ec-p256")
    with pytest.raises(ValueError):
        keypairs.type_of(ec.generate_private_key(ec.SECP384R1()))


@pytest.mark.parametrize("key_type, bits", [("rsa-2048", 2048), ("rsa-3072", 3072), ("rsa-4096", 4096)])
def test_rsa_types_generate_keys_of_exactly_their_size(key_type: str, bits: int) -> None:
    key = keypairs.generate(key_type)  # once per size: RSA-4096 takes a while
    assert isinstance(key, rsa.RSAPrivateKey)
    numbers = key.private_numbers()
    # The modulus itself, not only the library's key_size: exactly `bits` bits, e = 65537.
    assert (key.key_size, numbers.public_numbers.n.bit_length()) == (bits, bits)
    assert numbers.public_numbers.e == 65537
    assert keypairs.type_of(key) == keypairs.type_of(key.public_key()) == key_type
    # What is sealed and published reads back as that type and the same key.
    der = keypairs.private_der(key)
    loaded = keypairs.load_private_key(der, key_type)
    assert keypairs.public_der(loaded) == keypairs.public_der(key)
    assert keypairs.load_public_key(keypairs.public_der(key), key_type).key_size == bits


def test_ec_p256_generates_a_key_on_p256(ec_key: ec.EllipticCurvePrivateKey) -> None:
    assert isinstance(ec_key.curve, ec.SECP256R1) and ec_key.curve.name == "secp256r1"
    assert ec_key.key_size == 256
    point = ec_key.public_key().public_numbers()
    # The point is on y^2 = x^3 - 3x + b over P-256's field (FIPS 186-4 D.1.2.3).
    p = 2**256 - 2**224 + 2**192 + 2**96 - 1
    b = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
    assert (point.y**2 - (point.x**3 - 3 * point.x + b)) % p == 0
    assert keypairs.type_of(ec_key) == "ec-p256"
    assert keypairs.public_der(keypairs.load_private_key(keypairs.private_der(ec_key), "ec-p256")) == (
        keypairs.public_der(ec_key)
    )
    with pytest.raises(ValueError, match="not a key-pair type"):
        keypairs.generate("aes-256")


# --- wrap format 2 -------------------------------------------------------------------


@pytest.mark.parametrize("v", VECTORS["valid"], ids=lambda v: f"{v['name']}-v{v['version']}")
def test_format_2_known_answer(v: dict[str, str]) -> None:
    """A blob wrapped once (tests/vectors/generate.py) under wrap.json's key still unwraps the same."""
    name, version, serial = v["name"], int(v["version"]), v["serial"]
    assert private_key_label(name, version, serial).hex() == v["label_hex"]
    wrapped, pkcs8 = bytes.fromhex(v["wrapped_hex"]), bytes.fromhex(v["pkcs8_hex"])
    assert unwrap_private_key(_vector_key(), wrapped, name, version, serial) == pkcs8
    assert wrapped[257:] == keywrap.aes_key_wrap_with_padding(bytes.fromhex(v["kek_hex"]), pkcs8)
    keypairs.load_private_key(pkcs8, "ec-p256")
    with pytest.raises(UnwrapError):
        unwrap_private_key(_vector_key(), wrapped, name, version + 1, serial)


def test_format_2_is_oaep_of_the_kek_then_kwp_of_the_pkcs8(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """The documented layout, taken apart by hand with plain primitives."""
    pkcs8 = keypairs.private_der(ec_key)
    blob = wrap_private_key(rsa_key.public_key(), pkcs8, "signer", 3, "abc123", kek=KEK)
    assert blob[0] == 2
    label = private_key_label("signer", 3, "abc123")
    assert label == wrap_label("signer", 3, "abc123") + b"\x00\x17format 2: aes-kwp pkcs8"
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)
    assert rsa_key.decrypt(blob[1:257], oaep) == KEK
    assert blob[257:] == keywrap.aes_key_wrap_with_padding(KEK, pkcs8)  # RFC 5649: deterministic
    assert unwrap_private_key(rsa_key, blob, "signer", 3, "abc123") == pkcs8


def test_format_2_opens_only_for_its_certificate_name_version_and_format(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    pkcs8 = keypairs.private_der(ec_key)
    blob = wrap_private_key(rsa_key.public_key(), pkcs8, "signer", 3, "abc123")
    for args in [("other", 3, "abc123"), ("signer", 4, "abc123"), ("signer", 3, "abc124")]:
        with pytest.raises(UnwrapError):
            unwrap_private_key(rsa_key, blob, *args)
    with pytest.raises(UnwrapError):
        unwrap_private_key(other_rsa_key, blob, "signer", 3, "abc123")
    # Neither format's key ciphertext opens as the other: the labels differ.
    as_format_1 = bytes([1]) + blob[1:257]
    with pytest.raises(UnwrapError):
        unwrap(rsa_key, as_format_1, "signer", 3, "abc123")
    aes = wrap(rsa_key.public_key(), KEK, "signer", 3, "abc123")
    with pytest.raises(UnwrapError):
        unwrap_private_key(rsa_key, bytes([2]) + aes[1:] + bytes(16), "signer", 3, "abc123")


@pytest.mark.parametrize("where", [0, 1, 200, 257, -1], ids=["format", "oaep", "oaep-end", "kwp", "kwp-end"])
def test_format_2_any_changed_byte_fails_opaquely(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, where: int
) -> None:
    blob = bytearray(wrap_private_key(rsa_key.public_key(), keypairs.private_der(ec_key), "s", 1, "ab"))
    blob[where] ^= 0x01
    with pytest.raises(UnwrapError, match="^wrapped key does not unwrap$"):
        unwrap_private_key(rsa_key, bytes(blob), "s", 1, "ab")


def test_format_2_truncated_or_padded_fails(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    blob = wrap_private_key(rsa_key.public_key(), keypairs.private_der(ec_key), "s", 1, "ab")
    for bad in (blob[:-8], blob[:-1], blob + bytes(8), blob[:257], b""):
        with pytest.raises(UnwrapError):
            unwrap_private_key(rsa_key, bad, "s", 1, "ab")


# --- the key-pair signature file ------------------------------------------------------


def _signed(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, key_type: str
) -> tuple[bytes, filesig.KeySignature]:
    digest = hashlib.sha256(b"release 1.0").digest()
    return digest, filesig.sign_key_file(key, "signer", 2, key_type, digest)


@pytest.mark.parametrize("kind", ["rsa-2048", "ec-p256"])
def test_a_key_signature_names_key_and_version_and_verifies(
    kind: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    key = rsa_key if kind == "rsa-2048" else ec_key
    digest, sig = _signed(key, kind)
    doc = json.loads(sig.encode())
    assert doc["format"] == "seed-kms-key-signature-v1"
    assert (doc["key"], doc["version"], doc["key_type"], doc["digest"]) == (
        "signer",
        2,
        kind,
        "sha256:" + digest.hex(),
    )
    parsed = filesig.parse_key_signature(sig.encode())
    assert parsed == sig
    filesig.verify_key_file(
        parsed, digest, kind, "deactivated", keypairs.public_der(key)
    )  # rotated out: fine


def test_a_key_signature_is_refused_for_a_compromised_version_a_changed_file_or_another_key(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    digest, sig = _signed(rsa_key, "rsa-2048")
    public = keypairs.public_der(rsa_key)
    with pytest.raises(FailedPrecondition, match="version 2 of key signer is compromised"):
        filesig.verify_key_file(sig, digest, "rsa-2048", "compromised", public)
    with pytest.raises(DataLoss, match="different contents"):
        filesig.verify_key_file(sig, hashlib.sha256(b"other").digest(), "rsa-2048", "active", public)
    with pytest.raises(DataLoss, match="does not verify with version 2 of key signer"):
        filesig.verify_key_file(sig, digest, "rsa-2048", "active", keypairs.public_der(other_rsa_key))
    with pytest.raises(DataLoss):
        filesig.verify_key_file(sig, digest, "ec-p256", "active", public)  # the server's type differs
    forged = filesig.KeySignature("signer", 2, "rsa-2048", digest, sign_digest(other_rsa_key, digest))
    with pytest.raises(DataLoss):
        filesig.verify_key_file(forged, digest, "rsa-2048", "active", public)


def test_the_two_signature_formats_say_which_flag_to_use(rsa_key: rsa.RSAPrivateKey) -> None:
    _, sig = _signed(rsa_key, "rsa-2048")
    with pytest.raises(InvalidArgument, match="by key 'signer': verify it with --key NAME"):
        filesig.parse(sig.encode())
    agent_sig = filesig.create(rsa_key, (), hashlib.sha256(b"x").digest(), 1_800_000_000)
    with pytest.raises(InvalidArgument, match="verify it without --key"):
        filesig.parse_key_signature(agent_sig.encode())
    doc = json.loads(sig.encode())
    for field, value in [
        ("version", 0),
        ("version", 1.5),
        ("version", True),
        ("version", "1"),
        ("key", "bad\nname"),
        ("key", "x" * 200),
        ("digest", "md5:00"),
        ("signature", "%%%"),
    ]:
        with pytest.raises(InvalidArgument) as refused:
            filesig.parse_key_signature(json.dumps({**doc, field: value}).encode())
        assert "\n" not in str(refused.value)  # one line, whatever the file holds
