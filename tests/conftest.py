"""Session-wide fixtures: slow RSA keys once per run, and one shared server per module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.harness import ServerProcess, short_tmpdir


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def tmpdir_short() -> Iterator[Path]:
    path = short_tmpdir("kmst")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """A real kms-server on a fresh data dir, shared by one test module."""
    data = short_tmpdir("kmss")
    proc = ServerProcess(data / "d").start()
    try:
        yield proc
    finally:
        code = proc.stop()
        shutil.rmtree(data, ignore_errors=True)
    assert code == 0, f"kms-server exited {code} on SIGTERM:\n{proc.output()}"
