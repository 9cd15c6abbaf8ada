"""The Keys service: an agent fetches a key, wrapped for its certificate, or a key pair's public key."""

from __future__ import annotations

import grpc

from kms.v1 import keys_pb2, keys_pb2_grpc
from server.endpoints.auth import current_caller
from server.keys import KeyService

__all__ = ["KeysServicer"]


class KeysServicer(keys_pb2_grpc.KeysServicer):
    def __init__(self, keys: KeyService) -> None:
        self._keys = keys

    async def FetchKey(
        self, request: keys_pb2.FetchKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.FetchKeyResponse:
        caller = current_caller.get()
        assert caller is not None  # the method table: Role.AGENT only
        # UNSPECIFIED (an agent from before purposes) and any value unknown here are encryption
        # as far as expiry goes, so an old agent fails closed on an expired key; but such an
        # agent also decrypts under named versions, so it still gets rotated-out ones.
        decrypt = request.purpose == keys_pb2.FETCH_PURPOSE_DECRYPT
        legacy = request.purpose not in (keys_pb2.FETCH_PURPOSE_ENCRYPT, keys_pb2.FETCH_PURPOSE_DECRYPT)
        fetched = await self._keys.fetch(
            caller, request.name, request.version, decrypt=decrypt, key_pair=request.key_pair, legacy=legacy
        )
        pair = fetched.key_type != "aes-256"
        return keys_pb2.FetchKeyResponse(
            name=fetched.version.key_name,
            version=fetched.version.version,
            state=fetched.version.state,
            created_at=fetched.version.created_at,
            wrapped_key=b"" if pair else fetched.wrapped,
            wrapped_for_serial=caller.serial,
            key_type=fetched.key_type,
            wrapped_private_key=fetched.wrapped if pair else b"",
        )

    async def GetPublicKey(
        self, request: keys_pb2.GetPublicKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.GetPublicKeyResponse:
        caller = current_caller.get()
        assert caller is not None  # the method table: Role.AGENT only
        found = await self._keys.public_key(caller, request.name, request.version)
        return keys_pb2.GetPublicKeyResponse(
            name=found.version.key_name,
            version=found.version.version,
            key_type=found.key_type,
            state=found.version.state,
            public_key=found.der,
            created_at=found.version.created_at,
        )

    async def ListGrantedKeys(
        self, request: keys_pb2.ListGrantedKeysRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.ListGrantedKeysResponse:
        caller = current_caller.get()
        assert caller is not None  # the method table: Role.AGENT only
        fetchable = ("active", "deactivated")
        return keys_pb2.ListGrantedKeysResponse(
            keys=[
                keys_pb2.GrantedKey(
                    name=key.name,
                    key_type=key.key_type,
                    current_version=key.current_version,
                    versions=[v.version for v in key.versions if v.state in fetchable],
                )
                for key in await self._keys.granted(caller)
            ]
        )
