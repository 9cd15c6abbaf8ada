"""kms/envelope.py: known answers; every edit, reorder, truncation or extension fails opaquely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kms.envelope import TAG_BYTES, Decryptor, Encryptor, EnvelopeError, Header

VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "envelope.json").read_text())
KEY = bytes(range(32))


def _seal(plaintext: bytes, chunk: int = 16, key: bytes = KEY) -> bytes:
    enc = Encryptor.new(key, "app", 3, chunk)
    pieces = [plaintext[i : i + chunk] for i in range(0, len(plaintext), chunk)] or [b""]
    return enc.header_bytes + b"".join(enc.chunk(p, last=i == len(pieces) - 1) for i, p in enumerate(pieces))


def _open(envelope: bytes, key: bytes = KEY) -> bytes:
    """The reference reader: fixed-size chunks, the one that reaches the end is the last."""
    header, off = Header.parse(envelope)
    dec = Decryptor(key, header)
    size = dec.ciphertext_chunk_size
    body = envelope[off:]
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    out = b"".join(dec.chunk(c, last=i == len(chunks) - 1) for i, c in enumerate(chunks))
    dec.finish()
    return out


@pytest.mark.parametrize("v", VECTORS["valid"], ids=lambda v: f"{len(v['plaintext_hex']) // 2}-bytes")
def test_known_answer(v: dict[str, str]) -> None:
    envelope = bytes.fromhex(v["envelope_hex"])
    assert _open(envelope, bytes.fromhex(v["key_hex"])).hex() == v["plaintext_hex"]
    header, _ = Header.parse(envelope)
    # Re-encrypting with the deterministic twin reproduces the vector byte for byte.
    enc = Encryptor(bytes.fromhex(v["key_hex"]), header)
    plaintext = bytes.fromhex(v["plaintext_hex"])
    chunk = int(v["chunk_size"])
    pieces = [plaintext[i : i + chunk] for i in range(0, len(plaintext), chunk)] or [b""]
    again = enc.header_bytes + b"".join(enc.chunk(p, last=i == len(pieces) - 1) for i, p in enumerate(pieces))
    assert again == envelope


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 32, 100])
def test_round_trip(size: int) -> None:
    data = bytes(range(256)) * 2
    assert _open(_seal(data[:size])) == data[:size]


def test_header_names_key_and_version() -> None:
    header, _ = Header.parse(_seal(b"x"))
    assert (header.key_name, header.key_version, header.chunk_size) == ("app", 3, 16)


def test_every_flipped_byte_fails() -> None:
    envelope = _seal(b"three chunks: 16+16+5 bytes.")
    for i in range(len(envelope)):
        damaged = bytearray(envelope)
        damaged[i] ^= 0x01
        with pytest.raises(EnvelopeError):
            _open(bytes(damaged))


def test_truncation_at_any_length_fails() -> None:
    envelope = _seal(b"three chunks: 16+16+5 bytes.")
    for n in range(len(envelope)):
        with pytest.raises(EnvelopeError):
            _open(envelope[:n])


def test_dropping_reordering_and_appending_chunks_fail() -> None:
    envelope = _seal(b"A" * 16 + b"B" * 16 + b"C" * 5)
    _, off = Header.parse(envelope)
    size = 16 + TAG_BYTES
    head, c0, c1, c2 = (
        envelope[:off],
        envelope[off : off + size],
        envelope[off + size : off + 2 * size],
        envelope[off + 2 * size :],
    )
    for forged in (
        head + c0 + c2,
        head + c1 + c0 + c2,
        head + c0 + c1,
        head + c0 + c1 + c2 + c2,
        head + c0 + c1 + c2 + b"x",
    ):
        with pytest.raises(EnvelopeError):
            _open(forged)


def test_wrong_key_fails() -> None:
    with pytest.raises(EnvelopeError):
        _open(_seal(b"secret"), key=bytes(32))


def test_files_under_one_key_use_fresh_salts() -> None:
    a, b = Header.parse(_seal(b"x"))[0], Header.parse(_seal(b"x"))[0]
    assert a.salt != b.salt and a.nonce_prefix != b.nonce_prefix


@pytest.mark.parametrize(
    "data", [b"", b"\x02rest", b"\x01\x00", b"\x01\x03app", b"\x01\x03ap\xff" + bytes(60)]
)
def test_malformed_headers(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        Header.parse(data)


def test_encryptor_refuses_misuse() -> None:
    enc = Encryptor.new(KEY, "app", 1, 16)
    with pytest.raises(ValueError):
        enc.chunk(b"short but not last", last=False)
    enc.chunk(b"", last=True)
    with pytest.raises(ValueError):
        enc.chunk(b"", last=True)


@pytest.mark.parametrize(
    "name, version",
    [("a\x00p", 1), ("bad name", 1), ("app", 2**31), ("app", 2**32 - 1)],
    ids=["nul-in-name", "space-in-name", "version-2^31", "version-max"],
)
def test_headers_no_server_could_issue_are_damage(name: str, version: int) -> None:
    header = Header(name, version, 16, bytes(32), bytes(7))
    with pytest.raises(EnvelopeError):
        Header.parse(header.encode())


def test_only_canonical_chunking_is_accepted() -> None:
    enc = Encryptor.new(KEY, "app", 1, 16)
    full = enc.chunk(b"A" * 16, last=False)
    with pytest.raises(ValueError):  # the writer never ends with an empty chunk after a full one
        enc.chunk(b"", last=True)
    header, _ = Header.parse(enc.header_bytes)
    dec = Decryptor(KEY, header)
    dec.chunk(full, last=False)
    with pytest.raises(EnvelopeError):
        dec.chunk(b"\x00" * TAG_BYTES, last=True)
    dec2 = Decryptor(KEY, header)
    with pytest.raises(EnvelopeError):  # a non-last chunk of the wrong size
        dec2.chunk(full[:-1], last=False)
