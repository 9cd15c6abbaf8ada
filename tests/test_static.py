"""Static checks are part of the suite: ruff (lint and format) and mypy --strict."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness import exe

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "cmd",
    [
        pytest.param(["ruff", "check", "."], id="ruff-check"),
        pytest.param(["ruff", "format", "--check", "."], id="ruff-format"),
        pytest.param(["mypy"], id="mypy-strict"),
    ],
)
def test_static(cmd: list[str]) -> None:
    result = subprocess.run(
        [exe(cmd[0]), *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
