"""A private PostgreSQL cluster for the scenarios that need one, started while the run sets up.

fan-out-replicas runs kms-server replicas on a shared database. Its cluster
is started in a thread as soon as the run knows it will need one, so initdb
and the postmaster's start overlap the key generation of the set-up (nothing
is measured then) instead of adding to the scenario. Each scenario makes its
own fresh database in it. fsync and synchronous_commit stay at PostgreSQL's
durable defaults: a Revoke's reply means a durable COMMIT, as in production.

The cluster itself is the test suite's throwaway helper (tests/pg.py),
imported here rather than copied: it finds the binaries, runs them as the
postgres user when we are root, and its watchdog stops and removes the
cluster if this process dies.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from bench.procs import BenchError

if TYPE_CHECKING:
    from tests.pg import PostgresCluster

__all__ = ["BackgroundPostgres", "unavailable"]

_START_TIMEOUT = 120.0


def _bindir() -> Path | None:
    from tests.pg import find_bindir

    return find_bindir()


def unavailable() -> str | None:
    """Why no cluster can be started here (no PostgreSQL server binaries), or None."""
    try:
        bindir = _bindir()
    except ImportError as exc:  # bench run outside the source tree
        return f"needs the test suite's PostgreSQL helper (tests/pg.py): {exc}"
    if bindir is None:
        return (
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) in $KMS_TEST_PG_BINDIR, "
            "on PATH, at `pg_config --bindir` or in /usr/lib/postgresql/*/bin: install PostgreSQL "
            "(e.g. apt-get install postgresql) to run it"
        )
    return None


class BackgroundPostgres:
    """One cluster per bench run: ``start()`` returns at once, ``cluster()`` waits for it."""

    def __init__(self, log_copy: Path) -> None:
        self._log_copy = log_copy
        self._cluster: PostgresCluster | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, name="bench-postgres", daemon=True)

    def start(self) -> BackgroundPostgres:
        self._thread.start()
        return self

    def _start(self) -> None:
        try:
            from tests.pg import PostgresCluster

            bindir = _bindir()
            if bindir is None:
                raise BenchError(unavailable() or "no PostgreSQL")
            self._cluster = PostgresCluster(bindir)
            self._cluster.start()
        except BaseException as exc:  # handed to the scenario that asks for the cluster
            self._error = exc

    def cluster(self) -> PostgresCluster:
        """The running cluster. Raises BenchError if it could not start."""
        self._thread.join(_START_TIMEOUT)
        if self._thread.is_alive():
            raise BenchError(f"PostgreSQL did not start within {_START_TIMEOUT:.0f}s")
        if self._error is not None or self._cluster is None:
            raise BenchError(f"PostgreSQL did not start: {self._error}")
        return self._cluster

    def close(self) -> None:
        """Stops and removes the cluster; its log is kept beside the servers' logs."""
        self._thread.join(_START_TIMEOUT)
        if self._cluster is None:
            return
        with contextlib.suppress(OSError):
            shutil.copyfile(self._cluster.logfile, self._log_copy)
        self._cluster.destroy()
