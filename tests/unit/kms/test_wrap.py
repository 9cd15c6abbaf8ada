"""kms/wrap.py: known answers, and a wrapped key opens only for its certificate and label."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kms.wrap import UnwrapError, unwrap, wrap, wrap_label

VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "wrap.json").read_text())


def _vector_key() -> rsa.RSAPrivateKey:
    k = {name: int(value, 16) for name, value in VECTORS["private_key"].items()}
    public = rsa.RSAPublicNumbers(k["e"], k["p"] * k["q"])
    numbers = rsa.RSAPrivateNumbers(
        p=k["p"],
        q=k["q"],
        d=k["d"],
        dmp1=rsa.rsa_crt_dmp1(k["d"], k["p"]),
        dmq1=rsa.rsa_crt_dmq1(k["d"], k["q"]),
        iqmp=rsa.rsa_crt_iqmp(k["p"], k["q"]),
        public_numbers=public,
    )
    return numbers.private_key()


@pytest.mark.parametrize("v", VECTORS["valid"], ids=lambda v: f"{v['name']}-v{v['version']}")
def test_known_answer(v: dict[str, object]) -> None:
    assert wrap_label(v["name"], v["version"], v["serial"]).hex() == v["label_hex"]  # type: ignore[arg-type]
    key = unwrap(_vector_key(), bytes.fromhex(v["wrapped_hex"]), v["name"], v["version"], v["serial"])  # type: ignore[arg-type]
    assert key.hex() == v["key_hex"]


@pytest.mark.parametrize("bad", VECTORS["invalid_labels"], ids=lambda b: b["why"])
def test_swapped_label_fields_do_not_unwrap(bad: dict[str, object]) -> None:
    wrapped = bytes.fromhex(VECTORS["valid"][0]["wrapped_hex"])
    with pytest.raises(UnwrapError):
        unwrap(_vector_key(), wrapped, bad["name"], bad["version"], bad["serial"])  # type: ignore[arg-type]


def test_another_agents_key_cannot_unwrap(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    wrapped = wrap(rsa_key.public_key(), bytes(32), "app", 1, "abc")
    assert unwrap(rsa_key, wrapped, "app", 1, "abc") == bytes(32)
    with pytest.raises(UnwrapError):
        unwrap(other_rsa_key, wrapped, "app", 1, "abc")


def test_damaged_or_reformatted_blobs_do_not_unwrap(rsa_key: rsa.RSAPrivateKey) -> None:
    wrapped = wrap(rsa_key.public_key(), bytes(range(32)), "app", 1, "abc")
    for damaged in (
        wrapped[:-1],
        wrapped + b"\x00",
        b"\x02" + wrapped[1:],
        bytes([wrapped[0]]) + bytes(len(wrapped) - 1),
    ):
        with pytest.raises(UnwrapError):
            unwrap(rsa_key, damaged, "app", 1, "abc")
    flipped = bytearray(wrapped)
    flipped[100] ^= 1
    with pytest.raises(UnwrapError):
        unwrap(rsa_key, bytes(flipped), "app", 1, "abc")


def test_label_fields_cannot_be_shifted() -> None:
    # Length prefixes keep ("ab", serial "c") and ("a", serial "bc") apart.
    assert wrap_label("ab", 1, "c") != wrap_label("a", 1, "bc")
    with pytest.raises(ValueError):
        wrap_label("app", 0, "abc")
