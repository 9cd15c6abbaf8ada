"""Story: two worker processes on the same ports (`kms-server run --workers 2`), and what must hold across them.

Connections are put on each worker deterministically (tests/workers.py reads which worker
accepted each from /proc): a revocation is refused on every worker before the call that made it
returns and closes the streams on every worker within a second; watchers on either worker get
every event in order and resume exactly on the other; a worker that cannot confirm a revocation
is killed and replaced (fail closed), as is one that dies; a join token raced through both is
used once, and the audit chain both write stays one chain; the workers end with their supervisor.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kms.v1 import (
    admin_pb2,
    enrollment_pb2,
    enrollment_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    revocation_pb2,
    revocation_pb2_grpc,
)
from tests.e2e.raw_streams import RawStream
from tests.e2e.rig import Rig
from tests.harness import ServerProcess, agent_credentials, enroll, short_tmpdir, snapshot
from tests.pki import csr_der
from tests.workers import channel_on_each_worker, worker_pids

RIG = Rig("kmswk", ("--workers", "2", "--key-schedule-poll", "1h"), agents=(("a", ("web",)), ("b", ("web",))))


def _who(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        identity_pb2_grpc.IdentityStub(channel).WhoAmI(identity_pb2.WhoAmIRequest(), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _watch(channel: grpc.Channel, after: int = 0) -> RawStream:
    return RawStream(
        revocation_pb2_grpc.RevocationStub(channel).Watch(revocation_pb2.WatchRequest(after_seq=after))
    )


def _event_seqs(stream: RawStream) -> list[int]:
    return [m.event.seq for m in list(stream.received) if m.WhichOneof("item") == "event"]


def _until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_each_workers_log_lines_say_which_worker_wrote_them(rig: tuple[ServerProcess, Path]) -> None:
    server, _ = rig
    serving = [line for line in server.output().splitlines() if "worker serving" in line]
    assert {line.split(" worker=")[1].split()[0] for line in serving} >= {"0", "1"}, serving
    # Every line of the workers', not just their own: the store's, say, from the same process.
    primary = [line for line in server.output().splitlines() if line.endswith(" worker=0")]
    assert len(primary) >= 2, server.output()


def test_a_revocation_is_refused_on_every_worker_before_revoke_returns(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    channels = channel_on_each_worker(server, agent_credentials(root / "a"), 2)
    streams = [_watch(ch) for ch in channels.values()]
    try:
        for stream in streams:
            _until(lambda s=stream: any(m.WhichOneof("item") != "event" for m in s.received) or s.ended_at)
        server.stub.RevokeAgent(admin_pb2.RevokeAgentRequest(name="a", reason="keyCompromise"), timeout=30)
        returned = time.monotonic()
        # Refused on both workers at once: no retry, no wait.
        assert [_who(ch) for ch in channels.values()] == [grpc.StatusCode.UNAUTHENTICATED] * 2
        for stream in streams:  # and the open streams on both end within a second
            assert stream.wait(2.0)
            assert stream.code == grpc.StatusCode.UNAUTHENTICATED, stream.details
            assert stream.ended_at is not None and stream.ended_at - returned < 1.0
    finally:
        for stream in streams:
            stream.close()
        for ch in channels.values():
            ch.close()


def test_a_revocation_committed_through_the_other_worker_is_refused_everywhere_when_it_returns(
    rig: tuple[ServerProcess, Path], rsa_key: rsa.RSAPrivateKey
) -> None:
    """A --replace enrollment on the non-primary worker revokes the certificate it replaces."""
    server, root = rig
    enroll(server, root / "d", server.token("d", "web"))
    agents = channel_on_each_worker(server, agent_credentials(root / "d"), 2)
    ca = grpc.ssl_channel_credentials((root / "d" / "ca.crt").read_bytes())
    enrollment = channel_on_each_worker(server, ca, 2, enrollment=True)
    other = worker_pids(server, 2)[1]
    try:
        request = admin_pb2.CreateJoinTokenRequest(name="d", groups=["web"], replace=True)
        token = server.stub.CreateJoinToken(request, timeout=30).token
        enrollment_pb2_grpc.EnrollmentStub(enrollment[other]).Enroll(
            enrollment_pb2.EnrollRequest(join_token=token, csr_der=csr_der(rsa_key)), timeout=15
        )
        # The replaced certificate, the moment the enrollment answered: refused on both workers.
        assert [_who(ch) for ch in agents.values()] == [grpc.StatusCode.UNAUTHENTICATED] * 2
    finally:
        for ch in [*agents.values(), *enrollment.values()]:
            ch.close()


def test_watchers_on_both_workers_get_every_event_and_resume_on_the_other(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    channels = list(channel_on_each_worker(server, agent_credentials(root / "b"), 2).values())
    server.stub.CreateKey(admin_pb2.CreateKeyRequest(name="wk", grants=["group:web"]), timeout=30)
    for _ in range(3):
        server.stub.RotateKey(admin_pb2.RotateKeyRequest(name="wk"), timeout=30)
    streams = [_watch(ch) for ch in channels]
    try:
        made = []
        for version in (1, 2, 3):  # each revocation on the primary, heard on both workers
            done = server.stub.RevokeKey(admin_pb2.RevokeKeyRequest(name="wk", version=version), timeout=30)
            made.append(done.event.seq)
        for stream in streams:
            _until(lambda s=stream: set(made) <= set(_event_seqs(s)))
            seqs = _event_seqs(stream)
            assert seqs == sorted(set(seqs)), seqs  # in order, each once
        # A reconnect that lands on the other worker resumes exactly after what the first one read.
        for first, other in ((0, 1), (1, 0)):
            resumed = _watch(channels[other], after=made[0])
            try:
                _until(lambda r=resumed: set(made[1:]) <= set(_event_seqs(r)))
                assert _event_seqs(resumed)[:2] == made[1:]
            finally:
                resumed.close()
    finally:
        for stream in streams:
            stream.close()
        for ch in channels:
            ch.close()


def test_a_worker_that_cannot_confirm_is_replaced_and_a_dead_one_restarted(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    enroll(server, root / "c", server.token("c", "web"))
    channels = channel_on_each_worker(server, agent_credentials(root / "c"), 2)
    primary, other = worker_pids(server, 2)
    for ch in channels.values():
        ch.close()
    os.kill(other, signal.SIGSTOP)  # it can apply nothing now
    started = time.monotonic()
    server.stub.RevokeAgent(admin_pb2.RevokeAgentRequest(name="c"), timeout=30)
    took = time.monotonic() - started
    assert 0.8 < took < 10, took  # waited for the bound, then went on without it
    _until(
        lambda: other not in worker_pids(server, 2, timeout=0) and len(worker_pids(server, 2, timeout=0)) == 2
    )
    replaced = worker_pids(server, 2)
    assert primary in replaced and other not in replaced
    assert "did not apply event" in server.output()
    # The new worker serves, and refuses c like the other one.
    fresh = channel_on_each_worker(server, agent_credentials(root / "b"), 2)
    for ch in fresh.values():
        ch.close()
    revoked = grpc.secure_channel(server.address, agent_credentials(root / "c"))
    assert _who(revoked) == grpc.StatusCode.UNAUTHENTICATED
    revoked.close()
    # A worker that dies is started again.
    os.kill(replaced[1], signal.SIGKILL)
    _until(
        lambda: (
            len(worker_pids(server, 2, timeout=0)) == 2
            and replaced[1] not in worker_pids(server, 2, timeout=0)
        )
    )
    _until(lambda: server.output().count("worker serving") >= 4)
    again = channel_on_each_worker(server, agent_credentials(root / "b"), 2)
    for ch in again.values():
        ch.close()


def test_one_token_raced_through_both_workers_is_used_once_and_the_audit_chain_holds(
    rig: tuple[ServerProcess, Path], rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    server, root = rig
    ca = grpc.ssl_channel_credentials((root / "a" / "ca.crt").read_bytes())
    channels = list(channel_on_each_worker(server, ca, 2, enrollment=True).values())
    csrs = (csr_der(rsa_key), csr_der(other_rsa_key))
    try:
        for round_ in range(4):  # each round: one token, one racer on each worker at once
            name = f"racer-{round_}"
            token = server.token(name)
            barrier = threading.Barrier(2)
            outcomes: list[str] = []

            def race(i: int, token: str = token) -> None:
                barrier.wait()
                request = enrollment_pb2.EnrollRequest(join_token=token, csr_der=csrs[i])
                try:
                    enrollment_pb2_grpc.EnrollmentStub(channels[i]).Enroll(request, timeout=15)
                    outcomes.append("ok")
                except grpc.RpcError as exc:
                    outcomes.append(exc.code().name)

            racers = [threading.Thread(target=race, args=(i,)) for i in (0, 1)]
            for racer in racers:
                racer.start()
            for racer in racers:
                racer.join(30)
            assert sorted(outcomes) == ["UNAUTHENTICATED", "ok"], outcomes
            assert sum(1 for r in snapshot(server)["certificates"] if r[1] == name) == 1
    finally:
        for ch in channels:
            ch.close()
    # Both workers wrote the audit chain all along, each in its own batches: it is one chain.
    verified = server.admin("audit", "verify")
    assert verified.returncode == 0, verified.stderr


@pytest.mark.sqlite_only("the supervisor's life line does not depend on the store")
def test_workers_stop_with_their_supervisor() -> None:
    root = short_tmpdir("kmswk")
    server = ServerProcess(root / "d", workers=2).start()
    try:
        pids = worker_pids(server, 2)
        assert len(pids) == 2
        assert server.proc is not None
        server.proc.kill()  # no SIGTERM to forward: the workers see their supervisor's socket close
        server.proc.wait(10)
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in pids):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            time.sleep(0.1)
    finally:
        server.kill()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"
