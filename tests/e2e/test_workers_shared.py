"""Story: with `--workers 2`, what the workers share holds as in one process (issue 20 §1).

Each test puts connections on both workers, checked in /proc (tests/workers.py):
an agent's stream cap counts its streams on both, and frees up on both once they close or its
certificate is revoked; an address over its failure budget on one
worker is refused on the other; /metrics counts the calls of both; and `top` (the Monitor
service, on the primary's admin socket) sees a stream, and an enrollment, on the other worker.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kms.v1 import (
    admin_pb2,
    enrollment_pb2,
    enrollment_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    revocation_pb2,
    revocation_pb2_grpc,
)
from tests.harness import ServerProcess, admin_stub, agent_credentials, enroll, short_tmpdir
from tests.workers import held, on_worker, worker_pids

_ONE_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # each channel its own TCP connection
_BAD_TOKEN = "0123456789abcdef." + "A" * 43


@pytest.fixture(scope="module")
def server(backend: str) -> Iterator[ServerProcess]:
    root = short_tmpdir("kmsshare")
    args = ["--max-streams-per-identity", "2", "--auth-failure-rate", "3", "--heartbeat", "1s"]
    args += ["--max-anonymous-connections-per-address", "4", "--tls-handshake-timeout", "30s"]
    started = ServerProcess(root / "d", extra_args=[*args, "--http-listen", "127.0.0.1:0"], workers=2)
    started.start()
    try:
        for name in ("capped", "roamer"):
            assert enroll(started, root / name, started.token(name)).returncode == 0
        yield started
    finally:
        assert started.stop() == 0


def _root(server: ServerProcess) -> Path:
    return server.data_dir.parent


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _workers(server: ServerProcess) -> list[int]:
    """The workers' pids, the primary first (by the role each was started with)."""
    pids = worker_pids(server, 2)
    assert len(pids) == 2
    return pids


def _agent_channel(server: ServerProcess, name: str, worker: int) -> grpc.Channel:
    """A channel of agent name whose connection the worker (pid) holds."""
    assert server.proc is not None

    def open_one() -> grpc.Channel:
        channel = grpc.secure_channel(
            server.address, agent_credentials(_root(server) / name), options=_ONE_CONNECTION
        )
        grpc.channel_ready_future(channel).result(timeout=10)
        return channel

    return on_worker(server.proc.pid, _port(server.address), worker, open_one)


def _enroll_channel(server: ServerProcess, worker: int) -> grpc.Channel:
    assert server.proc is not None
    ca = grpc.ssl_channel_credentials((server.data_dir / "ca.crt").read_bytes())

    def open_one() -> grpc.Channel:
        channel = grpc.secure_channel(server.enroll_address, ca, options=_ONE_CONNECTION)
        grpc.channel_ready_future(channel).result(timeout=10)
        return channel

    return on_worker(server.proc.pid, _port(server.enroll_address), worker, open_one)


def _admin(server: ServerProcess) -> grpc.Channel:
    return grpc.secure_channel(
        f"unix:{server.data_dir / 'admin.sock'}", grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
    )


def _watch(channel: grpc.Channel) -> Any:
    call = revocation_pb2_grpc.RevocationStub(channel).Watch(revocation_pb2.WatchRequest(after_seq=0))
    next(call)  # a heartbeat: the stream is open
    return call


def _wait_open_streams(server: ServerProcess, name: str, count: int) -> None:
    """Until the primary counts count streams of name (the other worker's note arrived)."""
    with _admin(server) as channel:
        stub = monitor_pb2_grpc.MonitorStub(channel)
        deadline = time.monotonic() + 10
        while stub.GetStanding(monitor_pb2.GetStandingRequest(name=name), timeout=5).open_streams != count:
            assert time.monotonic() < deadline, f"the primary never counted {count} streams of {name}"
            time.sleep(0.02)


