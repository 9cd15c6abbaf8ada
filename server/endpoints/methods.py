"""The method table: every RPC any of our gRPC servers serves, and the facts the middlewares need of it.

One row per full method name: who may call it (its role), whether it is a
long-lived server stream (counted against its agent's open streams), the
extra address budget its failed anonymous attempts draw on, and the counter
an OK answer increments. Its RPC metrics are labelled with the full method
name. The middlewares (server/endpoints/middleware.py) read these facts here
and nowhere else; a method without a row is refused (STYLE 10), and a test
builds every server and fails when one registers a method without a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["ANONYMOUS_METHODS", "METHODS", "Budget", "Counter", "Listener", "Method", "Role"]


class Role(Enum):
    ANYONE = "anyone"  # no client certificate needed (enrollment, CA download)
    AGENT = "agent"  # a valid, known agent certificate (mTLS)
    ADMIN = "admin"  # the local admin socket


class Listener(Enum):
    API = "api"  # the mTLS port
    ENROLL = "enroll"  # the enrollment port: anonymous callers only (Role.ANYONE methods)
    ADMIN = "admin"  # the UNIX admin socket


class Budget(Enum):
    """An address budget that failed anonymous attempts at a method draw on, besides the refused-token one."""

    ENROLLMENTS = "enrollments"  # failed enrollments per address (--enroll-rate)


class Counter(Enum):
    """The counter an OK answer increments (server/ops/metrics.py)."""

    ENROLLMENTS = "kms_enrollments_total"
    KEY_RELEASES = "kms_key_releases_total"


@dataclass(frozen=True)
class Method:
    role: Role
    # A server stream, open for long: each one an agent holds counts against its bound
    # (--max-streams-per-identity), and a revocation closes it.
    streams: bool = False
    budget: Budget | None = None
    counter: Counter | None = None


_ANYONE = Method(Role.ANYONE)
_ANYONE_STREAM = Method(Role.ANYONE, streams=True)
_AGENT = Method(Role.AGENT)
_AGENT_STREAM = Method(Role.AGENT, streams=True)
_ADMIN = Method(Role.ADMIN)

METHODS: dict[str, Method] = {
    "/kms.v1.Enrollment/GetCABundle": _ANYONE,
    "/kms.v1.Enrollment/Enroll": Method(Role.ANYONE, budget=Budget.ENROLLMENTS, counter=Counter.ENROLLMENTS),
    "/kms.v1.Identity/WhoAmI": _AGENT,
    "/kms.v1.Identity/Renew": Method(Role.AGENT, counter=Counter.ENROLLMENTS),
    "/kms.v1.Admin/CreateJoinToken": _ADMIN,
    "/kms.v1.Admin/GetCA": _ADMIN,
    "/kms.v1.Admin/ListAgents": _ADMIN,
    "/kms.v1.Admin/CreateKey": _ADMIN,
    "/kms.v1.Admin/RotateKey": _ADMIN,
    "/kms.v1.Admin/GrantKey": _ADMIN,
    "/kms.v1.Admin/UngrantKey": _ADMIN,
    "/kms.v1.Admin/ListKeys": _ADMIN,
    "/kms.v1.Admin/DestroyKeyVersion": _ADMIN,
    "/kms.v1.Admin/DisableKey": _ADMIN,
    "/kms.v1.Admin/EnableKey": _ADMIN,
    "/kms.v1.Keys/FetchKey": Method(Role.AGENT, counter=Counter.KEY_RELEASES),
    "/kms.v1.Keys/GetPublicKey": _AGENT,
    "/kms.v1.Keys/ListGrantedKeys": _AGENT,
    "/kms.v1.Admin/RevokeCertificate": _ADMIN,
    "/kms.v1.Admin/RevokeAgent": _ADMIN,
    "/kms.v1.Admin/RevokeKey": _ADMIN,
    "/kms.v1.Admin/ListRevocations": _ADMIN,
    "/kms.v1.Admin/ReleaseCertificate": _ADMIN,
    "/kms.v1.Admin/ReleaseAgent": _ADMIN,
    "/kms.v1.Admin/ListAudit": _ADMIN,
    "/kms.v1.Admin/VerifyAudit": _ADMIN,
    "/kms.v1.Admin/Backup": _ADMIN,
    "/kms.v1.Admin/SetKey": _ADMIN,
    "/kms.v1.Admin/GetKey": _ADMIN,
    "/kms.v1.Admin/RotateCA": _ADMIN,
    "/kms.v1.Admin/ListCAs": _ADMIN,
    "/kms.v1.Admin/ActivateCA": _ADMIN,
    "/kms.v1.Admin/CancelCARotation": _ADMIN,
    "/kms.v1.Monitor/Observe": Method(Role.ADMIN, streams=True),
    "/kms.v1.Monitor/GetStanding": _ADMIN,
    "/kms.v1.Revocation/Watch": _AGENT_STREAM,
    "/kms.v1.Revocation/GetCRL": _ANYONE,
    "/kms.v1.Revocation/CheckCertificate": _AGENT,
    "/kms.v1.Handshake/Exchange": _AGENT_STREAM,
    "/kms.v1.Handshake/Listen": _AGENT_STREAM,
    # Standard services for load balancers and tools: public, like the CA bundle.
    "/grpc.health.v1.Health/Check": _ANYONE,
    "/grpc.health.v1.Health/List": _ANYONE,
    "/grpc.health.v1.Health/Watch": _ANYONE_STREAM,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _ANYONE_STREAM,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _ANYONE_STREAM,
}

# The methods anybody may call: all the enrollment port serves.
ANONYMOUS_METHODS = frozenset(name for name, method in METHODS.items() if method.role is Role.ANYONE)
