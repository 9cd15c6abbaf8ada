"""Real processes for end-to-end tests: a kms-server, kms-agent invocations, admin commands.

The server is started on port 0; its first stdout line (the readiness line)
gives the bound addresses and the CA fingerprint. On any failure the child's
output is included in the assertion message, and the child is always stopped.

Store backend: every end-to-end test runs once on SQLite and once on PostgreSQL
(tests/e2e/conftest.py). The active backend is process-wide state set by the
`backend` fixture through `use_backend()`: on "postgresql", a `ServerProcess`
without an explicit `database` derives a database name from its data dir (so a
restart on the same data dir finds the same store, and a fresh data dir a fresh
one), creates it in the session's cluster and passes `--database`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.pg import PostgresCluster

BIN = Path(sys.executable).parent
READY_TIMEOUT = 30.0


def exe(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def short_tmpdir(prefix: str) -> Path:
    # UNIX socket paths are limited to 107 bytes: keep data dirs short.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}
    env.update(extra or {})
    return env


# --- store backend ----------------------------------------------------------------

BACKENDS = ("sqlite", "postgresql")


@dataclass
class _Backend:
    name: str = "sqlite"
    cluster: PostgresCluster | None = None
    # kms-server --workers: 1 (one process) unless a module runs on both settings (tests/e2e/conftest.py).
    workers: int = 1


_active = _Backend()


def use_backend(name: str, cluster: PostgresCluster | None = None) -> tuple[str, PostgresCluster | None]:
    """Makes `name` the backend of every ServerProcess started from now on; returns the previous one."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}")
    if name == "postgresql" and cluster is None:
        raise ValueError("the postgresql backend needs a cluster")
    previous = (_active.name, _active.cluster)
    _active.name, _active.cluster = name, cluster
    return previous


def backend() -> str:
    """The active store backend: "sqlite" or "postgresql"."""
    return _active.name


def use_workers(count: int) -> int:
    """Makes every ServerProcess started from now on run `--workers count`; returns the previous count."""
    previous, _active.workers = _active.workers, count
    return previous


def workers() -> int:
    """The --workers of the servers started now (1 unless the module runs on both settings)."""
    return _active.workers


def cluster() -> PostgresCluster:
    """The session's PostgreSQL cluster; only while the postgresql backend is active."""
    if _active.cluster is None:
        raise AssertionError("no PostgreSQL cluster: the active backend is sqlite")
    return _active.cluster


