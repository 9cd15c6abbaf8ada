"""Before kms-server creates anything: are its TCP ports free?

A server started on a port that is already taken used to create a CA and a
master key in a fresh data dir, then fail to bind, with a gRPC C-core log line
before its own error. ``check_ports`` runs first, binding each configured port
for a moment (with SO_REUSEADDR, as the real listeners do, so a port in
TIME_WAIT is not mistaken for a taken one) and closing it again. A port in use
on any of the host's addresses, or a host none of whose addresses can be bound
(no such interface, a privileged port, a name that does not resolve), is one
line naming the flag, and nothing is created.
"""

from __future__ import annotations

import errno
import socket

from kms.addresses import join_hostport
from kms.errors import FailedPrecondition
from server.config import ServerConfig

__all__ = ["check_ports"]


def check_ports(cfg: ServerConfig) -> None:
    """Raises FailedPrecondition naming the flag of the first configured port already in use."""
    ports = [
        (cfg.listen_host, cfg.listen_port, "--listen"),
        (cfg.enroll_host, cfg.enroll_port, "--enroll-listen"),
    ]
    if cfg.http_host is not None:
        ports.append((cfg.http_host, cfg.http_port, "--http-listen"))
    for host, port, flag in ports:
        problem = _bind_problem(host, port) if port else None
        if problem is not None:
            raise FailedPrecondition(f"cannot listen on {join_hostport(host, port)} ({flag}): {problem}")


def _bind_problem(host: str, port: int) -> str | None:
    """Why host:port cannot be listened on, or None."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"the host does not resolve ({exc.strerror or exc}): give an address of this machine"
    failures: list[OSError] = []
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and len(infos) > 1:  # as the listeners bind
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (
                        "the port is already in use (another kms-server, or another program):"
                        " stop it or choose another port"
                    )
                failures.append(exc)
    if infos and len(failures) == len(infos):  # one address that binds is enough, as for the listeners
        return f"{failures[0].strerror or failures[0]}: give an address of this machine and a port it may use"
    return None
