"""The ports every worker binds: chosen once by the supervisor, which holds them while it runs.

A worker binds its ports with SO_REUSEPORT and the kernel spreads new
connections over the workers' listening sockets. The supervisor binds each
port first, also with SO_REUSEPORT but never listening (so it receives
nothing): a port 0 becomes one real port that every worker, restarted ones
too, binds again, and no program without SO_REUSEPORT can take it meanwhile.
"""

from __future__ import annotations

import dataclasses
import os
import socket

from kms.errors import FailedPrecondition
from server.config import ServerConfig

__all__ = ["PORTS_ENV", "Reservation", "reserve", "worker_config"]

# How the supervisor hands the chosen ports to its workers: "LISTEN,ENROLL,HTTP".
PORTS_ENV = "SEED_KMS_WORKER_PORTS"


class Reservation:
    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def hold(self, host: str, port: int, flag: str) -> int:
        """Binds host:port (SO_REUSEPORT, not listening); returns the port bound."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host or "0.0.0.0", port))  # noqa: S104 - the operator's address, or every one
        except OSError as exc:
            sock.close()
            raise FailedPrecondition(f"cannot listen on {host}:{port} ({flag}): {exc.strerror}") from None
        self.sockets.append(sock)
        return int(sock.getsockname()[1])

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []


def _host_for_bind(host: str) -> str:
    return socket.gethostbyname(host) if host and ":" not in host and not host[0].isdigit() else host


def reserve(cfg: ServerConfig) -> tuple[Reservation, ServerConfig]:
    """Holds the config's ports; the config with the ports really held (port 0 resolved)."""
    held = Reservation()
    try:
        listen = held.hold(_host_for_bind(cfg.listen_host), cfg.listen_port, "--listen")
        enroll = held.hold(_host_for_bind(cfg.enroll_host), cfg.enroll_port, "--enroll-listen")
        http = cfg.http_port
        if cfg.http_host is not None:
            http = held.hold(_host_for_bind(cfg.http_host), cfg.http_port, "--http-listen")
    except BaseException:
        held.close()
        raise
    return held, dataclasses.replace(cfg, listen_port=listen, enroll_port=enroll, http_port=http)


def worker_config(cfg: ServerConfig) -> ServerConfig:
    """cfg with the ports the supervisor chose (in a worker: PORTS_ENV is set)."""
    listen, enroll, http = (int(p) for p in os.environ[PORTS_ENV].split(","))
    return dataclasses.replace(cfg, listen_port=listen, enroll_port=enroll, http_port=http)
