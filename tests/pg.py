"""A throwaway PostgreSQL cluster for tests: initdb in a short temp dir, start, stop, restart.

One cluster per test session (per xdist worker): `initdb` with trust authentication
for local connections, listening on 127.0.0.1 on a free port and on a UNIX socket in
its own directory. fsync, synchronous_commit and full_page_writes stay at their
durable defaults: tests kill servers and restart PostgreSQL and check that every
acknowledged write survived, which means nothing if the cluster cheats on flushing.

initdb and postgres refuse to run as root. When the tests run as root (as here and in
CI), every cluster command runs as the unprivileged ``postgres`` OS user (``nobody``
if there is none) through ``runuser``, and the cluster directory is chowned to it.

A detached watchdog process stops the cluster and removes its directory if the test
process dies without cleaning up (a killed xdist worker, a hard timeout): no
postgres outlives the run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresCluster", "PostgresError", "find_bindir", "missing_reason"]

# Every binary the cluster needs; psql runs CREATE DATABASE.
_REQUIRED = ("initdb", "pg_ctl", "postgres", "psql")
_BINDIR_ENV = "KMS_TEST_PG_BINDIR"
_SUPERUSER = "postgres"
_START_TIMEOUT = 60
_STOP_TIMEOUT = 30

# Stops the cluster (immediate mode: it is thrown away anyway) and removes its
# directory once the test process that owns it has gone. argv: owner pid, root dir,
# then the command prefix that runs pg_ctl as the cluster's user.
_WATCHDOG = """
import os, shutil, signal, subprocess, sys, time
owner, root, prefix = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        break
    except PermissionError:
        pass
    time.sleep(0.5)
