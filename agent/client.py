"""The agent's gRPC client: channels, calls, failover between replicas, errors mapped back to KmsError.

An Endpoint is one channel to one address. A KmsClient holds every address of
the deployment (agent/servers.py) and sends each call through
Servers.first_available, so every command fails over the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc

from agent.servers import Servers, Unreachable
from kms.errors import FailedPrecondition, KmsError, StoreDown, Unavailable, from_rpc_error
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

__all__ = ["DEFAULT_TIMEOUT", "Endpoint", "KmsClient", "quiet_closed_channel_polling"]

T = TypeVar("T")
DEFAULT_TIMEOUT = 15.0
# How long Endpoint.connected waits for grpc's polling thread to report the channel's state.
_STATE_WAIT = 2.0

_UNREACHABLE_HINT = (
    "a TLS handshake also fails when the server does not verify against the pinned CA,"
    " or when this agent's certificate is expired"
)


def quiet_closed_channel_polling(
    args: threading.ExceptHookArgs, fallback: Any = threading.excepthook
) -> None:
    """threading.excepthook: drops what grpc's connectivity-polling thread raises when its channel
    is closed under it (the thread Endpoint's subscribe starts; grpc closes a channel with it still
    polling, and as the process exited it printed a traceback before the one-line error).
    Anything else goes to the usual hook."""
    tb = args.exc_traceback
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "_poll_connectivity" and Path(code.co_filename).parts[-2:] == (
            "grpc",
            "_channel.py",
        ):
            return
        tb = tb.tb_next
    fallback(args)


threading.excepthook = quiet_closed_channel_polling


class Endpoint:
    """One channel to one server address."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials, timeout: float) -> None:
        self.target = target
        self._timeout = timeout
        self._channel = grpc.secure_channel(target, credentials)
        self._following = False  # a stream asked to keep the connection state (follow_connection)
        self._ever_connected = False
        self.enrollment = enrollment_pb2_grpc.EnrollmentStub(self._channel)
        self.identity = identity_pb2_grpc.IdentityStub(self._channel)
        self.keys = keys_pb2_grpc.KeysStub(self._channel)
        self.revocation = revocation_pb2_grpc.RevocationStub(self._channel)
        self.handshake = handshake_pb2_grpc.HandshakeStub(self._channel)

    def follow_connection(self) -> None:
        """From now on, connected says whether the channel ever got a connection: for a stream,
        whose connection may come and go while it waits (a subscription for the channel's life)."""
        if not self._following:
            self._following = True
            self._channel.subscribe(self._on_state)

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.READY:
            self._ever_connected = True

    @property
    def connected(self) -> bool:
        """Whether the channel got a connection (TCP and TLS): since follow_connection, ever;
        otherwise, unless it is connecting now.

        Unary calls ask only once one ran out of time, to tell a silent address (still
        CONNECTING, or failing to) from a server that had the call: READY, or IDLE once a
        server going away let its connection go, is the server's answer and never retried
        elsewhere; so is a state grpc did not report in time. Not kept by a subscription for
        the channel's life: grpc's close() waits for a subscription's pending poll (up to
        200 ms), which made every one-shot command that much longer.
        """
        if self._following:
            return self._ever_connected
        seen: list[grpc.ChannelConnectivity] = []
        delivered = threading.Event()

        def on_state(state: grpc.ChannelConnectivity) -> None:
            seen.append(state)  # the first is the state when subscribing
            delivered.set()

        self._channel.subscribe(on_state)
        try:
            delivered.wait(_STATE_WAIT)
        finally:
            self._channel.unsubscribe(on_state)
        return seen[:1] not in (
            [grpc.ChannelConnectivity.CONNECTING],
            [grpc.ChannelConnectivity.TRANSIENT_FAILURE],
        )

    def close(self) -> None:
        if self._following:
            self._channel.unsubscribe(self._on_state)
        self._channel.close()

    def unreachable(self, reason: str) -> Unreachable:
        return Unreachable(
            self.target,
            reason,
            f"cannot reach kms-server at {self.target} ({reason}): check the address; {_UNREACHABLE_HINT}",
        )

    def map_error(self, exc: grpc.RpcError) -> KmsError:
        """The KmsError for a failed call or stream on this address.

        The server's error class comes back by kms.errors.from_rpc_error.
        Unreachable for UNAVAILABLE, and for a deadline that passed while the
        channel was still connecting (a host that drops packets never refuses):
        both mean "try the next address". A deadline on a server that had the
        call is its answer, and final (Endpoint.connected).
        """
        code, details = exc.code(), exc.details() or ""
        error = from_rpc_error(code, details, exc.trailing_metadata())
        if isinstance(error, StoreDown):
            # The server answered, but cannot reach its database: another replica may.
            return StoreDown(f"kms-server at {self.target} says: {details}")
        if isinstance(error, Unavailable):
            return self.unreachable(details.splitlines()[0] if details else "unavailable")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and not self.connected:
            return self.unreachable(f"no connection within {self._timeout:g}s")
        return error

    def call(self, method: Callable[..., T], request: Any) -> T:
        """A unary call with the client's deadline; errors raised as KmsError."""
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise self.map_error(exc) from None

    def watch(self, after_seq: int) -> Any:
        """Opens a Watch stream (no deadline); iterate it, cancel() it. Errors surface while iterating."""
        self.follow_connection()
        return self.revocation.Watch(revocation_pb2.WatchRequest(after_seq=after_seq))


