"""Fetching keys: ask the server over mTLS, unwrap locally with the agent's own key."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from agent.client import KmsClient
from agent.state import AgentIdentity
from kms.errors import DataLoss, InvalidArgument
from kms.identity import validate_key_name
from kms.keypairs import AES_256, load_private_key
from kms.wrap import UnwrapError, unwrap, unwrap_private_key

__all__ = ["FetchedKey", "KeyFetcher", "encode_key"]


def encode_key(material: bytes, fmt: str) -> bytes:
    """Key bytes as a key file holds them: raw, or hex/base64 text with a newline; pem: a key
    pair's private key (material: PKCS#8 DER) as PKCS#8 PEM."""
    if fmt == "pem":
        key = serialization.load_der_private_key(material, password=None)
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
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
    material: bytes  # the AES key, or a key pair's private key as PKCS#8 DER
    key_type: str = AES_256

    def __repr__(self) -> str:  # never show key material, even in a traceback
        return f"FetchedKey(name={self.name!r}, version={self.version}, state={self.state!r})"


class KeyFetcher:
    def __init__(self, identity: AgentIdentity, client: KmsClient) -> None:
        self._identity = identity
        self._client = client
        self._serial = format(identity.cert.serial_number, "x")
        self._cache: dict[tuple[str, int, bool, bool], FetchedKey] = {}

    def fetch(
        self, name: str, version: int = 0, *, decrypt: bool = False, key_pair: bool = False
    ) -> FetchedKey:
        """Fetches and unwraps one version (0: the current one); cached for this process.

        key_pair: a key pair's private key (PKCS#8 DER); else an AES key.
        For encryption (refused once the key has expired), unless decrypt: then the
        version must be named, and is released until it is destroyed, expired key or not.

        Raises:
            InvalidArgument: bad name or version (decrypt: version 0).
            DataLoss: the wrapped key does not unwrap for this agent (label or key mismatch).
            and whatever the server said (PermissionDenied, NotFound, FailedPrecondition,
            WrongKeyType for a key of the other kind, ...).
        """
        validate_key_name(name)
        if version < 0:
            raise InvalidArgument("--version must be a positive number (or 0 for the current version)")
        if decrypt and not version:
            raise InvalidArgument(
                "fetching a key to decrypt needs the version the data is under: --version N"
            )
        cache_key = (name, version, key_pair, decrypt)
        if version and cache_key in self._cache:
            return self._cache[cache_key]
        resp = self._client.fetch_key(name, version, decrypt=decrypt, key_pair=key_pair)
        if (
            resp.name != name
            or (version and resp.version != version)
            or resp.wrapped_for_serial != self._serial
        ):
            raise DataLoss("the server answered for another key or certificate")
        try:
            if key_pair:
                material = unwrap_private_key(
                    self._identity.key, resp.wrapped_private_key, name, resp.version, self._serial
                )
                load_private_key(material, resp.key_type)  # the type the server says, or refused
            else:
                material = unwrap(self._identity.key, resp.wrapped_key, name, resp.version, self._serial)
        except (UnwrapError, ValueError):
            raise DataLoss(
                f"key {name!r} version {resp.version} does not unwrap with this agent's key: enroll again"
            ) from None
        fetched = FetchedKey(
            name, resp.version, resp.state, resp.created_at, material, resp.key_type or AES_256
        )
        self._cache[(name, resp.version, key_pair, decrypt)] = fetched
        return fetched