def database_name(data_dir: Path) -> str:
    """The database a server on data_dir uses: one per data dir, stable across restarts."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:24]
    return f"kms_{digest}"


def database_for(data_dir: Path) -> str | None:
    """The --database URL for a server on data_dir (created if needed), or None on SQLite."""
    if _active.name != "postgresql":
        return None
    return cluster().create_database(database_name(data_dir))


def database_args(data_dir: Path) -> list[str]:
    """`--database URL` for a kms-server started by hand on data_dir, or nothing on SQLite."""
    url = database_for(data_dir)
    return ["--database", url] if url else []


@dataclass
class ServerProcess:
    data_dir: Path
    extra_args: list[str] = field(default_factory=list)
    listen: str = "127.0.0.1:0"
    enroll_listen: str = "127.0.0.1:0"
    # A postgresql:// URL. None: SQLite in the data dir, or on the postgresql backend
    # the database derived from the data dir (created at start).
    database: str | None = None
    backend: str = field(default_factory=backend)
    # --workers, always given: the server's default (one per core) would vary with the machine.
    workers: int = field(default_factory=workers)
    # A command the server runs under, like ["prlimit", "--nofile=1024:1024"].
    wrapper: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    fields: dict[str, str] = field(default_factory=dict)
    _stderr: list[str] = field(default_factory=list)
    _stdout: list[str] = field(default_factory=list)
    _stub: Any = None

    @property
    def address(self) -> str:
        return self.fields["address"]

    @property
    def enroll_address(self) -> str:
        return self.fields["enroll-address"]

    @property
    def fingerprint(self) -> str:
        return self.fields["ca-fingerprint"]

    @property
    def db(self) -> Path:
        """The SQLite store file; use snapshot(server) or store_bytes(server) to work on both backends."""
        return self.data_dir / "kms.db"

    def output(self) -> str:
        return "".join(self._stdout) + "\n--- stderr ---\n" + "".join(self._stderr)

    def start(self) -> ServerProcess:
        if self.database is None and self.backend == "postgresql":
            self.database = cluster().create_database(database_name(self.data_dir))
        cmd = [
            *self.wrapper,
            exe("kms-server"),
            "run",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            self.listen,
            "--enroll-listen",
            self.enroll_listen,
            *(["--database", self.database] if self.database else []),
            "--workers",
            str(self.workers),
            *self.extra_args,
        ]
        self.fields = {}  # a restart that dies before its ready line must not pass for the last start
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            stdin=subprocess.DEVNULL,
        )
        ready = threading.Event()

        def pump_stdout() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self._stdout.append(line)
                if line.startswith("kms-server ready "):
                    self.fields = dict(part.split("=", 1) for part in line.split()[2:])
                    ready.set()
            ready.set()

        def pump_stderr() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self._stderr.append(line)

        threading.Thread(target=pump_stdout, daemon=True).start()
        threading.Thread(target=pump_stderr, daemon=True).start()
        if not ready.wait(READY_TIMEOUT) or not self.fields:
            self.kill()
            raise AssertionError(f"kms-server did not become ready:\n{self.output()}")
        return self

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"kms-server did not stop on SIGTERM:\n{self.output()}") from None
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = run([exe("kms-server"), *args, "--data-dir", str(self.data_dir)])
        if check:
            assert result.returncode == 0, (
                f"kms-server {' '.join(args)} failed: {result.stderr}\n{self.output()}"
            )
        return result

    def token(self, name: str, *groups: str, ttl: str | None = None) -> str:
        """A join token. Set-up, not a test of the command: over the admin socket, as
        `kms-server token create` does it, without starting a process (tests of the command
        itself run it)."""
        if ttl:  # the command parses durations
            args = ["token", "create", "--name", name, "--ttl", ttl]
            for g in groups:
                args += ["--group", g]
            return self.admin(*args).stdout.strip()
        from kms.v1 import admin_pb2

        request = admin_pb2.CreateJoinTokenRequest(name=name, groups=list(groups))
        return str(self.stub.CreateJoinToken(request, timeout=30).token)

    @property
    def stub(self) -> Any:
        """The Admin service over the admin socket, one channel per server (it reconnects
        across restarts)."""
        if self._stub is None:
            self._stub = admin_stub(self)
        return self._stub


def run(
    cmd: list[str], env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=_env(env),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def openssl_ocsp(ca: Path, cert: Path, http: str) -> subprocess.CompletedProcess[str]:
    """Asks the server's OCSP responder at http (HOST:PORT) about cert, as openssl's client does."""
    return run(
        [
            "openssl",
            "ocsp",
            "-issuer",
            str(ca),
            "-cert",
            str(cert),
            "-url",
            f"http://{http}/ocsp",
            "-CAfile",
            str(ca),
        ]
    )


def agent(state_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run([exe("kms-agent"), *args, "--dir", str(state_dir)], env=env)


def enroll(
    server: ServerProcess, state_dir: Path, token: str, /, **overrides: str
) -> subprocess.CompletedProcess[str]:
    """kms-agent enroll against server; overrides replace flags (server="A,B" gives --server A,B)."""
    opts = {
        "--server": server.address,
        "--enroll-server": server.enroll_address,
        "--token": token,
        "--ca-fingerprint": server.fingerprint,
    }
    opts.update({f"--{k.replace('_', '-')}": v for k, v in overrides.items()})
    args = ["enroll"]
    for k, v in opts.items():
        args += [k, v] if v else [k]  # an empty value is a bare flag, like --force
    return agent(state_dir, *args)


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) |[IW]\d{4} )")


def assert_one_line_error(result: subprocess.CompletedProcess[str], exit_code: int, *needles: str) -> None:
    """A CLI failure: the expected exit code and exactly one error line on stderr, no traceback.

    A server that fails at start may have logged progress (INFO lines) before
    the error; those are allowed, nothing else is.
    """
    lines = [line for line in result.stderr.strip().splitlines() if not _LOG_LINE.match(line)]
    assert result.returncode == exit_code, f"exit {result.returncode}, stderr: {result.stderr}"
    assert len(lines) == 1, f"expected one stderr line, got: {result.stderr!r}"
    assert lines[0].startswith(("kms-server: error: ", "kms-agent: error: ")), lines[0]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def snapshot(
    source: ServerProcess | Path | str, *, with_audit: bool = False
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read-only, to prove a failed call changed nothing.

    source is a ServerProcess (its store, on either backend), a SQLite file or a
    postgresql:// URL. Rows are tuples with the SQLite schema's column order on
    both backends (columns only PostgreSQL has come last), BLOB/BYTEA as bytes.
    The audit trail is left out unless asked for: it records refused attempts
    too, which is not a change of state.
    """
    if isinstance(source, ServerProcess):
        source = source.database or source.db
    tables = asyncio.run(_pg_tables(source)) if isinstance(source, str) else _sqlite_tables(source)
    return {name: sorted(rows, key=repr) for name, rows in tables.items() if with_audit or name != "audit"}


