"""Writes the known-answer vectors for kms/wrap.py (formats 1 and 2) and kms/envelope.py (run once;
checked in).

    python tests/vectors/generate.py

The RSA key in wrap.json is a throwaway made for these vectors only, stored
as numbers; it belongs to no deployment. Re-running makes new random values,
so only re-run when a format version changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from kms import keypairs
from kms.envelope import Encryptor, Header
from kms.wrap import private_key_label, wrap, wrap_label, wrap_private_key

HERE = Path(__file__).resolve().parent


def _wrap_vectors() -> dict[str, object]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    n = key.private_numbers()
    material = os.urandom(32)
    name, version, serial = "payments-db", 7, "5eed0000aa"
    return {
        "comment": "RSA-OAEP SHA-256/MGF1-SHA-256; throwaway test key, not a deployment key",
        "private_key": {
            k: format(v, "x") for k, v in {"p": n.p, "q": n.q, "d": n.d, "e": n.public_numbers.e}.items()
        },
        "valid": [
            {
                "name": name,
                "version": version,
                "serial": serial,
                "label_hex": wrap_label(name, version, serial).hex(),
                "key_hex": material.hex(),
                "wrapped_hex": wrap(key.public_key(), material, name, version, serial).hex(),
            }
        ],
        # Same wrapped bytes, presented with one label field changed: must not unwrap.
        "invalid_labels": [
            {"name": "payments-dc", "version": version, "serial": serial, "why": "name swapped"},
            {"name": name, "version": 8, "serial": serial, "why": "version swapped"},
            {"name": name, "version": version, "serial": "5eed0000ab", "why": "serial swapped"},
        ],
    }


def _wrap_private_key_vectors(key: rsa.RSAPrivateKey) -> dict[str, object]:
    """Format 2 under wrap.json's RSA key: an EC P-256 PKCS#8 key, wrapped with a fixed AES key."""
    pkcs8 = keypairs.private_der(keypairs.generate("ec-p256"))
    kek = os.urandom(32)
    name, version, serial = "release-signer", 3, "5eed0000aa"
    wrapped = wrap_private_key(key.public_key(), pkcs8, name, version, serial, kek=kek)
    return {
        "comment": "kms.wrap format 2 under wrap.json's throwaway RSA key; the EC key is throwaway too",
        "valid": [
            {
                "name": name,
                "version": version,
                "serial": serial,
                "label_hex": private_key_label(name, version, serial).hex(),
                "kek_hex": kek.hex(),
                "pkcs8_hex": pkcs8.hex(),
                "wrapped_hex": wrapped.hex(),
            }
        ],
    }


def _wrap_json_key() -> rsa.RSAPrivateKey:
    k = {
        name: int(value, 16)
        for name, value in json.loads((HERE / "wrap.json").read_text())["private_key"].items()
    }
    p, q, d = k["p"], k["q"], k["d"]
    return rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(k["e"], p * q),
    ).private_key()  # fmt: skip


def _envelope_vectors() -> dict[str, object]:
    cases = []
    for plaintext, chunk in ((b"", 16), (b"exactly 16 bytes", 16), (b"three chunks: 16+16+5 bytes.", 16)):
        key = os.urandom(32)
        header = Header("app", 3, chunk, os.urandom(32), os.urandom(7))
        enc = Encryptor(key, header)
        body = b""
        pieces = [plaintext[i : i + chunk] for i in range(0, len(plaintext), chunk)] or [b""]
        for i, piece in enumerate(pieces):
            body += enc.chunk(piece, last=i == len(pieces) - 1)
        cases.append(
            {
                "key_hex": key.hex(),
                "chunk_size": chunk,
                "plaintext_hex": plaintext.hex(),
                "envelope_hex": (enc.header_bytes + body).hex(),
            }
        )
    return {"comment": "kms.envelope format 1, deterministic twin (fixed salt and prefix)", "valid": cases}


if __name__ == "__main__":
    (HERE / "wrap.json").write_text(json.dumps(_wrap_vectors(), indent=2) + "\n")
    (HERE / "envelope.json").write_text(json.dumps(_envelope_vectors(), indent=2) + "\n")
    (HERE / "wrap_private_key.json").write_text(
        json.dumps(_wrap_private_key_vectors(_wrap_json_key()), indent=2) + "\n"
    )
