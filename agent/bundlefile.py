"""trust-bundle.pem with its version (issue 19 §1): the bundle and the version the server gave it, in one file.

The server versions its trust bundle (Enrollment/GetCABundle's trust_bundle_version: the
event-log sequence number of the newest 'bundle' event it reflects), and the version only grows,
so an agent refuses a bundle older than the one it holds: a replica that lags serves one
(agent/bundle.py). The version is the file's first line, before the certificates, as RFC 7468
explanatory text (PEM readers, openssl and gRPC among them, skip text before the first
certificate): the file is written atomically, so a crash never leaves a bundle with another
bundle's version. A file without that line (written before versions, or version 0) is version 0.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["read_versioned", "versioned"]

_LINE = re.compile(rb"\A# trust bundle version (\d{1,20})\n")


def versioned(pem: bytes, version: int) -> bytes:
    """The file's content: the version line (none for version 0), then pem."""
    return (b"# trust bundle version %d\n" % version if version else b"") + pem


def read_versioned(path: Path) -> tuple[str, int]:
    """The stored bundle (PEM, without the version line) and its version; ("", 0) when none is stored.

    Raises:
        OSError, ValueError (UnicodeDecodeError): the file is unreadable.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "", 0
    line = _LINE.match(data)
    return (data[line.end() :].decode(), int(line.group(1))) if line else (data.decode(), 0)