def store_bytes(server: ServerProcess) -> bytes:
    """What the server's store holds, as bytes, to prove a secret is not in it.

    SQLite: the raw database files (kms.db, -wal, -shm), free pages included.
    PostgreSQL: every value of every row (its data files are the cluster's,
    shared by every database of the run).
    """
    if server.database is None:
        return b"".join(path.read_bytes() for path in sorted(server.data_dir.glob("kms.db*")))
    parts: list[bytes] = []
    for rows in snapshot(server, with_audit=True).values():
        for row in rows:
            for value in row:
                parts.append(value if isinstance(value, bytes) else str(value).encode())
    return b"\x00".join(parts)


def _sqlite_tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        return {t: conn.execute(f"SELECT * FROM {t}").fetchall() for t in tables}  # noqa: S608
    finally:
        conn.close()


_reference_columns: dict[str, list[str]] | None = None


def _sqlite_column_order() -> dict[str, list[str]]:
    """Each table's columns in the SQLite schema's order, from the migrations applied in memory.

    Tests index snapshot rows by position; this keeps positions the same on both
    backends even where PostgreSQL's schema orders (or adds) columns differently.
    """
    global _reference_columns
    if _reference_columns is None:
        _reference_columns = {}
        try:
            from server.store import migrations

            steps = getattr(migrations, "SQLITE_MIGRATIONS", None) or migrations.MIGRATIONS
            conn = sqlite3.connect(":memory:")
            for step in steps:
                for statement in step:
                    conn.execute(statement)
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
                _reference_columns[table] = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            conn.close()
        except Exception:  # no reference order: PostgreSQL's own column order it is
            _reference_columns = {}
    return _reference_columns


async def _pg_tables(url: str) -> dict[str, list[tuple[Any, ...]]]:
    import asyncpg

    reference = _sqlite_column_order()
    conn = await asyncpg.connect(url, timeout=30)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            columns: dict[str, list[str]] = {}
            for r in await conn.fetch(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
            ):
                columns.setdefault(r["table_name"], []).append(r["column_name"])
            result: dict[str, list[tuple[Any, ...]]] = {}
            for table, cols in columns.items():
                known = [c for c in reference.get(table, []) if c in cols]
                ordered = known + [c for c in cols if c not in known]
                select = ", ".join(f'"{c}"' for c in ordered)
                rows = await conn.fetch(f'SELECT {select} FROM "{table}"')  # noqa: S608
                result[table] = [tuple(row.values()) for row in rows]
            return result
    finally:
        await conn.close()


