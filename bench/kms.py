"""A real kms-server for one scenario: started on a temp data dir, set up through its admin socket.

The server runs with its default durability settings (SQLite WAL,
synchronous=FULL). Only limits that exist to slow down one abusive peer are
raised, because every bench client connects from 127.0.0.1: the per-address
enrollment and failed-authentication rates, connections to the enrollment
port, open streams per agent, and key exchanges per agent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bench.pki import AgentKey, Identity
from bench.procs import BenchError, ServerProcess, exe
from kms.v1 import admin_pb2, admin_pb2_grpc, enrollment_pb2, enrollment_pb2_grpc

__all__ = ["BENCH_GROUP", "KMS_LIMIT_FLAGS", "KmsServer"]

BENCH_GROUP = "bench"

# The config bounds (server/config.py) are the ceiling for each.
KMS_LIMIT_FLAGS = (
    "--enroll-rate",
    "100000",
    "--auth-failure-rate",
    "100000",
    "--max-streams-per-identity",
    "10000",
    "--max-anonymous-connections-per-address",
    "100000",
    # Each bench identity runs dozens of exchanges a second (the server's throughput is measured).
    "--exchange-rate",
    "10000",
)


class KmsServer:
    """kms-server on root/data; ``extra_args`` are more ``kms-server run`` flags (e.g. --ca-key-type);
    ``code``, a directory of other server, kms and agent packages to run instead of this checkout's."""

    def __init__(
        self, root: Path, label: str = "kms-server", extra_args: Sequence[str] = (), code: Path | None = None
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "data"
        cmd = [
            exe("kms-server"),
            "run",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            "127.0.0.1:0",
            "--enroll-listen",
            "127.0.0.1:0",
            *KMS_LIMIT_FLAGS,
            # One process unless the scenario says otherwise (scaling, openbao): the server's
            # default, one worker per core, would change every ratio with the machine.
            *([] if "--workers" in extra_args else ["--workers", "1"]),
            *extra_args,
        ]
        # code: another revision's packages (bench/scenarios/ab.py), ahead of this checkout's.
        env = {"PYTHONPATH": str(code)} if code is not None else None
        self.process = ServerProcess(cmd, "kms-server ready ", label, root / "server.log", env)
        self._admin_channel: grpc.Channel | None = None
        self._enroll_channel: grpc.Channel | None = None
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()
        self.ca_pem = b""

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> KmsServer:
        self.process.start()
        try:
            self._admin_channel = grpc.secure_channel(
                f"unix:{self.process.fields['admin-socket']}",
                grpc.local_channel_credentials(grpc.LocalConnectionType.UDS),
            )
            self.admin: Any = admin_pb2_grpc.AdminStub(self._admin_channel)
            self.ca_pem = self.admin.GetCA(admin_pb2.GetCARequest(), timeout=30).certificate_pem.encode()
            self._enroll_channel = grpc.secure_channel(
                self.enroll_address, grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
            )
            self._enroll: Any = enrollment_pb2_grpc.EnrollmentStub(self._enroll_channel)
        except BaseException:
            self.process.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for channel in (self._admin_channel, self._enroll_channel):
            if channel is not None:
                channel.close()
        self.process.stop()

    @property
    def address(self) -> str:
        return self.process.fields["address"]

    @property
    def enroll_address(self) -> str:
        return self.process.fields["enroll-address"]

    @property
    def pid(self) -> int:
        return self.process.pid

    # --- set-up through the admin socket ------------------------------------------------

    def create_tokens(self, names: Sequence[str], groups: Sequence[str] = (BENCH_GROUP,)) -> list[str]:
        """One join token per name, made concurrently (each is its own durable write)."""

        def one(name: str) -> str:
            request = admin_pb2.CreateJoinTokenRequest(name=name, groups=list(groups), ttl_seconds=3600)
            return str(self.admin.CreateJoinToken(request, timeout=60).token)

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, names))

    def enroll(self, token: str, csr_der: bytes) -> bytes:
        """Enrolls over the enrollment listener; returns the certificate (PEM)."""
        request = enrollment_pb2.EnrollRequest(join_token=token, csr_der=csr_der)
        response = self._enroll.Enroll(request, timeout=60)
        cert = x509.load_der_x509_certificate(response.certificate_der)
        return cert.public_bytes(serialization.Encoding.PEM)

    def enroll_identities(self, keys: Sequence[AgentKey], prefix: str) -> list[Identity]:
        """Agents named prefix-0.. in the bench group, one per key."""
        tokens = self.create_tokens([f"{prefix}-{i}" for i in range(len(keys))])
        with ThreadPoolExecutor(4) as pool:
            certs = list(pool.map(self.enroll, tokens, [k.csr_der for k in keys]))
        return [Identity(k.key_pem, c) for k, c in zip(keys, certs, strict=True)]

    def create_key(
        self, name: str, grants: Sequence[str] = (f"group:{BENCH_GROUP}",), key_type: str = ""
    ) -> None:
        request = admin_pb2.CreateKeyRequest(name=name, grants=list(grants), key_type=key_type)
        info = self.admin.CreateKey(request, timeout=60)
        self._versions[name] = int(info.current_version)

    def revoke_key(self, name: str) -> tuple[int, float, float]:
        """Revokes the current version of a key (the server makes the next one current).

        Returns (event seq, monotonic time the call was made, monotonic time it
        returned): once it returned the revocation is durable and published.
        """
        with self._lock:
            version = self._versions[name]
            self._versions[name] = version + 1
        request = admin_pb2.RevokeKeyRequest(name=name, version=version, reason="keyCompromise")
        sent = time.monotonic()
        response = self.admin.RevokeKey(request, timeout=60)
        returned = time.monotonic()
        if response.already_revoked:
            raise BenchError(f"key {name} v{version} was already revoked: the bench lost count of versions")
        return int(response.event.seq), sent, returned

    def agents_enrolled(self) -> int:
        return len(self.admin.ListAgents(admin_pb2.ListAgentsRequest(), timeout=60).agents)