class KmsClient:
    """Every address of one deployment; mTLS when a key and certificate are given.

    Unary calls go to the address that answered last and move on to the next
    only on UNAVAILABLE. Streams use failover() (a whole exchange) or endpoint()
    (the watch, which rotates through the addresses itself).
    """

    def __init__(
        self,
        servers: Servers | Sequence[str],
        ca_pem: bytes,
        *,
        key_pem: bytes | None = None,
        cert_pem: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if isinstance(servers, str):
            servers = [servers]
        self.servers = servers if isinstance(servers, Servers) else Servers(servers)
        self._timeout = timeout
        self._credentials = grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
        )
        self._endpoints: dict[str, Endpoint] = {}
        self._closed = False

    def close(self) -> None:
        """Closes every channel; a stream waiting on one ends (how a listener is stopped)."""
        self._closed = True
        for endpoint in list(self._endpoints.values()):
            endpoint.close()

    def __enter__(self) -> KmsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def endpoint(self, address: str) -> Endpoint:
        """The channel to one address (opened on first use; channels connect lazily)."""
        if self._closed:  # stopped: failover must not open a fresh channel and wait on it
            raise FailedPrecondition("the client was closed")
        if address not in self._endpoints:
            self._endpoints[address] = Endpoint(address, self._credentials, self._timeout)
        return self._endpoints[address]

    def failover(self, attempt: Callable[[Endpoint], T]) -> T:
        """attempt(endpoint) on each address in turn until one is not UNAVAILABLE.

        Raises:
            Unavailable: no address answered; one line naming each.
            and any other error of attempt, at once (it is the deployment's answer).
        """
        return self.servers.first_available(
            lambda address: attempt(self.endpoint(address)),
            what="kms-server",
            hint=f"check the addresses; {_UNREACHABLE_HINT}",
        )

    def _call(self, method: Callable[[Endpoint], Callable[..., Any]], request: Any) -> Any:
        return self.failover(lambda endpoint: endpoint.call(method(endpoint), request))

    def get_ca_bundle(self) -> str:
        resp = cast(
            enrollment_pb2.GetCABundleResponse,
            self._call(lambda e: e.enrollment.GetCABundle, enrollment_pb2.GetCABundleRequest()),
        )
        return resp.ca_bundle_pem

    def get_trust_bundle(self) -> tuple[str, int]:
        """The trust bundle (the active CA, each prepared CA and its cross-certificate), unchecked,
        and its version (0 from a server that predates versions); the active CA alone from a server
        that predates the trust bundle."""
        resp = cast(
            enrollment_pb2.GetCABundleResponse,
            self._call(lambda e: e.enrollment.GetCABundle, enrollment_pb2.GetCABundleRequest()),
        )
        return resp.trust_bundle_pem or resp.ca_bundle_pem, resp.trust_bundle_version

    def enroll(self, join_token: str, csr_der: bytes) -> enrollment_pb2.EnrollResponse:
        request = enrollment_pb2.EnrollRequest(join_token=join_token, csr_der=csr_der)
        return cast(enrollment_pb2.EnrollResponse, self._call(lambda e: e.enrollment.Enroll, request))

    def list_granted_keys(self) -> keys_pb2.ListGrantedKeysResponse:
        return cast(
            keys_pb2.ListGrantedKeysResponse,
            self._call(lambda e: e.keys.ListGrantedKeys, keys_pb2.ListGrantedKeysRequest()),
        )

    def whoami(self) -> identity_pb2.WhoAmIResponse:
        return cast(
            identity_pb2.WhoAmIResponse,
            self._call(lambda e: e.identity.WhoAmI, identity_pb2.WhoAmIRequest()),
        )

    def fetch_key(
        self, name: str, version: int, *, decrypt: bool = False, key_pair: bool = False
    ) -> keys_pb2.FetchKeyResponse:
        """For encryption, unless decrypt (then version names the version the data is under);
        key_pair: a key pair's private key, not an AES key."""
        purpose = keys_pb2.FETCH_PURPOSE_DECRYPT if decrypt else keys_pb2.FETCH_PURPOSE_ENCRYPT
        request = keys_pb2.FetchKeyRequest(name=name, version=version, purpose=purpose, key_pair=key_pair)
        return cast(keys_pb2.FetchKeyResponse, self._call(lambda e: e.keys.FetchKey, request))

    def get_public_key(self, name: str, version: int) -> keys_pb2.GetPublicKeyResponse:
        request = keys_pb2.GetPublicKeyRequest(name=name, version=version)
        return cast(keys_pb2.GetPublicKeyResponse, self._call(lambda e: e.keys.GetPublicKey, request))

    def check_certificate(self, serial: str) -> revocation_pb2.CheckCertificateResponse:
        request = revocation_pb2.CheckCertificateRequest(serial=serial)
        return cast(
            revocation_pb2.CheckCertificateResponse,
            self._call(lambda e: e.revocation.CheckCertificate, request),
        )

    def renew(self, csr_der: bytes) -> identity_pb2.RenewResponse:
        request = identity_pb2.RenewRequest(csr_der=csr_der)
        return cast(identity_pb2.RenewResponse, self._call(lambda e: e.identity.Renew, request))
