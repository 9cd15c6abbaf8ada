"""Fetching keys: ask the server over mTLS, unwrap locally with the agent's own key."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from agent.client import KmsClient
from agent.state import AgentIdentity
from kms.errors import DataLoss, InvalidArgument
from kms.identity import validate_key_name
from kms.wrap import UnwrapError, unwrap

__all__ = ["FetchedKey", "KeyFetcher", "encode_key"]


def encode_key(material: bytes, fmt: str) -> bytes:
    """Key bytes as a key file holds them: raw, or hex/base64 text with a newline."""
    if fmt == "hex":
        return material.hex().encode() + b"\n"
    if fmt == "base64":
        return base64.b64encode(material) + b"\n"
    return material


@dataclass(frozen=True)
class FetchedKey:
    name: str
    version: int
    state: str
    created_at: int
    material: bytes

    def __repr__(self) -> str:  # never show key material, even in a traceback
        return f"FetchedKey(name={self.name!r}, version={self.version}, state={self.state!r})"


class KeyFetcher:
    def __init__(self, identity: AgentIdentity, client: KmsClient) -> None:
        self._identity = identity
        self._client = client
        self._serial = format(identity.cert.serial_number, "x")
        self._cache: dict[tuple[str, int], FetchedKey] = {}

    def fetch(self, name: str, version: int = 0, *, decrypt: bool = False) -> FetchedKey:
        """Fetches and unwraps one version (0: the current one); cached for this process.

        For encryption (refused once the key has expired), unless decrypt: then the
        version must be named, and is released until it is destroyed, expired key or not.

        Raises:
            InvalidArgument: bad name or version (decrypt: version 0).
            DataLoss: the wrapped key does not unwrap for this agent (label or key mismatch).
            and whatever the server said (PermissionDenied, NotFound, FailedPrecondition, ...).
        """
        validate_key_name(name)
        if version < 0:
            raise InvalidArgument("--version must be a positive number (or 0 for the current version)")
        if decrypt and not version:
            raise InvalidArgument(
                "fetching a key to decrypt needs the version the data is under: --version N"
            )
        if version and (name, version) in self._cache:
            return self._cache[(name, version)]
        resp = self._client.fetch_key(name, version, decrypt=decrypt)
        if (
            resp.name != name
            or (version and resp.version != version)
            or resp.wrapped_for_serial != self._serial
        ):
            raise DataLoss("the server answered for another key or certificate")
        try:
            material = unwrap(self._identity.key, resp.wrapped_key, name, resp.version, self._serial)
        except UnwrapError:
            raise DataLoss(
                f"key {name!r} version {resp.version} does not unwrap with this agent's key: enroll again"
            ) from None
        fetched = FetchedKey(name, resp.version, resp.state, resp.created_at, material)
        self._cache[(name, resp.version)] = fetched
        return fetched
