"""HOST:PORT addresses as operators write them (IPv6 in brackets)."""

from __future__ import annotations

from kms.errors import InvalidArgument

__all__ = ["join_hostport", "parse_hostport"]


def parse_hostport(text: str, *, what: str, allow_zero: bool = False) -> tuple[str, int]:
    """Splits HOST:PORT or [IPv6]:PORT.

    Args:
        text: the address.
        what: the flag or setting it came from, for the error message.
        allow_zero: whether port 0 ("pick a free one", for listeners) is allowed.

    Raises:
        InvalidArgument: naming ``what``.
    """
    host, sep, port = text.rpartition(":")
    lowest = 0 if allow_zero else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) <= 65535:
        raise InvalidArgument(f"{what} {text!r} must be HOST:PORT, like 127.0.0.1:8443")
    return host.removeprefix("[").removesuffix("]"), int(port)


def join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