if os.path.exists(os.path.join(root, "data", "postmaster.pid")):
    subprocess.run([*prefix, "-D", os.path.join(root, "data"), "-m", "immediate", "-w", "stop"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root, timeout=60, check=False)
shutil.rmtree(root, ignore_errors=True)
"""


class PostgresError(RuntimeError):
    """The cluster could not be created, started or stopped; the message carries its log."""


def _has_all(bindir: Path) -> bool:
    return all((bindir / name).is_file() and os.access(bindir / name, os.X_OK) for name in _REQUIRED)


def _candidates() -> list[Path]:
    found: list[Path] = []
    if os.environ.get(_BINDIR_ENV):
        found.append(Path(os.environ[_BINDIR_ENV]))
    # On PATH, possibly as a symlink (/usr/local/bin/initdb -> .../15/bin/initdb): the
    # real directory holds the rest of the binaries.
    for name in ("initdb", "pg_ctl"):
        path = shutil.which(name)
        if path:
            found += [Path(path).resolve().parent, Path(path).parent]
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
            if out.returncode == 0 and out.stdout.strip():
                found.append(Path(out.stdout.strip()))

    def version(path: str) -> int:
        match = re.search(r"/postgresql/(\d+)/bin$", path)
        return int(match.group(1)) if match else 0

    # Debian and Ubuntu install each major version side by side: newest first.
    found += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    return found


def find_bindir() -> Path | None:
    """The first directory holding initdb, pg_ctl, postgres and psql, or None.

    Looked for in $KMS_TEST_PG_BINDIR, on PATH, at `pg_config --bindir` and in
    /usr/lib/postgresql/*/bin (newest version first).
    """
    for candidate in _candidates():
        if _has_all(candidate):
            return candidate
    return None


def missing_reason() -> str:
    return (
        f"no PostgreSQL server binaries ({', '.join(_REQUIRED)}) found in ${_BINDIR_ENV}, on PATH, "
        "at `pg_config --bindir` or in /usr/lib/postgresql/*/bin: install PostgreSQL (e.g. apt-get "
        "install postgresql) to run the PostgreSQL tests"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as_user() -> str | None:
    """The OS user to run the cluster as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresError("running as root and there is no 'postgres' (or 'nobody') user to run PostgreSQL as")


class PostgresCluster:
    """A private PostgreSQL cluster in a temporary directory.

    Use `start()` (or `PostgresCluster.create()`), `url(db)` and `create_database(db)`;
    `stop()`/`start()`, `restart()` (fast mode, same port) and `kill()` (immediate
    shutdown: no checkpoint, crash recovery on the next start) for the tests that
    need an outage; `destroy()` at the end.
    """

    def __init__(self, bindir: Path, *, root: Path | None = None) -> None:
        self.bindir = bindir
        # UNIX socket paths are limited to 107 bytes: keep the directory short.
        self.root = root or Path(tempfile.mkdtemp(prefix="kmspg", dir="/tmp"))
        self.data = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self.port = 0
        self.user = _run_as_user()
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._initialized = False

    # --- addresses ---------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        return self.root

    def url(self, dbname: str = "postgres", *, unix: bool = False) -> str:
        """A libpq/asyncpg URL for dbname, over TCP on 127.0.0.1 (or the UNIX socket)."""
        if unix:
            return f"postgresql://{_SUPERUSER}@/{dbname}?host={self.socket_dir}&port={self.port}"
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    # --- commands ------------------------------------------------------------------

    def _prefix(self) -> list[str]:
        return ["runuser", "-u", self.user, "--"] if self.user else []

    def _cmd(
        self, name: str, *args: str, timeout: float = _START_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        # cwd: pg_ctl fails when the current directory is not readable by the cluster's user.
        return subprocess.run(
            [*self._prefix(), str(self.bindir / name), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def _fail(self, what: str, result: subprocess.CompletedProcess[str] | None = None) -> PostgresError:
        out = f"\n{result.stdout}{result.stderr}" if result is not None else ""
        return PostgresError(
            f"PostgreSQL {what} failed (cluster {self.root}):{out}\n--- log ---\n{self.log()}"
        )

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-8000:]
        except OSError:
            return "(no log)"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Runs one SQL command as the superuser and returns psql's unaligned output."""
        result = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                _SUPERUSER,
                "-d",
                dbname,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresError(f"psql {sql!r} failed: {result.stderr.strip()}")
        return result.stdout

    # --- lifecycle -------------------------------------------------------------------

    def _initdb(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        result = self._cmd(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            _SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        )
        if result.returncode != 0:
            raise self._fail("initdb", result)
        # Appended last, so these win over the generated defaults. fsync,
        # synchronous_commit and full_page_writes are left on (the defaults).
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            # Several servers (replicas, each with a pool) per test, a few tests at a time.
            "max_connections": "300",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %d '",
        }
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write("\n# tests/pg.py\n")
            for key, value in settings.items():
                f.write(f"{key} = {value}\n")
        self._initialized = True

    def _start_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.poll() is None:
            return
        self._watchdog = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WATCHDOG,
                str(os.getpid()),
                str(self.root),
                *self._prefix(),
                str(self.bindir / "pg_ctl"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the test run must not take it down first
        )

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        # -o -p: the port lives on the command line, which `pg_ctl restart` reuses.
        return self._cmd(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-o",
            f"-p {self.port}",
            "-w",
            "-t",
            str(_START_TIMEOUT),
            "start",
            timeout=_START_TIMEOUT + 10,
        )

    def start(self) -> PostgresCluster:
        """initdb on first use, then starts the postmaster and waits until it accepts connections."""
        if not self._initialized:
            self._initdb()
        self._start_watchdog()
        if self.port:
            result = self._pg_ctl_start()  # a restart after stop()/kill(): the same port
            if result.returncode != 0:
                raise self._fail("start", result)
        else:
            # The free port can be taken between choosing and binding it (another
            # worker starting its own cluster): try a few.
            for _ in range(5):
                self.port = _free_port()
                result = self._pg_ctl_start()
                if result.returncode == 0:
                    break
                if "could not bind" not in self.log() and "already in use" not in self.log():
                    self.port = 0
                    raise self._fail("start", result)
            else:
                raise self._fail("start (no free port)", result)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = _START_TIMEOUT) -> None:
        """Waits until a real query succeeds over TCP (pg_ctl -w checks the socket only)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                self.psql("SELECT 1")
                return
            except PostgresError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise self._fail(f"readiness ({last})")

    def running(self) -> bool:
        if not self._initialized:
            return False
        return self._cmd("pg_ctl", "-D", str(self.data), "status", timeout=10).returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stops the postmaster (fast: roll back open transactions, checkpoint, exit)."""
        if not self.running():
            return
        result = self._cmd(
            "pg_ctl",
            "-D",
            str(self.data),
            "-m",
            mode,
            "-w",
            "-t",
            str(_STOP_TIMEOUT),
            "stop",
            timeout=_STOP_TIMEOUT + 10,
        )
        if result.returncode != 0 and self.running():
            self._sigkill_postmaster()
            raise self._fail(f"stop -m {mode}", result)

    def kill(self) -> None:
        """A crash: immediate shutdown, no checkpoint; the next start() runs crash recovery."""
        self.stop("immediate")

    def restart(self) -> None:
        """`pg_ctl restart -m fast` on the same port: every open connection is cut."""
        result = self._cmd(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-m",
            "fast",
            "-w",
            "-t",
            str(_START_TIMEOUT),
            "restart",
            timeout=_START_TIMEOUT + _STOP_TIMEOUT + 10,
        )
        if result.returncode != 0:
            raise self._fail("restart", result)
        self.wait_ready()

    def _sigkill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)

    def destroy(self) -> None:
        """Stops the cluster if it runs, removes its directory and ends the watchdog."""
        try:
            try:
                self.stop("fast")
            except PostgresError:
                with contextlib.suppress(PostgresError):
                    self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            if self._watchdog is not None and self._watchdog.poll() is None:
                self._watchdog.kill()
                self._watchdog.wait(10)
            self._watchdog = None

    # --- databases ---------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Creates database `name` unless it exists (idempotent) and returns its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}: use [a-z0-9_], at most 63 characters")
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip()  # noqa: S608
        if not exists:
            try:
                self.psql(f'CREATE DATABASE "{name}"')
            except PostgresError as exc:  # created concurrently: fine
                if "already exists" not in str(exc):
                    raise
        return self.url(name)

    def password_database(self, role: str, password: str) -> str:
        """A database owned by a login role that must give its password (scram-sha-256 over TCP),
        unlike every other role here (trust); returns its URL, without the password.

        The role's pg_hba.conf line goes first (the first matching line wins), so the
        rest of the cluster keeps trust authentication.
        """
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", role) or "'" in password:
            raise ValueError("role: [a-z0-9_]; password: no single quote")
        hba = self.data / "pg_hba.conf"
        line = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
        text = hba.read_text()  # ours, or the cluster user's and we are root: writable in place either way
        if line not in text:
            hba.write_text(line + text)
            self.psql("SELECT pg_reload_conf()")
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'").strip()  # noqa: S608
        if not exists:
            self.psql(f"CREATE ROLE {role} LOGIN")
        self.psql(f"SET password_encryption = 'scram-sha-256'; ALTER ROLE {role} PASSWORD '{password}'")
        name = f"{role}_db"
        if not self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip():  # noqa: S608
            self.psql(f'CREATE DATABASE "{name}" OWNER {role}')
        return f"postgresql://{role}@127.0.0.1:{self.port}/{name}"

    def drop_database(self, name: str) -> None:
        """Drops database `name` if it exists, closing its connections first."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def databases(self) -> list[str]:
        return self.psql("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1").split()
