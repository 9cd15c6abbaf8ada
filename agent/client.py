"""The agent's gRPC client: channels, calls, and errors mapped back to KmsError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import grpc

from kms.errors import KmsError, Unavailable, error_for_status
from kms.v1 import (
    enrollment_pb2,
    enrollment_pb2_grpc,
    handshake_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    revocation_pb2,
    revocation_pb2_grpc,
)

__all__ = ["KmsClient"]

T = TypeVar("T")
DEFAULT_TIMEOUT = 15.0


class KmsClient:
    """One channel to one server address; mTLS when a key and certificate are given."""

    def __init__(
        self,
        target: str,
        ca_pem: bytes,
        *,
        key_pem: bytes | None = None,
        cert_pem: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._target = target
        self._timeout = timeout
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
        )
        self._channel = grpc.secure_channel(target, creds)
        self._enrollment = enrollment_pb2_grpc.EnrollmentStub(self._channel)
        self._identity = identity_pb2_grpc.IdentityStub(self._channel)
        self._keys = keys_pb2_grpc.KeysStub(self._channel)
        self._revocation = revocation_pb2_grpc.RevocationStub(self._channel)
        self.handshake_stub = handshake_pb2_grpc.HandshakeStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> KmsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map_error(self, exc: grpc.RpcError) -> KmsError:
        """The KmsError for a failed call or stream."""
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            return Unavailable(
                f"cannot reach kms-server at {self._target} ({details.splitlines()[0] if details else 'unavailable'}):"
                " check the address; a TLS handshake also fails when the server does not verify against the"
                " pinned CA, or when this agent's certificate is expired"
            )
        return error_for_status(code, details)

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise self.map_error(exc) from None

    def get_ca_bundle(self) -> str:
        resp = cast(
            enrollment_pb2.GetCABundleResponse,
            self._call(self._enrollment.GetCABundle, enrollment_pb2.GetCABundleRequest()),
        )
        return resp.ca_bundle_pem

    def enroll(self, join_token: str, csr_der: bytes) -> enrollment_pb2.EnrollResponse:
        request = enrollment_pb2.EnrollRequest(join_token=join_token, csr_der=csr_der)
        return cast(enrollment_pb2.EnrollResponse, self._call(self._enrollment.Enroll, request))

    def whoami(self) -> identity_pb2.WhoAmIResponse:
        return cast(
            identity_pb2.WhoAmIResponse, self._call(self._identity.WhoAmI, identity_pb2.WhoAmIRequest())
        )

    def fetch_key(self, name: str, version: int) -> keys_pb2.FetchKeyResponse:
        request = keys_pb2.FetchKeyRequest(name=name, version=version)
        return cast(keys_pb2.FetchKeyResponse, self._call(self._keys.FetchKey, request))

    def check_certificate(self, serial: str) -> revocation_pb2.CheckCertificateResponse:
        request = revocation_pb2.CheckCertificateRequest(serial=serial)
        return cast(
            revocation_pb2.CheckCertificateResponse, self._call(self._revocation.CheckCertificate, request)
        )

    def watch(self, after_seq: int) -> Any:
        """Opens a Watch stream (no deadline); iterate it, cancel() it. Errors surface while iterating."""
        return self._revocation.Watch(revocation_pb2.WatchRequest(after_seq=after_seq))

    def renew(self, csr_der: bytes) -> identity_pb2.RenewResponse:
        request = identity_pb2.RenewRequest(csr_der=csr_der)
        return cast(identity_pb2.RenewResponse, self._call(self._identity.Renew, request))
