"""SoftHSM2 for the HSM tests: a throwaway configuration and token directory per test module.

Debian's softhsm2 package (.ci/run installs it when missing). Without it the
tests that need a token skip, saying why.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench.softhsm import softhsm_module

__all__ = ["SoftHsm", "module_path"]


def module_path() -> Path:
    """The SoftHSM2 PKCS#11 module, or the test skips with the reason."""
    found = softhsm_module()
    if found is None:
        pytest.skip(
            "SoftHSM2 is not installed (apt-get install softhsm2; .ci/run installs it): HSM tests skipped"
        )
    return found


class SoftHsm:
    """Tokens in root/tokens, under root/softhsm2.conf, which SOFTHSM2_CONF points to while it is open."""

    def __init__(self, root: Path) -> None:
        self.module = module_path()
        self.root = root
        (root / "tokens").mkdir(parents=True)
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(
            f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        self._before = os.environ.get("SOFTHSM2_CONF")
        os.environ["SOFTHSM2_CONF"] = str(self.conf)  # the servers started from here inherit it

    def init_token(self, label: str, pin: str) -> None:
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                pin,
                "--so-pin",
                "so-" + pin,
            ],
            check=True,
            capture_output=True,
        )

    def close(self) -> None:
        if self._before is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = self._before
