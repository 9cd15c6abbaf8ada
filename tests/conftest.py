"""Session-wide fixtures: slow RSA keys once per run, a PostgreSQL cluster, one shared server per module.

Also the store-backend switch (`--backend`, the `backend` fixture) and how tests are
spread over xdist workers (one group per module and backend, long-running ones first).
"""

from __future__ import annotations

import os

# Before anything imports grpc: tests that hold a gRPC channel in this process (the admin
# socket's stub, commands run in-process) also fork children in a pty (pexpect's pty.fork,
# which runs fork handlers, unlike subprocess). gRPC's fork support then restarted its poller
# in the child, which closed every inherited descriptor before exec: "Epoll1Poller encountered
# epoll_wait error: Bad file descriptor" and SIGABRT, in about 1 spawn of 10. The child only
# execs, so it needs no fork support.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests import harness
from tests.harness import BACKENDS, ServerProcess, short_tmpdir
from tests.pg import PostgresCluster, find_bindir, missing_reason


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        action="append",
        choices=BACKENDS,
        help="run the end-to-end tests on this store backend only (repeatable; default: all of "
        f"{', '.join(BACKENDS)}; env KMS_TEST_BACKEND, comma-separated)",
    )


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Groups for xdist, then long-running modules first.

    Groups: one per (module, backend), so `--dist loadgroup` keeps one module's tests on
    one backend together on one worker, in order, sharing its module-scoped servers,
    while the same module on the other backend runs on another worker. Marked before
    every other implementation runs, since xdist's reads them.

    Order: after everything else (pytest's grouping of parametrized module fixtures,
    xdist's renaming), modules marked `long_running` move to the front, so xdist
    starts them first (with --no-loadscope-reorder) and their minutes of waiting
    overlap the rest of the suite instead of trailing it.
    """
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        module = item.nodeid.split("::", 1)[0]
        group = f"{module}:{params['backend']}" if "backend" in params else module
        if params.get("server_workers", 1) != 1:  # the module again with --workers N: a group of its own
            group += f":w{params['server_workers']}"
        item.add_marker(pytest.mark.xdist_group(group))
    yield
    items.sort(key=lambda item: item.get_closest_marker("long_running") is None)


_BACKEND_IN_ID = re.compile(r"\[(?:.*-)?(" + "|".join(BACKENDS) + r")(?:-(w[2-9]))?(?:-.*)?\]$")


def _group_of(nodeid: str) -> str:
    """A test's xdist group: its module, and its backend if it has one (the xdist_group marks' names)."""
    if "@" in nodeid.rsplit("]", 1)[-1]:  # xdist renamed it after its xdist_group marks
        return nodeid.rsplit("@", 1)[1]
    module = nodeid.split("::", 1)[0]
    match = _BACKEND_IN_ID.search(nodeid)
    if match is None:
        return module
    return f"{module}:{match.group(1)}" + (f":{match.group(2)}" if match.group(2) else "")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """--dist loadgroup by (module, backend), working on pytest 9.

    xdist 3.8 implements loadgroup by appending "@group" to each item's _nodeid,
    which pytest 9 no longer reads, so every test became its own group (and a
    module's tests ran on several workers, out of order, each with its own
    module-scoped server). This scheduler finds the group from the node id itself.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class _ModuleBackendScheduling(LoadGroupScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return _group_of(nodeid)

    return _ModuleBackendScheduling(config, log)


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
def server_workers(request: pytest.FixtureRequest) -> Iterator[int]:
    """The --workers of the servers this module starts: 1, or 1 and then 2 for the modules marked
    every_worker_setting (tests/e2e/conftest.py; test ids end in -w2 for the second)."""
    count = getattr(request, "param", 1)
    previous = harness.use_workers(count)
    try:
        yield count
    finally:
        harness.use_workers(previous)


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest, server_workers: int) -> Iterator[str]:
    """The store backend of the servers this module starts: "sqlite" or "postgresql".

    tests/e2e parametrizes it for every test there (test ids end in [sqlite] or
    [postgresql]); elsewhere it is "sqlite". Module-scoped fixtures that start a
    server must depend on it, so they are made again for each backend.
    """
    name = getattr(request, "param", "sqlite")
    cluster = request.getfixturevalue("pg_cluster") if name == "postgresql" else None
    previous = harness.use_backend(name, cluster)
    try:
        yield name
    finally:
        harness.use_backend(*previous)


@pytest.fixture(scope="module")
def server(backend: str) -> Iterator[ServerProcess]:
    """A real kms-server on a fresh data dir (and database), shared by one test module."""
    data = short_tmpdir("kmss")
    proc = ServerProcess(data / "d").start()
    try:
        yield proc
    finally:
        code = proc.stop()
        shutil.rmtree(data, ignore_errors=True)
    assert code == 0, f"kms-server exited {code} on SIGTERM:\n{proc.output()}"