def _refused(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        next(call) if hasattr(call, "__next__") else call()
    return info.value.code()  # type: ignore[no-any-return]


def test_a_stream_cap_counts_the_streams_on_both_workers(server: ServerProcess) -> None:
    primary, other = _workers(server)
    channels = [_agent_channel(server, "capped", pid) for pid in (primary, other)]
    try:
        streams = [_watch(channel) for channel in channels]
        _wait_open_streams(server, "capped", 2)
        for channel in channels:  # the cap (2) is reached: a third is refused on either worker
            stub = revocation_pb2_grpc.RevocationStub(channel)
            assert (
                _refused(stub.Watch(revocation_pb2.WatchRequest(after_seq=0)))
                == grpc.StatusCode.RESOURCE_EXHAUSTED
            )
        for stream in streams:
            stream.cancel()
        _wait_open_streams(server, "capped", 0)
        # Closed on both: each worker counts the other's no more, and takes two again.
        streams = [_watch(channel) for channel in channels]
        _wait_open_streams(server, "capped", 2)
        cert = x509.load_pem_x509_certificate((_root(server) / "capped" / "agent.crt").read_bytes())
        request = admin_pb2.RevokeCertificateRequest(serial=format(cert.serial_number, "x"))
        admin_stub(server).RevokeCertificate(request, timeout=10)
        _wait_open_streams(server, "capped", 0)  # revoked: both streams closed, and uncounted
        for stream in streams:
            stream.cancel()
    finally:
        for channel in channels:
            channel.close()


def test_an_address_over_its_failure_budget_on_one_worker_is_refused_on_the_other(
    server: ServerProcess,
) -> None:
    primary, other = _workers(server)
    bad = enrollment_pb2.EnrollRequest(join_token=_BAD_TOKEN, csr_der=b"x")
    with _enroll_channel(server, primary) as first:
        stub = enrollment_pb2_grpc.EnrollmentStub(first)
        codes = [_refused(lambda: stub.Enroll(bad, timeout=10)) for _ in range(3)]
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3  # the budget (3 a minute) spent here
    with _enroll_channel(server, other) as second:
        stub = enrollment_pb2_grpc.EnrollmentStub(second)
        assert _refused(lambda: stub.Enroll(bad, timeout=10)) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_an_address_holds_its_anonymous_connections_on_both_workers_together(server: ServerProcess) -> None:
    assert server.proc is not None
    supervisor, port = server.proc.pid, _port(server.enroll_address)
    deadline = time.monotonic() + 10
    while any(held(supervisor, port).values()):  # the other tests' connections closed
        assert time.monotonic() < deadline
        time.sleep(0.05)
    kept: list[socket.socket] = []
    try:
        for pid in _workers(server) * 2:  # two on each: the address's cap (4) together
            kept.append(
                on_worker(supervisor, port, pid, lambda: socket.create_connection(("127.0.0.1", port)))
            )
        time.sleep(0.2)  # the notes cross: one loop turn, and the hub's relay
        for _ in range(3):  # whichever worker takes the next one closes it at once
            with socket.create_connection(("127.0.0.1", port)) as extra:
                extra.settimeout(5)
                with pytest.raises(ConnectionResetError):
                    assert extra.recv(1) == b"x"  # an admitted connection would wait for our bytes
    finally:
        for sock in kept:
            sock.close()


def _health_checks(text: str) -> float:
    pattern = (
        r'^kms_rpc_total\{(?=[^}]*code="OK")(?=[^}]*method="/grpc.health.v1.Health/Check")[^}]*\} (\S+)$'
    )
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def test_metrics_count_the_calls_of_both_workers(server: ServerProcess) -> None:
    url = f"http://{server.fields['http-address']}/metrics"
    before = _health_checks(urllib.request.urlopen(url, timeout=10).read().decode())
    for pid, calls in zip(_workers(server), (3, 2), strict=True):
        with _agent_channel(server, "roamer", pid) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(calls):
                stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    deadline = time.monotonic() + 5
    # The merged exposition is reused for a second (server/ops/metrics.py WHOLE_FRESH).
    while (
        counted := _health_checks(text := urllib.request.urlopen(url, timeout=10).read().decode())
    ) - before < 5:
        assert time.monotonic() < deadline, f"/metrics counted {counted - before} of the 5 calls"
        time.sleep(0.2)
    assert counted - before == 5
    assert re.search(r"^kms_watch_streams \S+$", text, re.M)  # one series, summed
    assert len(re.findall(r"^process_cpu_seconds_total ", text, re.M)) == 1


def _overview(server: ServerProcess, name: str) -> Any:
    request = monitor_pb2.ObserveRequest(filter=name, agent_limit=5, event_limit=20, interval_ms=1000)
    with _admin(server) as channel:
        call = monitor_pb2_grpc.MonitorStub(channel).Observe(iter([request]), timeout=10)
        overview = next(call)
        call.cancel()
        return overview


def test_top_sees_a_stream_and_an_enrollment_on_the_other_worker(server: ServerProcess, rsa_key: Any) -> None:
    from tests.pki import csr_der

    _, other = _workers(server)
    with _agent_channel(server, "roamer", other) as channel:
        stream = _watch(channel)
        _wait_open_streams(server, "roamer", 1)
        seen = _overview(server, "roamer")
        stream.cancel()
    assert seen.agents_online >= 1
    assert [(a.name, a.open_streams) for a in seen.agents] == [("roamer", 1)]
    # A certificate the other worker issues is in the primary's roster and journal at once
    # (the roster read the store at the first view, above, and not again for a minute).
    token = server.token("newcomer")
    with _enroll_channel(server, other) as channel:
        request = enrollment_pb2.EnrollRequest(join_token=token, csr_der=csr_der(rsa_key))
        assert enrollment_pb2_grpc.EnrollmentStub(channel).Enroll(request, timeout=10).name == "newcomer"
    deadline = time.monotonic() + 5
    while (view := _overview(server, "newcomer")).agents_matching != 1:
        assert time.monotonic() < deadline, "the primary's roster never heard of the enrollment"
        time.sleep(0.05)
    assert [a.name for a in view.agents] == ["newcomer"]
    assert any(e.kind == "enroll" and e.subject == "agent newcomer" for e in view.events)
