"""CA generations whose key is in the PKCS#11 token (issue 19 §2, "rotation with an HSM").

``kms-server ca rotate`` on a deployment whose CA key is in a token makes the next
generation's key pair in the same token, with hsm.py's login and key generation:
non-extractable and sensitive like init's key, of the active CA's type unless
``--key-type`` asks another, under a label of its own derived from the configured
one and the generation number (``object=ca`` -> ``ca-g2``, ``ca-g3``...; its id
is the label, or the configured id with ``-gN``). A label or id already in the
token is refused: a key there is never overwritten, nor two keys given one name. The generation's RFC 7512 URI
(``pkcs11:token=T;object=ca-g2``, never a PIN) is what the store keeps as its
key_uri; ``open_generation_key`` opens it again with the server's module and PIN
source, as the configured key is opened (the same login, reopen and throttle).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import pkcs11
from pkcs11 import Attribute

from server.ca.authority import create_external_root
from server.ca.generation_keys import TokenAccess
from server.ca.hsm import (
    HsmError,
    HsmKey,
    PendingKey,
    _close,
    _generate_key,
    _login,
    _open,
    _open_found,
    _reason,
)
from server.ca.keytype import CAKeyType
from server.ca.pkcs11uri import Pkcs11Uri, parse_pkcs11_uri
from server.ca.signer import CARoot

__all__ = [
    "NewTokenKey",
    "destroy_generation_key",
    "generation_uri",
    "new_generation_key",
    "new_token_root",
    "open_generation_key",
]

# The label (and id) of a key init made without object= (hsm.py's _generate_key).
_DEFAULT_LABEL = "kms-ca"


def generation_uri(configured: Pkcs11Uri, generation: int) -> Pkcs11Uri:
    """The URI of generation's key: the configured token, its label with -gN (kms-ca-gN without one)."""
    label = f"{configured.object or _DEFAULT_LABEL}-g{generation}"
    # Its id: the configured one with -gN, or (without one) the label, so that two deployments
    # sharing a token (object=ca-prod, object=ca-test) never make keys with one id.
    key_id = label.encode() if configured.id is None else configured.id + f"-g{generation}".encode()
    return replace(configured, object=label, id=key_id)


@dataclass
class NewTokenKey:
    """A key new_generation_key made: its signer, its URI (what the store keeps), and the objects."""

    key: HsmKey
    uri: str
    _made: tuple[Any, Any]

    def discard(self) -> None:
        """Destroys the pair, when its generation was not recorded (another replica prepared one
        first): nothing refers to it, and it would hold its label. These very objects, never a
        search by label: a racing replica's key may carry the same one."""
        _destroy(self._made)
        self.key.close()


def new_generation_key(access: TokenAccess, generation: int, key_type: CAKeyType) -> NewTokenKey:
    """Makes generation's key pair in the configured token. Raises HsmError: the token cannot be
    used, or holds an object with its label or id already."""
    uri = generation_uri(parse_pkcs11_uri(access.uri), generation)
    lib = _load(access)
    session = _login(lib, uri, access.pin())
    try:
        for attribute, value in ((Attribute.LABEL, uri.object), (Attribute.ID, uri.id)):
            if list(session.get_objects({attribute: value})):
                raise _taken(uri, generation, attribute)
        made = _generate_key(session, uri, key_type)
    except BaseException:
        _close(session)
        raise
    try:
        key = _open_found(uri, lib, session, access.pin)
    except BaseException:
        _destroy(made)
        _close(session)
        raise
    return NewTokenKey(key, str(replace(uri, id=None)), made)


def _taken(uri: Pkcs11Uri, generation: int, attribute: Attribute) -> HsmError:
    what = f"labelled {uri.object!r}" if attribute is Attribute.LABEL else f"with the id {uri.id!r}"
    return HsmError(
        f"token {uri.token!r} already holds an object {what}, which CA generation {generation}'s key"
        " would get: a key is never overwritten, nor given another's label or id. If ca status lists no"
        " such generation it is left from a failed rotation: delete it with the token's tools"
        " (pkcs11-tool --delete-object), then rotate again"
    )


def open_generation_key(access: TokenAccess, key_uri: str) -> HsmKey:
    """A generation's key from its stored URI, logged in with the configured module and PIN source
    (hsm.py's open, so the same login, reopen and throttle as the configured key's).
    Raises HsmError (one line)."""
    key = _open(key_uri, access.module, access.pin, generate=None, pending=True)
    if isinstance(key, PendingKey):  # never made here: a CA generation's key is made by ca rotate only
        key.close()
        raise HsmError(
            f"token {key.uri.token!r} no longer holds the key {key_uri} of a CA generation:"
            " restore it into the token (from the token's own backup) under that label"
        )
    return key


def destroy_generation_key(access: TokenAccess, generation: int) -> int:
    """Destroys a cancelled generation's key pair (never activated: nothing it signed is out), so
    that the next rotation may make generation N's key under its label again. Only objects with
    both its label and its id. Returns how many were destroyed. Raises HsmError."""
    uri = generation_uri(parse_pkcs11_uri(access.uri), generation)
    session = _login(_load(access), uri, access.pin())
    try:
        found = list(session.get_objects({Attribute.LABEL: uri.object, Attribute.ID: uri.id}))
        for obj in found:
            obj.destroy()
        return len(found)
    finally:
        _close(session)


def _load(access: TokenAccess) -> Any:
    if access.module is None:
        raise HsmError("--ca-key pkcs11:... needs --pkcs11-module PATH (the token's PKCS#11 library)")
    try:
        return pkcs11.lib(str(access.module))
    except pkcs11.PKCS11Error as exc:
        raise HsmError(f"cannot load the PKCS#11 module {access.module}: {_reason(exc)}") from None


def _destroy(objects: tuple[Any, Any]) -> None:
    for obj in objects:
        with contextlib.suppress(pkcs11.PKCS11Error):  # the token gone: the label stays taken
            obj.destroy()


def new_token_root(
    access: TokenAccess,
    generation: int,
    key_type: CAKeyType,
    trust_domain: str,
    ca_ttl: timedelta,
    now: datetime,
) -> tuple[CARoot, NewTokenKey]:
    """generation's key made in the token, and its self-signed certificate signed there."""
    made = new_generation_key(access, generation, key_type)
    try:
        return create_external_root(made.key, trust_domain, ca_ttl, now), made
    except BaseException:
        made.discard()
        raise
