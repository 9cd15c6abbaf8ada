"""Encrypting and decrypting files in chunks, so files larger than memory work.

The format is kms.envelope's; this module only moves bytes between files.
``-`` is standard input or output. Output goes through kms.securefile's
open_output: a regular file is replaced atomically, so a failure leaves no
output file; stdout, a FIFO or a device gets each chunk as it is
authenticated, so a damaged or truncated input is still refused, with one
error, but only after the chunks before the damage were written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from kms.envelope import Decryptor, Encryptor, EnvelopeError, Header
from kms.errors import DataLoss, InvalidArgument, NotFound
from kms.securefile import open_input, open_output, output_is_regular

__all__ = ["decrypt_file", "encrypt_file", "read_header"]

# Resolves (key name, version) from a header to key material.
KeyLookup = Callable[[str, int], bytes]

_OPAQUE = "cannot decrypt {}: it is damaged, truncated, or was not made by kms-agent encrypt"


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left:
        data = f.read(left)
        if not data:
            break
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def encrypt_file(
    src: Path, dst: Path, key: bytes, key_name: str, key_version: int, *, follow_symlink: bool = False
) -> None:
    output_is_regular(dst, follow_symlink=follow_symlink)  # refuses a bad output before reading anything
    enc = Encryptor.new(key, key_name, key_version)
    size = enc.header.chunk_size
    with open_input(src) as fin, open_output(dst, follow_symlink=follow_symlink) as fout:
        fout.write(enc.header_bytes)
        current = _read_exactly(fin, size)
        while True:
            following = _read_exactly(fin, size) if len(current) == size else b""
            last = not following
            fout.write(enc.chunk(current, last=last))
            if last:
                break
            current = following


def read_header(f: BinaryIO) -> Header:
    """Reads just the header, leaving f at the first chunk. Raises EnvelopeError."""
    start = _read_exactly(f, 2)
    if len(start) < 2:
        raise EnvelopeError("too short")
    rest = _read_exactly(f, start[1] + Header.max_length() - 2 - 255)
    header, used = Header.parse(start + rest)
    if used != len(start) + len(rest):
        raise EnvelopeError("header length mismatch")
    return header


def decrypt_file(src: Path, dst: Path, lookup: KeyLookup, *, follow_symlink: bool = False) -> Header:
    """Decrypts src into dst; returns the header. Raises DataLoss (opaque) on any damage."""
    output_is_regular(dst, follow_symlink=follow_symlink)  # refuses a bad output before fetching a key
    with open_input(src) as fin:
        try:
            header = read_header(fin)
        except EnvelopeError:
            raise DataLoss(_OPAQUE.format(src)) from None
        try:
            # Authorization and state answers (not granted, destroyed) pass through
            # as they are; a version that never existed means a damaged header.
            key = lookup(header.key_name, header.key_version)
        except (NotFound, InvalidArgument):
            raise DataLoss(_OPAQUE.format(src)) from None
        dec = Decryptor(key, header)
        size = dec.ciphertext_chunk_size
        try:
            with open_output(dst, follow_symlink=follow_symlink) as fout:
                current = _read_exactly(fin, size)
                while True:
                    following = _read_exactly(fin, size) if len(current) == size else b""
                    fout.write(dec.chunk(current, last=not following))
                    if not following:
                        break
                    current = following
                dec.finish()
        except EnvelopeError:
            raise DataLoss(_OPAQUE.format(src)) from None
    return header
