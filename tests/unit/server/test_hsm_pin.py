"""server/ca/hsm.py read_pin: the token's PIN from a 0600 file or KMS_PKCS11_PIN, never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.ca.hsm import HsmError, read_pin


def test_reads_a_private_file_then_the_environment(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("7391\n")
    pin_file.chmod(0o600)
    assert read_pin(pin_file, {"KMS_PKCS11_PIN": "other"}) == "7391"  # the file wins
    assert read_pin(None, {"KMS_PKCS11_PIN": "5512"}) == "5512"


@pytest.mark.parametrize(
    "mode, env, says",
    [
        (0o644, {}, "is readable by others (mode 0644): chmod 600 it"),
        (None, {}, "the token's PIN is missing"),
        (None, {"KMS_PKCS11_PIN": ""}, "the token's PIN is missing"),
    ],
)
def test_refuses_a_readable_file_or_no_pin(
    tmp_path: Path, mode: int | None, env: dict[str, str], says: str
) -> None:
    pin_file = None
    if mode is not None:
        pin_file = tmp_path / "pin"
        pin_file.write_text("7391")
        pin_file.chmod(mode)
    with pytest.raises(HsmError) as err:
        read_pin(pin_file, env)
    assert says in str(err.value) and "7391" not in str(err.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(HsmError, match="cannot read --pkcs11-pin-file"):
        read_pin(tmp_path / "absent", {})
