"""Addresses for the failover stories: stand-ins for replicas that are down, silent or only
counting connections, and agents enrolled with lists of addresses."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path

from tests.harness import ServerProcess, agent

__all__ = ["Counting", "Refusing", "Silent", "enroll_direct", "enroll_listed", "free_address", "set_servers"]


class Refusing:
    """A port that is bound but not listening: every connection is refused, as to a replica that is down."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"

    def close(self) -> None:
        self._sock.close()


class Counting:
    """A port that accepts TCP connections and counts them (it never speaks TLS)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._sock.close()


class Silent:
    """A port whose connections the kernel accepts but nobody answers, as a host that drops packets."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)  # never accepted: TLS never starts
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"

    def close(self) -> None:
        self._sock.close()


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def enroll_listed(
    server: ServerProcess, state: Path, name: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return agent(
        state,
        "enroll",
        *args,
        "--token",
        server.token(name, "web"),
        "--ca-fingerprint",
        server.fingerprint,
    )


def enroll_direct(server: ServerProcess, state: Path, name: str) -> None:
    """Enrolls name at state through the live server's own two addresses."""
    result = enroll_listed(
        server, state, name, "--server", server.address, "--enroll-server", server.enroll_address
    )
    assert result.returncode == 0, result.stderr


def set_servers(state: Path, servers: list[str]) -> None:
    settings = json.loads((state / "agent.json").read_text())
    settings["servers"] = servers
    (state / "agent.json").write_text(json.dumps(settings))
