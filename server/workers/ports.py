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
        """Binds host:port on each of the host's addresses (SO_REUSEPORT, not listening), as the
        listeners bind them; returns the port bound (port 0: the first address's, on them all)."""
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot listen on {host}:{port} ({flag}): {exc.strerror or exc}"
            ) from None
        seen: set[tuple[int, object]] = set()
        for family, kind, proto, _, addr in infos:
            if (family, addr[0]) in seen:
                continue
            seen.add((family, addr[0]))
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6 and len(infos) > 1:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((addr[0], port, *addr[2:]))
            except OSError as exc:
                sock.close()
                raise FailedPrecondition(f"cannot listen on {host}:{port} ({flag}): {exc.strerror}") from None
            self.sockets.append(sock)
            port = int(sock.getsockname()[1])
        return port

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []


def reserve(cfg: ServerConfig) -> tuple[Reservation, ServerConfig]:
    """Holds the config's ports; the config with the ports really held (port 0 resolved)."""
    held = Reservation()
    try:
        listen = held.hold(cfg.listen_host, cfg.listen_port, "--listen")
        enroll = held.hold(cfg.enroll_host, cfg.enroll_port, "--enroll-listen")
        http = cfg.http_port
        if cfg.http_host is not None:
            http = held.hold(cfg.http_host, cfg.http_port, "--http-listen")
    except BaseException:
        held.close()
        raise
    return held, dataclasses.replace(cfg, listen_port=listen, enroll_port=enroll, http_port=http)


def worker_config(cfg: ServerConfig) -> ServerConfig:
    """cfg with the ports the supervisor chose (in a worker: PORTS_ENV is set)."""
    listen, enroll, http = (int(p) for p in os.environ[PORTS_ENV].split(","))
    return dataclasses.replace(cfg, listen_port=listen, enroll_port=enroll, http_port=http)
