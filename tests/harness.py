"""Real processes for end-to-end tests: a kms-server, kms-agent invocations, admin commands.

The server is started on port 0; its first stdout line (the readiness line)
gives the bound addresses and the CA fingerprint. On any failure the child's
output is included in the assertion message, and the child is always stopped.
"""

from __future__ import annotations

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass
class ServerProcess:
    data_dir: Path
    extra_args: list[str] = field(default_factory=list)
    listen: str = "127.0.0.1:0"
    enroll_listen: str = "127.0.0.1:0"
    proc: subprocess.Popen[str] | None = None
    fields: dict[str, str] = field(default_factory=dict)
    _stderr: list[str] = field(default_factory=list)
    _stdout: list[str] = field(default_factory=list)

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
        return self.data_dir / "kms.db"

    def output(self) -> str:
        return "".join(self._stdout) + "\n--- stderr ---\n" + "".join(self._stderr)

    def start(self) -> ServerProcess:
        cmd = [
            exe("kms-server"),
            "run",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            self.listen,
            "--enroll-listen",
            self.enroll_listen,
            *self.extra_args,
        ]
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
        args = ["token", "create", "--name", name]
        for g in groups:
            args += ["--group", g]
        if ttl:
            args += ["--ttl", ttl]
        return self.admin(*args).stdout.strip()


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


def agent(state_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run([exe("kms-agent"), *args, "--dir", str(state_dir)], env=env)


def enroll(
    server: ServerProcess, state_dir: Path, token: str, **overrides: str
) -> subprocess.CompletedProcess[str]:
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


_LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) |[IW]\d{4} |E\d{4} .*add_port)"
)


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


def snapshot(db: Path, *, with_audit: bool = False) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read-only, to prove a failed call changed nothing.

    The audit trail is left out unless asked for: it records refused attempts
    too, which is not a change of state.
    """
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        tables = [t for t in tables if with_audit or t != "audit"]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}  # noqa: S608
    finally:
        conn.close()


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
                raise AssertionError(
                    f"watch did not see it in {timeout}s: {self.events}\n{''.join(self.stderr)}"
                )
            if not predicate(self.events):
                raise AssertionError(
                    f"watch exited {self.proc.returncode}: {self.events}\n{''.join(self.stderr)}"
                )

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
