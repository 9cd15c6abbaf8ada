"""Writes the key-schedule known answers for kms/handshake.py (run once; checked in).

python tests/vectors/generate_handshake.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kms.handshake import key_schedule, session_keys

HERE = Path(__file__).resolve().parent


def main() -> None:
    cases = []
    for i in range(3):
        seed = hashlib.sha256(f"seed-kms handshake vector {i}".encode()).digest()
        shared = hashlib.sha512(seed).digest()[: 32 if i == 0 else 48]
        ni, nr, th = (hashlib.sha256(seed + tag).digest() for tag in (b"i", b"r", b"th"))
        keys = key_schedule(shared, ni, nr, th)
        key, sid, confirm = session_keys(shared, ni, nr, th)
        cases.append(
            {
                "shared": shared.hex(),
                "nonce_i": ni.hex(),
                "nonce_r": nr.hex(),
                "th": th.hex(),
                "mac_r": keys.mac_r.hex(),
                "mac_i": keys.mac_i.hex(),
                "session_key": key.hex(),
                "session_id": sid,
                "confirm": confirm.hex(),
            }
        )
    (HERE / "handshake.json").write_text(json.dumps({"key_schedule": cases}, indent=2) + "\n")


if __name__ == "__main__":
    main()
