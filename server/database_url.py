"""PostgreSQL URLs as the operator gives them: which hold a secret, and how to show them without it."""

from __future__ import annotations

import re

__all__ = ["redact_url", "url_has_password", "url_holds_secret"]


def redact_url(url: str) -> str:
    """A database URL without its passwords (user:password@ and ?password=), for messages and `config show`."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        rest = f"{creds.split(':', 1)[0]}:***@{host}"
    return scheme + sep + re.sub(r"((?:^|[?&])(?:ssl)?password=)[^&]*", r"\1***", rest)


def url_has_password(url: str) -> bool:
    """Whether a database URL carries a password (user:password@ or ?password=)."""
    rest = url.partition("://")[2]
    creds, at, _ = rest.rpartition("@")
    return bool(at and ":" in creds) or re.search(r"(?:^|[?&])password=", rest) is not None


def url_holds_secret(url: str) -> bool:
    """Whether a database URL carries anything secret: a password, or a client key's (sslpassword)."""
    return url_has_password(url) or re.search(r"(?:^|[?&])sslpassword=", url.partition("://")[2]) is not None
