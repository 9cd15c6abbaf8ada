"""Session-wide fixtures: slow RSA keys once per run, a PostgreSQL cluster, one shared server per module."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.harness import ServerProcess, short_tmpdir
from tests.pg import PostgresCluster, find_bindir, missing_reason


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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for the session (one per xdist worker), removed at the end.

    Skipped, with the reason, only when no PostgreSQL server binaries are installed;
    a cluster that exists but fails to start is an error, not a skip.
    """
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(missing_reason())
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_database(pg_cluster: PostgresCluster) -> Iterator[str]:
    """The URL of a fresh, empty database in the session's cluster, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = pg_cluster.create_database(name)
    yield url
    pg_cluster.drop_database(name)


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