def execute_sql(server: ServerProcess, sql: str, *args: Any) -> None:
    """Runs one statement on the server's store behind its back (tampering tests).

    Written with SQLite's `?` placeholders; on PostgreSQL they become $1, $2, ...
    """
    _sql(server, sql, args, fetch=False)


def query(server: ServerProcess, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """The rows of one query on the server's store, on either backend (`?` placeholders)."""
    return _sql(server, sql, args, fetch=True)


def _sql(server: ServerProcess, sql: str, args: tuple[Any, ...], *, fetch: bool) -> list[tuple[Any, ...]]:
    if server.database is None:
        conn = sqlite3.connect(server.db, timeout=10)
        try:
            rows = conn.execute(sql, args).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()
    parts = sql.split("?")
    numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))

    async def run_it(url: str) -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=30)
        try:
            if fetch:
                return [tuple(r.values()) for r in await conn.fetch(numbered, *args)]
            await conn.execute(numbered, *args)
            return []
        finally:
            await conn.close()

    return asyncio.run(run_it(server.database))


class RunProcess:
    """A real `kms-agent run --no-listen` child whose JSON event lines are collected."""

    def __init__(self, state_dir: Path) -> None:
        self.events: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [exe("kms-agent"), "run", "--no-listen", "--dir", str(state_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            stdin=subprocess.DEVNULL,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def saw(self, kind: str, key: str) -> bool:
        """Whether it reported an event of kind for key (it must still be running)."""
        assert self.proc.poll() is None, self.events
        return any(e.get("kind") == kind and e.get("key") == key for e in self.events)

    def wait_for(self, kind: str, key: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.saw(kind, key):
            assert time.monotonic() < deadline, self.events
            time.sleep(0.1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


class WatchProcess:
    """A real `kms-agent watch --json` child whose event lines are collected as they arrive."""

    def __init__(self, state_dir: Path, *extra: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [exe("kms-agent"), "watch", "--json", "--dir", str(state_dir), "--silence-timeout", "5", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            stdin=subprocess.DEVNULL,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.events.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0) -> None:
        with self._cond:
            if not self._cond.wait_for(
                lambda: predicate(self.events) or self.proc.poll() is not None, timeout
            ):
                raise AssertionError(f"watch did not see it in {timeout}s: {self._summary()}")
            if not predicate(self.events):
                raise AssertionError(f"watch exited {self.proc.returncode}: {self._summary()}")

    def wait_live(self, timeout: float = 20.0) -> None:
        """Waits until its stream is live (the agent logs it): events from now on come live."""
        deadline = time.monotonic() + timeout
        while not any("following the feed" in line for line in self.stderr):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"watch stream not live in {timeout}s: {self._summary()}")
            time.sleep(0.05)

    def _summary(self) -> str:
        events = self.events if len(self.events) <= 20 else ["...", *self.events[-20:]]
        return f"{len(self.events)} events: {events}\nstderr:\n{''.join(self.stderr[-50:])}"

    def seqs(self) -> list[int]:
        with self._cond:
            return [e["seq"] for e in self.events]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


def admin_stub(server: ServerProcess) -> Any:
    """The Admin service over the server's UNIX socket, for tests that need many calls fast."""
    import grpc

    from kms.v1 import admin_pb2_grpc

    channel = grpc.secure_channel(
        f"unix:{server.data_dir / 'admin.sock'}", grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
    )
    return admin_pb2_grpc.AdminStub(channel)


def agent_credentials(state_dir: Path) -> Any:
    """mTLS channel credentials from an enrolled agent's state directory."""
    import grpc

    return grpc.ssl_channel_credentials(
        (state_dir / "ca.crt").read_bytes(),
        (state_dir / "agent.key").read_bytes(),
        (state_dir / "agent.crt").read_bytes(),
    )
