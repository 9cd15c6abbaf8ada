"""Trust bootstrap: the CA the server presents, before anything is trusted.

Before enrolling, the agent knows only an address and the CA fingerprint.
gRPC cannot skip server verification, so the agent first completes one TLS
handshake itself without verifying (nothing is sent over it) and takes the CA
of the chain the server presents. It reads the server's trust bundle over a
connection verified under that CA alone (the bundle is public, and checked by
its signatures from the pinned CA: agent/enroll.py), and sends the join token
only over one verified under the bundle's CAs, so a server that does not hold
a key certified by a CA the pin vouches for never sees the token.
"""

from __future__ import annotations

import socket
import ssl

from cryptography import x509

from agent.servers import Unreachable
from kms.addresses import join_hostport
from kms.errors import Unauthenticated

__all__ = ["presented_ca"]


def _presented_chain(host: str, port: int, timeout: float) -> list[bytes]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # deliberate: the pin below is the check
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            public = getattr(tls, "get_unverified_chain", None)  # Python >= 3.13
            if public is not None:
                return [bytes(c) for c in public()]
            # Python 3.11/3.12 have the same method on the private SSL object.
            return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in tls._sslobj.get_unverified_chain()]  # type: ignore[attr-defined]
    except (OSError, ssl.SSLError) as exc:
        address = join_hostport(host, port)
        raise Unreachable(
            address, str(exc), f"cannot reach the enrollment endpoint {address}: {exc}"
        ) from exc


def presented_ca(host: str, port: int, timeout: float = 10.0) -> x509.Certificate:
    """The CA certificate the server presents, unverified: for an operator to decide on (kms-agent
    enroll without --ca-fingerprint, on a terminal). Nothing is sent over the connection.

    Raises:
        Unauthenticated: the chain holds no certificate, or none that parses.
        Unreachable: the endpoint cannot be reached.
    """
    try:
        chain = [x509.load_der_x509_certificate(der) for der in _presented_chain(host, port, timeout)]
    except ValueError:
        raise Unauthenticated(
            f"the server at {join_hostport(host, port)} presented a certificate that does not parse"
        ) from None
    if not chain:
        raise Unauthenticated(f"the server at {join_hostport(host, port)} presented no certificate")
    roots = [c for c in chain if c.issuer == c.subject]
    return roots[0] if roots else chain[-1]
