"""A SoftHSM2 token for the benchmarks: a CA key held in PKCS#11 (kms-server --ca-key).

Throwaway: the configuration and the token live under the run's root, and
SOFTHSM2_CONF points there for this process and the servers it starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench.procs import exe

__all__ = ["BenchHsm", "softhsm_module"]

_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)
TOKEN, PIN = "bench-ca", "2468-bench"


def softhsm_module() -> Path | None:
    """SoftHSM2's PKCS#11 module, or None when the softhsm2 package is not installed."""
    if shutil.which("softhsm2-util") is None:
        return None
    return next((Path(p) for p in _MODULES if Path(p).exists()), None)


class BenchHsm:
    def __init__(self, root: Path, module: Path) -> None:
        self.module = module
        (root / "tokens").mkdir(parents=True, exist_ok=True)
        conf = root / "softhsm2.conf"
        conf.write_text(
            f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        os.environ["SOFTHSM2_CONF"] = str(conf)
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                TOKEN,
                "--pin",
                PIN,
                "--so-pin",
                "so-" + PIN,
            ],
            check=True,
            capture_output=True,
        )
        self.pin_file = root / "pin"
        self.pin_file.write_text(PIN)
        self.pin_file.chmod(0o600)

    def flags(self, label: str) -> list[str]:
        return [
            "--ca-key", f"pkcs11:token={TOKEN};object={label}",
            "--pkcs11-module", str(self.module),
            "--pkcs11-pin-file", str(self.pin_file),
        ]  # fmt: skip

    def init(self, data_dir: Path, label: str, key_type: str) -> None:
        """kms-server init: the CA key generated in the token, the data dir made around it."""
        subprocess.run(
            [
                exe("kms-server"),
                "init",
                "--data-dir",
                str(data_dir),
                "--ca-key-type",
                key_type,
                *self.flags(label),
            ],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
