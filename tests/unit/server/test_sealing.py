"""server/deployment/sealing.py: AES-256-GCM bound to its slot, one opaque error for every failure."""

from __future__ import annotations

import pytest

from server.deployment.sealing import SealError, open_sealed, seal, seal_with_nonce

KEY = bytes(range(32))
NONCE = bytes(12)


def test_round_trip_and_fresh_nonces() -> None:
    a, b = seal(KEY, "ca.key", b"secret"), seal(KEY, "ca.key", b"secret")
    assert a != b
    assert open_sealed(KEY, "ca.key", a) == open_sealed(KEY, "ca.key", b) == b"secret"


def test_format_is_versioned() -> None:
    blob = seal_with_nonce(KEY, "ca.key", b"secret", NONCE)
    assert blob[0] == 1 and blob[1:13] == NONCE and len(blob) == 1 + 12 + 6 + 16


def test_wrong_key_wrong_slot_and_every_flipped_byte_fail() -> None:
    blob = seal_with_nonce(KEY, "ca.key", b"secret", NONCE)
    with pytest.raises(SealError):
        open_sealed(bytes(32), "ca.key", blob)
    with pytest.raises(SealError):
        open_sealed(KEY, "server.key", blob)  # moved to another slot
    for i in range(len(blob)):
        damaged = bytearray(blob)
        damaged[i] ^= 0x01
        with pytest.raises(SealError):
            open_sealed(KEY, "ca.key", bytes(damaged))
    with pytest.raises(SealError):
        open_sealed(KEY, "ca.key", blob[:-1])


def test_subkeys_are_hkdf_per_label_and_reveal_nothing_of_each_other() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from server.deployment.sealing import Sealer, derive_subkey

    audit = derive_subkey(KEY, "audit-chain")
    expected = HKDF(hashes.SHA256(), 32, None, b"seed-kms subkey v1\x00audit-chain").derive(KEY)
    assert audit == expected == Sealer(KEY).subkey("audit-chain")
    assert len({audit, derive_subkey(KEY, "other"), derive_subkey(bytes(32), "audit-chain"), KEY}) == 4
    with pytest.raises(ValueError, match="32 bytes"):
        derive_subkey(b"short", "audit-chain")
