"""The optional HTTP side port: /crl (DER), /ocsp (RFC 6960), /metrics (Prometheus) and /healthz.

Deliberately tiny: HTTP/1.1 with Connection: close, GET and POST only,
bounded header and body sizes, a timeout per request. Standard tools
(openssl, browsers, OCSP clients) need nothing more.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import socket
import urllib.parse
from collections.abc import Awaitable, Callable

from kms.errors import NotFound, Unavailable
from server.ca.crl import CrlPublisher
from server.ca.ocsp import OcspResponder
from server.ops.metrics import Metrics

__all__ = ["HttpSidePort"]

logger = logging.getLogger(__name__)

_MAX_HEADER = 8 * 1024
_MAX_BODY = 64 * 1024
_TIMEOUT = 10.0
_REASONS = {
    503: "Service Unavailable",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
}


class HttpSidePort:
    def __init__(
        self,
        crl: CrlPublisher,
        ocsp: OcspResponder,
        metrics: Metrics,
        refresh: Callable[[], Awaitable[None]],
        healthy: Callable[[], Awaitable[bool]],
    ) -> None:
        self._crl = crl
        self._ocsp = ocsp
        self._metrics = metrics
        self._refresh = refresh
        self._healthy = healthy
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> int:
        """Serves on an already bound, listening socket; returns its port."""
        self._server = await asyncio.start_server(self._handle, sock=sock, limit=_MAX_HEADER)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body = await asyncio.wait_for(self._route(reader), _TIMEOUT)
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            ConnectionError,
        ):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        except Unavailable as exc:  # the CA key cannot sign now (its token is down): one line, no traceback
            status, ctype, body = 503, "text/plain", f"unavailable: {exc.message}\n".encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _route(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        request = await reader.readuntil(b"\r\n\r\n")
        lines = request.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        path = urllib.parse.urlsplit(target).path
        if path == "/metrics" and method == "GET":
            await self._refresh()
            return 200, "text/plain; version=0.0.4; charset=utf-8", await self._metrics.whole()
        if path == "/healthz" and method == "GET":
            if await self._healthy():
                return 200, "text/plain", b"ok\n"
            return 503, "text/plain", b"store unavailable\n"
        if path == "/crl" or path.startswith("/crl/"):
            if method != "GET":
                return 405, "text/plain", b"use GET\n"
            return await self._crl_of(path)
        if path == "/ocsp" and method == "POST":
            length = int(headers.get("content-length", "0"))
            if not 0 < length <= _MAX_BODY:
                return 413, "text/plain", b"OCSP request too large\n"
            der = await reader.readexactly(length)
            return 200, "application/ocsp-response", await self._ocsp.respond(der)
        if path.startswith("/ocsp/") and method == "GET":  # RFC 6960 Appendix A.1
            try:
                der = base64.b64decode(urllib.parse.unquote(path[len("/ocsp/") :]), validate=True)
            except (binascii.Error, ValueError):
                return 400, "text/plain", b"bad base64\n"
            return 200, "application/ocsp-response", await self._ocsp.respond(der)
        return 404, "text/plain", b"not found: /crl, /crl/N, /ocsp, /metrics or /healthz\n"

    async def _crl_of(self, path: str) -> tuple[int, str, bytes]:
        """/crl: generation 1's CRL while it is live, then the active CA's; /crl/N: generation N's."""
        if path == "/crl":
            return 200, "application/pkix-crl", await self._crl.current()
        number = path[len("/crl/") :]
        if not number.isdigit() or len(number) > 9:
            return 404, "text/plain", b"not found: /crl/N takes a CA generation number\n"
        try:
            return 200, "application/pkix-crl", await self._crl.current(int(number))
        except NotFound as exc:
            return 404, "text/plain", exc.message.encode() + b"\n"
