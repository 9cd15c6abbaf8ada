"""RFC 7512 PKCS#11 URIs, as `--ca-key` takes them: ``pkcs11:token=kms-ca;object=ca``.

Pure: text in, a value or InvalidArgument out. Only the path attributes that
pick a token and a key are accepted; the PIN never rides in the URI
(``pin-value`` and ``pin-source`` are refused: it comes from
``--pkcs11-pin-file`` or ``KMS_PKCS11_PIN``), and the module is
``--pkcs11-module``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from kms.errors import InvalidArgument
from kms.settings import Setting

__all__ = ["Pkcs11Uri", "parse_pkcs11_uri", "uri_setting"]

SCHEME = "pkcs11:"
_TEXT = ("token", "object", "manufacturer", "model", "serial")
# RFC 7512 §2.3: pchar without "%" and ";", plus percent-encodings.
_VALUE = re.compile(r"^(?:[A-Za-z0-9\-._~!$&'()*+,=:@]|%[0-9A-Fa-f]{2})*$")


@dataclass(frozen=True)
class Pkcs11Uri:
    token: str
    object: str | None = None
    id: bytes | None = None
    serial: str | None = None
    manufacturer: str | None = None
    model: str | None = None

    def __str__(self) -> str:
        parts = [f"token={_quote(self.token.encode())}"]
        if self.object is not None:
            parts.append(f"object={_quote(self.object.encode())}")
        if self.id is not None:
            parts.append(f"id={''.join(f'%{b:02x}' for b in self.id)}")
        for name in ("serial", "manufacturer", "model"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={_quote(value.encode())}")
        return SCHEME + ";".join(parts)


def _quote(raw: bytes) -> str:
    safe = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    return "".join(chr(b) if b in safe else f"%{b:02X}" for b in raw)


def uri_setting(text: str, s: Setting) -> str | None:
    """--ca-key as a setting: checked now, kept as typed (config show prints it; no secret in it)."""
    if not text:
        return None
    parse_pkcs11_uri(text, s.flag)
    return text


def parse_pkcs11_uri(text: str, flag: str = "--ca-key") -> Pkcs11Uri:
    """Parses a PKCS#11 URI naming one private key: a token, and an object label or an id.

    Raises:
        InvalidArgument: naming what is wrong, never echoing a PIN.
    """
    if not text.lower().startswith(SCHEME):
        raise InvalidArgument(f"{flag} must be a PKCS#11 URI like pkcs11:token=NAME;object=LABEL")
    path, _, query = text[len(SCHEME) :].partition("?")
    if "pin-value" in query or "pin-source" in query:
        raise InvalidArgument(
            f"{flag}: the PIN never goes in the URI; give it in --pkcs11-pin-file or KMS_PKCS11_PIN"
        )
    if query:
        raise InvalidArgument(f"{flag}: query attributes are not supported (the module is --pkcs11-module)")
    found: dict[str, bytes] = {}
    for part in path.split(";") if path else []:
        name, eq, value = part.partition("=")
        if not eq or not name:
            raise InvalidArgument(f"{flag}: {part!r} is not NAME=VALUE")
        if name not in (*_TEXT, "id", "type"):
            raise InvalidArgument(f"{flag}: unsupported attribute {name!r} (use token, object, id, type)")
        if name in found:
            raise InvalidArgument(f"{flag}: attribute {name!r} is given twice")
        if not _VALUE.match(value):
            raise InvalidArgument(f"{flag}: the value of {name!r} must be percent-encoded (RFC 7512)")
        found[name] = unquote_to_bytes(value)
    return _build(found, flag)


def _build(found: dict[str, bytes], flag: str) -> Pkcs11Uri:
    if found.get("type", b"private") != b"private":
        raise InvalidArgument(f"{flag}: type must be private (the CA's private key)")
    texts: dict[str, str] = {}
    for name in _TEXT:
        if name in found:
            try:
                texts[name] = found[name].decode()
            except UnicodeDecodeError:
                raise InvalidArgument(f"{flag}: {name} is not UTF-8") from None
    token = texts.pop("token", "")
    if not token:
        raise InvalidArgument(f"{flag} must name the token: pkcs11:token=NAME;object=LABEL")
    if not texts.get("object") and not found.get("id"):
        raise InvalidArgument(f"{flag} must name the key: object=LABEL or id=%XX...")
    return Pkcs11Uri(token=token, id=found.get("id") or None, **texts)
