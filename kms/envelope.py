"""Encrypted files: a self-describing header and AES-256-GCM chunks (a STREAM construction).

Header (version 1)::

    0x01                       format version
    u8   name length, name     key name (UTF-8)
    u32  key version
    u32  chunk size            plaintext bytes per chunk (last chunk may be shorter)
    32   salt                  per-file random
    7    nonce prefix          per-file random

The file key is HKDF-SHA256(key, salt, info = "seed-kms envelope v1" || header
without salt), so no two files share a GCM key even under one KMS key. Chunk i
is AES-256-GCM with nonce = prefix || u32 i || last-flag (0x00, or 0x01 for
the final chunk) and the whole header as associated data. Reordering,
dropping, appending or truncating chunks, or editing any header byte, makes
authentication fail; a stream must end with a chunk flagged last. Every
failure raises the one opaque EnvelopeError.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kms.errors import InvalidArgument
from kms.identity import validate_key_name

__all__ = ["CHUNK_SIZE", "Decryptor", "EnvelopeError", "Encryptor", "Header", "TAG_BYTES"]

CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
TAG_BYTES = 16
_VERSION = 1
_SALT = 32
_PREFIX = 7
_INFO = b"seed-kms envelope v1\x00"
_FIXED = struct.Struct(">II")


MAX_KEY_VERSION = 2**31 - 1


def _valid_key_name(name: str) -> bool:
    try:
        validate_key_name(name)
    except InvalidArgument:
        return False
    return True


class EnvelopeError(Exception):
    """The data is damaged, truncated, not an envelope, or under another key: one opaque error."""


@dataclass(frozen=True)
class Header:
    key_name: str
    key_version: int
    chunk_size: int
    salt: bytes
    nonce_prefix: bytes

    def _body(self) -> bytes:
        name = self.key_name.encode()
        return bytes([_VERSION, len(name)]) + name + _FIXED.pack(self.key_version, self.chunk_size)

    def encode(self) -> bytes:
        return self._body() + self.salt + self.nonce_prefix

    @classmethod
    def parse(cls, data: bytes) -> tuple[Header, int]:
        """Parses a header from the start of data; returns it and its length."""
        try:
            if data[0] != _VERSION:
                raise EnvelopeError("not a Seed KMS envelope")
            n = data[1]
            name = data[2 : 2 + n].decode()
            off = 2 + n
            version, chunk = _FIXED.unpack_from(data, off)
            off += _FIXED.size
            salt, prefix = data[off : off + _SALT], data[off + _SALT : off + _SALT + _PREFIX]
            off += _SALT + _PREFIX
        except (IndexError, UnicodeDecodeError, struct.error):
            raise EnvelopeError("not a Seed KMS envelope") from None
        if (
            not _valid_key_name(name)
            or len(salt) != _SALT
            or len(prefix) != _PREFIX
            or not 0 < chunk <= MAX_CHUNK_SIZE
            or not 0 < version <= MAX_KEY_VERSION
        ):
            # A name or version no server could have issued is damage, reported like any other.
            raise EnvelopeError("not a Seed KMS envelope")
        return cls(name, version, chunk, salt, prefix), off

    @staticmethod
    def max_length() -> int:
        return 2 + 255 + _FIXED.size + _SALT + _PREFIX


def _file_key(key: bytes, header: Header) -> AESGCM:
    if len(key) != 32:
        raise ValueError("envelopes use AES-256 keys")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=header.salt, info=_INFO + header._body())
    return AESGCM(hkdf.derive(key))


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= 2**32:
        raise EnvelopeError("too many chunks")
    return prefix + struct.pack(">I", index) + (b"\x01" if last else b"\x00")


class Encryptor:
    """Encrypts one stream. Call ``chunk`` for each full chunk, then once with last=True."""

    def __init__(self, key: bytes, header: Header) -> None:
        self.header = header
        self.header_bytes = header.encode()
        self._aead = _file_key(key, header)
        self._index = 0
        self._done = False

    @classmethod
    def new(cls, key: bytes, key_name: str, key_version: int, chunk_size: int = CHUNK_SIZE) -> Encryptor:
        """Draws salt and nonce prefix from the OS CSPRNG (``Encryptor(key, Header(...))`` is the twin)."""
        if not 0 < len(key_name.encode()) <= 255:
            raise ValueError("key name must be 1-255 bytes")
        return cls(
            key,
            Header(
                key_name, key_version, chunk_size, secrets.token_bytes(_SALT), secrets.token_bytes(_PREFIX)
            ),
        )

    def chunk(self, plaintext: bytes, *, last: bool) -> bytes:
        if self._done:
            raise ValueError("stream already finished")
        if len(plaintext) > self.header.chunk_size or (not last and len(plaintext) != self.header.chunk_size):
            raise ValueError("only the last chunk may be short")
        if last and not plaintext and self._index:
            raise ValueError("an empty last chunk only encodes an empty stream")
        out = self._aead.encrypt(
            _nonce(self.header.nonce_prefix, self._index, last), plaintext, self.header_bytes
        )
        self._index += 1
        self._done = last
        return out


class Decryptor:
    """Decrypts one stream, chunk by chunk; the caller says which chunk is the last one read."""

    def __init__(self, key: bytes, header: Header) -> None:
        self.header = header
        self._header_bytes = header.encode()
        self._aead = _file_key(key, header)
        self._index = 0
        self._done = False

    @property
    def ciphertext_chunk_size(self) -> int:
        return self.header.chunk_size + TAG_BYTES

    def chunk(self, ciphertext: bytes, *, last: bool) -> bytes:
        if self._done:
            raise EnvelopeError("data after the last chunk")
        # Accept only what Encryptor writes: full chunks, then one short (or
        # full) last chunk; an empty last chunk only for an empty stream.
        full = self.header.chunk_size + TAG_BYTES
        if (not last and len(ciphertext) != full) or (last and self._index and len(ciphertext) == TAG_BYTES):
            raise EnvelopeError("chunk boundaries are not canonical")
        try:
            plaintext = self._aead.decrypt(
                _nonce(self.header.nonce_prefix, self._index, last), ciphertext, self._header_bytes
            )
        except InvalidTag:
            raise EnvelopeError("authentication failed") from None
        self._index += 1
        self._done = last
        return plaintext

    def finish(self) -> None:
        """Raises EnvelopeError if the stream ended before a chunk flagged last (truncation)."""
        if not self._done:
            raise EnvelopeError("truncated")
