"""Signals for operators: health and reflection, /metrics and /healthz, JSON logs, live certificate rotation."""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ServerProcess, WatchProcess, agent, agent_credentials, enroll

_SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_FOUND_CHECKS: list[int] = []  # how many Checks _check_standard_services expected NOT_FOUND for
AGENT_SERVICES = {
    "kms.v1.Identity",
    "kms.v1.Keys",
    "kms.v1.Revocation",
    "kms.v1.Handshake",
    "kms.v1.Enrollment",
}


def _reflection_v1(channel: grpc.Channel) -> tuple[set[str], list[str]]:
    """The services grpc.reflection.v1 lists, and the file it names for its own service.

    v1's messages are v1alpha's under another package, field for field: these are its bytes.
    """
    call = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    asked = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
    ]
    listed, own = [
        reflection_pb2.ServerReflectionResponse.FromString(raw)
        for raw in call(iter([r.SerializeToString() for r in asked]), timeout=10)
    ]
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in own.file_descriptor_response.file_descriptor_proto
    ]
    return {s.name for s in listed.list_services_response.service}, files


def _check_standard_services(channel: grpc.Channel) -> set[str]:
    """Reflection v1 and v1alpha agree; health answers Check for every listed service and Watch."""
    services, files = _reflection_v1(channel)
    assert services == set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"grpc.reflection.v1.ServerReflection", "grpc.health.v1.Health"} <= services
    assert files == ["grpc/reflection/v1/reflection.proto"]
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ["", *services]:  # every service this port serves, the standard ones too
        assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == _SERVING, (
            service
        )
    listed = stub.List(health_pb2.HealthListRequest(), timeout=10).statuses
    assert set(listed) == {"", *services} and all(s.status == _SERVING for s in listed.values())
    # And nothing else: not a service this port does not serve (another port's, or none).
    others = {"kms.v1.Nothing", "kms.v1.Admin", *AGENT_SERVICES} - services
    NOT_FOUND_CHECKS.append(len(others))
    for other in others:
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Check(health_pb2.HealthCheckRequest(service=other), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND, other
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="kms.v1.Enrollment"), timeout=10)
    assert next(watch).status == _SERVING  # a stream of statuses, not INTERNAL
    watch.cancel()
    return services


def _served_serial(address: str) -> int:
    host, port = address.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    return x509.load_der_x509_certificate(der).serial_number


def test_health_reflection_metrics_json_logs_and_live_rotation(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "d",
        extra_args=[
            "--http-listen", "127.0.0.1:0", "--log-format", "json", "--heartbeat", "1s",
            "--server-cert-ttl", "8s", "--renew-fraction", "0.5",
        ],
    ).start()  # fmt: skip
    NOT_FOUND_CHECKS.clear()
    try:
        ca = (server.data_dir / "ca.crt").read_bytes()
        with grpc.secure_channel(server.enroll_address, grpc.ssl_channel_credentials(ca)) as ch:
            services = _check_standard_services(ch)
        # The enrollment port lists what it serves: no agent service.
        assert {"kms.v1.Enrollment", "kms.v1.Revocation", "grpc.health.v1.Health"} <= services
        assert "kms.v1.Keys" not in services

        state = tmp_path / "a"
        assert enroll(server, state, server.token("metered", "web")).returncode == 0
        server.admin("key", "create", "m", "--grant", "group:web")
        assert agent(state, "fetch-key", "m").returncode == 0
        with grpc.secure_channel(server.address, agent_credentials(state)) as ch:
            services = _check_standard_services(ch)  # every service the mTLS port serves
        assert {"kms.v1.Identity", "kms.v1.Handshake", "kms.v1.Keys"} <= services
        watcher = WatchProcess(state)
        try:
            server.admin("key", "create", "w", "--grant", "group:web")
            server.admin("revoke", "key", "--yes", "w", "--version", "1")
            watcher.wait_for(lambda evs: any(e.get("key") == "w" for e in evs))

            http = server.fields["http-address"]
            assert urllib.request.urlopen(f"http://{http}/healthz", timeout=10).read() == b"ok\n"  # noqa: S310
            text = urllib.request.urlopen(f"http://{http}/metrics", timeout=10).read().decode()  # noqa: S310
            families = {f.name: f for f in text_string_to_metric_families(text)}
            for name in (
                "kms_rpc", "kms_rpc_seconds", "kms_enrollments", "kms_key_releases", "kms_revocations",
                "kms_watch_streams", "kms_watch_delivery_lag_seconds", "kms_certificates_expiring",
            ):  # fmt: skip
                assert name in families, (name, sorted(families))
            value = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in families.values()
                for s in f.samples
            }
            assert value[("kms_enrollments_total", ())] >= 1 and value[("kms_key_releases_total", ())] >= 1
            assert value[("kms_watch_streams", ())] == 1
            assert value[("kms_certificates_expiring", (("within", "24h"),))] == 1
            assert value[("kms_rpc_total", (("code", "OK"), ("method", "/kms.v1.Keys/FetchKey")))] >= 1
            # The code the client saw, not UNKNOWN; streams counted when they open and when they end.
            check = "/grpc.health.v1.Health/Check"
            assert value[("kms_rpc_total", (("code", "NOT_FOUND"), ("method", check)))] == sum(
                NOT_FOUND_CHECKS
            )
            for stream in (
                "/grpc.health.v1.Health/Watch",
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            ):
                assert value[("kms_rpc_started_total", (("method", stream),))] == 2, stream
                assert value[("kms_rpc_seconds_count", (("method", stream),))] >= 1, stream
            assert (
                value[
                    (
                        "kms_rpc_total",
                        (
                            ("code", "OK"),
                            ("method", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
                        ),
                    )
                ]
                == 2
            )
            assert value[("kms_rpc_started_total", (("method", "/kms.v1.Revocation/Watch"),))] >= 1
            assert value[("process_cpu_seconds_total", ())] > 0 and value[("process_open_fds", ())] > 0
            assert ("python_gc_collections_total", (("generation", "0"),)) in value

            # The server's certificate rotates under live connections.
            first = _served_serial(server.enroll_address)
            deadline = time.monotonic() + 20
            while _served_serial(server.enroll_address) == first and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _served_serial(server.enroll_address) != first
            server.admin("key", "create", "after", "--grant", "group:web")
            server.admin("revoke", "key", "--yes", "after", "--version", "1")
            # The watch stream opened before the rotation still works, and new calls too.
            watcher.wait_for(lambda evs: any(e.get("key") == "after" for e in evs))
            assert agent(state, "status").returncode == 0
        finally:
            assert watcher.stop() == 0
    finally:
        assert server.stop() == 0
    logs = [line for line in server.output().split("--- stderr ---")[1].splitlines() if line.strip()]
    parsed = [json.loads(line) for line in logs if line.startswith("{")]
    assert parsed and {"time", "level", "logger", "message"} <= set(parsed[0])
    assert any(p.get("message") == "server certificate rotated" for p in parsed)
