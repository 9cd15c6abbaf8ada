"""Client side of the admin socket, used by the kms-server admin subcommands."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc

from kms.errors import KmsError, StoreDown, Unavailable, from_rpc_error
from kms.v1 import admin_pb2, admin_pb2_grpc, monitor_pb2, monitor_pb2_grpc

__all__ = ["AdminClient"]

T = TypeVar("T")
_TIMEOUT = 15.0


class AdminClient:
    def __init__(self, socket_path: Path, *, timeout: float = _TIMEOUT) -> None:
        self._socket = socket_path
        self._timeout = timeout
        if not socket_path.exists():
            raise Unavailable(
                f"no kms-server is running for this data dir (no admin socket at {socket_path}): start it with kms-server run"
            )
        self._channel = grpc.secure_channel(
            f"unix:{socket_path}", grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
        )
        self._stub = admin_pb2_grpc.AdminStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise self.error_of(exc) from None

    def error_of(self, exc: grpc.RpcError) -> KmsError:
        """A failed call's status as our error (the server not answering: how to start it)."""
        error = from_rpc_error(exc.code(), exc.details(), exc.trailing_metadata())
        if isinstance(error, Unavailable) and not isinstance(error, StoreDown):
            return Unavailable(
                f"no kms-server answers on {self._socket} (is it running?): start it with kms-server run"
            )
        return error

    def create_join_token(
        self,
        name: str,
        groups: list[str],
        ttl_seconds: int,
        allow_reenroll: bool = False,
        replace: bool = False,
    ) -> admin_pb2.CreateJoinTokenResponse:
        request = admin_pb2.CreateJoinTokenRequest(
            name=name, groups=groups, ttl_seconds=ttl_seconds, allow_reenroll=allow_reenroll, replace=replace
        )
        return cast(admin_pb2.CreateJoinTokenResponse, self._call(self._stub.CreateJoinToken, request))

    def get_ca(self) -> admin_pb2.GetCAResponse:
        return cast(admin_pb2.GetCAResponse, self._call(self._stub.GetCA, admin_pb2.GetCARequest()))

    def list_agents(self) -> admin_pb2.ListAgentsResponse:
        return cast(
            admin_pb2.ListAgentsResponse, self._call(self._stub.ListAgents, admin_pb2.ListAgentsRequest())
        )

    def create_key(
        self,
        name: str,
        grants: list[str],
        allow_unknown_grantee: bool = False,
        key_type: str = "",
        **schedule: int,
    ) -> admin_pb2.KeyInfo:
        """schedule: expires_at (Unix seconds), rotate_every (seconds); 0 or absent: none."""
        request = admin_pb2.CreateKeyRequest(
            name=name,
            grants=grants,
            allow_unknown_grantee=allow_unknown_grantee,
            key_type=key_type,
            **schedule,
        )
        return cast(admin_pb2.KeyInfo, self._call(self._stub.CreateKey, request))

    def rotate_key(self, name: str) -> admin_pb2.KeyInfo:
        return cast(
            admin_pb2.KeyInfo, self._call(self._stub.RotateKey, admin_pb2.RotateKeyRequest(name=name))
        )

    def grant_key(self, name: str, grant: str, allow_unknown_grantee: bool = False) -> admin_pb2.KeyInfo:
        request = admin_pb2.GrantKeyRequest(
            name=name, grant=grant, allow_unknown_grantee=allow_unknown_grantee
        )
        return cast(admin_pb2.KeyInfo, self._call(self._stub.GrantKey, request))

    def ungrant_key(self, name: str, grant: str) -> admin_pb2.KeyInfo:
        request = admin_pb2.GrantKeyRequest(name=name, grant=grant)
        return cast(admin_pb2.KeyInfo, self._call(self._stub.UngrantKey, request))

    def list_keys(self) -> admin_pb2.ListKeysResponse:
        return cast(admin_pb2.ListKeysResponse, self._call(self._stub.ListKeys, admin_pb2.ListKeysRequest()))

    def destroy_key_version(self, name: str, version: int) -> admin_pb2.KeyInfo:
        request = admin_pb2.DestroyKeyVersionRequest(name=name, version=version)
        return cast(admin_pb2.KeyInfo, self._call(self._stub.DestroyKeyVersion, request))

    def disable_key(self, name: str, reason: str) -> admin_pb2.KeyStateResponse:
        request = admin_pb2.DisableKeyRequest(name=name, reason=reason)
        return cast(admin_pb2.KeyStateResponse, self._call(self._stub.DisableKey, request))

    def enable_key(self, name: str) -> admin_pb2.KeyStateResponse:
        request = admin_pb2.EnableKeyRequest(name=name)
        return cast(admin_pb2.KeyStateResponse, self._call(self._stub.EnableKey, request))

    def revoke_certificate(self, serial: str, reason: str) -> admin_pb2.RevokeResponse:
        request = admin_pb2.RevokeCertificateRequest(serial=serial, reason=reason)
        return cast(admin_pb2.RevokeResponse, self._call(self._stub.RevokeCertificate, request))

    def revoke_agent(self, name: str, reason: str) -> admin_pb2.RevokeResponse:
        request = admin_pb2.RevokeAgentRequest(name=name, reason=reason)
        return cast(admin_pb2.RevokeResponse, self._call(self._stub.RevokeAgent, request))

    def revoke_key(self, name: str, version: int, reason: str) -> admin_pb2.RevokeResponse:
        request = admin_pb2.RevokeKeyRequest(name=name, version=version, reason=reason)
        return cast(admin_pb2.RevokeResponse, self._call(self._stub.RevokeKey, request))

    def list_revocations(self, *, active: bool = False) -> admin_pb2.ListRevocationsResponse:
        request = admin_pb2.ListRevocationsRequest(active=active)
        return cast(admin_pb2.ListRevocationsResponse, self._call(self._stub.ListRevocations, request))

    def release_certificate(self, serial: str) -> admin_pb2.RevokeResponse:
        request = admin_pb2.ReleaseCertificateRequest(serial=serial)
        return cast(admin_pb2.RevokeResponse, self._call(self._stub.ReleaseCertificate, request))

    def release_agent(self, name: str) -> admin_pb2.RevokeResponse:
        request = admin_pb2.ReleaseAgentRequest(name=name)
        return cast(admin_pb2.RevokeResponse, self._call(self._stub.ReleaseAgent, request))

    def list_audit(self, after_seq: int, limit: int = 0) -> admin_pb2.ListAuditResponse:
        request = admin_pb2.ListAuditRequest(after_seq=after_seq, limit=limit)
        return cast(admin_pb2.ListAuditResponse, self._call(self._stub.ListAudit, request))

    def verify_audit(self) -> admin_pb2.VerifyAuditResponse:
        return cast(
            admin_pb2.VerifyAuditResponse, self._call(self._stub.VerifyAudit, admin_pb2.VerifyAuditRequest())
        )

    def backup(self, path: str) -> admin_pb2.BackupResponse:
        return cast(
            admin_pb2.BackupResponse, self._call(self._stub.Backup, admin_pb2.BackupRequest(path=path))
        )

    def set_key(self, name: str, *, expires_at: int | None, rotate_every: int | None) -> admin_pb2.KeyInfo:
        """None leaves a field as it is; 0 clears it (no expiry, no scheduled rotation)."""
        request = admin_pb2.SetKeyRequest(name=name, expires_at=expires_at, rotate_every=rotate_every)
        return cast(admin_pb2.KeyInfo, self._call(self._stub.SetKey, request))

    def get_key(self, name: str) -> admin_pb2.KeyInfo:
        return cast(admin_pb2.KeyInfo, self._call(self._stub.GetKey, admin_pb2.GetKeyRequest(name=name)))

    # --- the Monitor service, beside Admin on the socket (kms-server top, confirmations) ---

    def standing(self, *, name: str = "", serial: str = "") -> monitor_pb2.Standing:
        """An agent's valid certificates and open streams, by name or by one of its serials."""
        stub = monitor_pb2_grpc.MonitorStub(self._channel)
        request = monitor_pb2.GetStandingRequest(name=name, serial=serial)
        return cast(monitor_pb2.Standing, self._call(stub.GetStanding, request))

    def observe(self, windows: Iterator[monitor_pb2.ObserveRequest]) -> Iterator[monitor_pb2.Overview]:
        """The live view's stream (no deadline: cancel() it); errors come out as grpc.RpcError."""
        return cast(
            Iterator[monitor_pb2.Overview], monitor_pb2_grpc.MonitorStub(self._channel).Observe(windows)
        )

    def rotate_ca(self, key_type: str, now: bool = False, revoke_old: bool = False) -> admin_pb2.CAGeneration:
        request = admin_pb2.RotateCARequest(key_type=key_type, now=now, revoke_old=revoke_old)
        return cast(admin_pb2.CAGeneration, self._call(self._stub.RotateCA, request))

    def activate_ca(self, now: bool, revoke_old: bool = False) -> admin_pb2.CAGeneration:
        request = admin_pb2.ActivateCARequest(now=now, revoke_old=revoke_old)
        return cast(admin_pb2.CAGeneration, self._call(self._stub.ActivateCA, request))

    def cancel_ca(self) -> admin_pb2.CAGeneration:
        request = admin_pb2.CancelCARotationRequest()
        return cast(admin_pb2.CAGeneration, self._call(self._stub.CancelCARotation, request))

    def list_cas(self) -> admin_pb2.ListCAsResponse:
        return cast(admin_pb2.ListCAsResponse, self._call(self._stub.ListCAs, admin_pb2.ListCAsRequest()))
