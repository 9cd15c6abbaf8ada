"""Limits: enrollment attempts and failed authentications per address, open streams per identity."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kms.v1 import enrollment_pb2, enrollment_pb2_grpc, revocation_pb2, revocation_pb2_grpc
from tests.harness import ServerProcess, agent_credentials, enroll


def _enroll_raw(server: ServerProcess, token: str) -> grpc.StatusCode:
    ca = (server.data_dir / "ca.crt").read_bytes()
    with grpc.secure_channel(server.enroll_address, grpc.ssl_channel_credentials(ca)) as ch:
        try:
            enrollment_pb2_grpc.EnrollmentStub(ch).Enroll(
                enrollment_pb2.EnrollRequest(join_token=token, csr_der=b"x"), timeout=10
            )
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_enrollment_attempts_are_rate_limited(tmp_path: Path, rsa_key) -> None:  # type: ignore[no-untyped-def]
    from tests.pki import csr_der

    server = ServerProcess(tmp_path / "d", extra_args=["--enroll-rate", "3"]).start()
    try:
        codes = [_enroll_raw(server, "not-a-token") for _ in range(5)]
        assert codes[:3] == [grpc.StatusCode.INVALID_ARGUMENT] * 3
        assert codes[3:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        # The budget is for failed attempts only: a valid token is neither refused nor counted.
        ca = (server.data_dir / "ca.crt").read_bytes()
        with grpc.secure_channel(server.enroll_address, grpc.ssl_channel_credentials(ca)) as ch:
            stub = enrollment_pb2_grpc.EnrollmentStub(ch)
            for name in ("one", "two", "three", "four"):
                request = enrollment_pb2.EnrollRequest(
                    join_token=server.token(name), csr_der=csr_der(rsa_key)
                )
                assert stub.Enroll(request, timeout=10).name == name
    finally:
        assert server.stop() == 0


def test_failed_authentications_are_rate_limited(tmp_path: Path, rsa_key) -> None:  # type: ignore[no-untyped-def]
    from tests.pki import csr_der

    server = ServerProcess(tmp_path / "d", extra_args=["--auth-failure-rate", "3"]).start()
    ca = (server.data_dir / "ca.crt").read_bytes()
    bad = enrollment_pb2.EnrollRequest(join_token="0123456789abcdef." + "A" * 43, csr_der=csr_der(rsa_key))
    try:
        with grpc.secure_channel(server.enroll_address, grpc.ssl_channel_credentials(ca)) as ch:
            stub = enrollment_pb2_grpc.EnrollmentStub(ch)
            codes, details = [], []
            for _ in range(5):
                with pytest.raises(grpc.RpcError) as info:
                    stub.Enroll(bad, timeout=10)
                codes.append(info.value.code())
                details.append(info.value.details() or "")
            assert codes[:3] == [grpc.StatusCode.UNAUTHENTICATED] * 3
            # Over the budget, bad tokens are answered cheaply, with a retry hint.
            assert codes[3:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
            assert "retry in" in details[-1]
            # A valid token from the same address still enrolls: join tokens are 256-bit
            # one-time secrets, so refusing one protects nothing, and would let anybody
            # behind the same NAT lock everybody else out.
            good = server.token("late")
            resp = stub.Enroll(
                enrollment_pb2.EnrollRequest(join_token=good, csr_der=csr_der(rsa_key)), timeout=10
            )
            assert resp.name == "late"
            with pytest.raises(grpc.RpcError) as info:
                stub.Enroll(bad, timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        assert server.stop() == 0


def test_open_streams_per_identity_are_bounded(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "d", extra_args=["--max-streams-per-identity", "2", "--heartbeat", "1s"]
    ).start()
    try:
        state = tmp_path / "a"
        assert enroll(server, state, server.token("streamer")).returncode == 0
        creds = agent_credentials(state)
        with grpc.secure_channel(server.address, creds) as ch:
            stub = revocation_pb2_grpc.RevocationStub(ch)
            open_calls = [stub.Watch(revocation_pb2.WatchRequest(after_seq=0)) for _ in range(2)]
            for call in open_calls:
                next(call)  # a heartbeat: the stream is open
            third = stub.Watch(revocation_pb2.WatchRequest(after_seq=0))
            with pytest.raises(grpc.RpcError) as info:
                next(third)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for call in open_calls:
                call.cancel()
        # Standard streams count too: health watches cannot pile up past the bound either.
        # (Another agent: the cancelled streams above close on the server a moment later.)
        assert enroll(server, tmp_path / "b", server.token("watcher")).returncode == 0
        with grpc.secure_channel(server.address, agent_credentials(tmp_path / "b")) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            watches = [health.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(2)]
            for call in watches:
                next(call)  # SERVING: the stream is open
            with pytest.raises(grpc.RpcError) as info:
                next(health.Watch(health_pb2.HealthCheckRequest(service="")))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for call in watches:
                call.cancel()
    finally:
        assert server.stop() == 0
