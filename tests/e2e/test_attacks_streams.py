"""Adversarial stories for issue 15 (streams, exchanges, renewals, releases): items 3, 5, 6, 12 and 13.

Each test attacks as the review did and fails on the code before the fix.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kms.groups import Group
from kms.handshake import Hello, Initiator, LocalIdentity, PeerInfo
from kms.handshake_wire import to_frame
from kms.v1 import (
    handshake_pb2,
    handshake_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    revocation_pb2,
    revocation_pb2_grpc,
)
from tests.e2e.rig import Rig
from tests.harness import (
    ServerProcess,
    WatchProcess,
    agent,
    agent_credentials,
    assert_one_line_error,
    enroll,
    exe,
)

Frame = handshake_pb2.HandshakeFrame
ROOT = Path(__file__).resolve().parents[2]
# The relay, the exchange limits and the closing of streams live in the server's memory; the store
# plays no part in them beyond the revocation itself, which the first test runs on both backends.
_IN_MEMORY = pytest.mark.sqlite_only("in-memory relay, limits and stream closing: the store plays no part")


RIG = Rig(
    "kmsat",
    # A long handshake timeout: a stalled exchange must end because of the revocation, not the timeout.
    # Revoked agents' refused calls must not lock every agent on 127.0.0.1 out (item 2, not ours).
    ("--handshake-timeout", "60s", "--heartbeat", "1s", "--auth-failure-rate", "100000"),
)


def _enroll(server: ServerProcess, root: Path, name: str) -> Path:
    state = root / name
    result = enroll(server, state, server.token(name))
    assert result.returncode == 0, result.stderr
    return state


def _serial(state: Path) -> str:
    return format(x509.load_pem_x509_certificate((state / "agent.crt").read_bytes()).serial_number, "x")


def _local(state: Path) -> LocalIdentity:
    key = serialization.load_pem_private_key((state / "agent.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    cert = x509.load_pem_x509_certificate((state / "agent.crt").read_bytes())
    return LocalIdentity(key, (cert.public_bytes(serialization.Encoding.DER),))


def _anyone(chain: tuple[bytes, ...]) -> PeerInfo:
    raise AssertionError("these tests never get as far as checking the peer")


def hello(state: Path, responder: str, group: Group = Group.X25519) -> Hello:
    return Initiator(_local(state), _anyone, responder, group).start()


class RawStream:
    """A bidi or server stream opened with an agent's credentials, its ending timed by a thread."""

    def __init__(self, call: Any, out: queue.Queue[Frame | None] | None = None) -> None:
        self.call = call
        self.out = out
        self.received: list[Any] = []
        self.first = threading.Event()
        self.ended_at: float | None = None
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self._done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self.received.append(message)
                self.first.set()
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            self.code, self.details = exc.code(), exc.details() or ""
        self.ended_at = time.monotonic()
        self.first.set()
        self._done.set()

    def send(self, frame: Frame) -> None:
        assert self.out is not None
        self.out.put(frame)

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def close(self) -> None:
        if self.out is not None:
            self.out.put(None)
        self.call.cancel()


@dataclass
class Channel:
    channel: grpc.Channel
    handshake: Any
    revocation: Any

    def bidi(self, method: str) -> RawStream:
        out: queue.Queue[Frame | None] = queue.Queue()
        return RawStream(getattr(self.handshake, method)(iter(out.get, None)), out)

    def watch(self) -> RawStream:
        return RawStream(self.revocation.Watch(revocation_pb2.WatchRequest(after_seq=0)))


def channel(server: ServerProcess, state: Path) -> Channel:
    ch = grpc.secure_channel(server.address, agent_credentials(state))
    return Channel(ch, handshake_pb2_grpc.HandshakeStub(ch), revocation_pb2_grpc.RevocationStub(ch))


def _listening(ch: Channel) -> RawStream:
    stream = ch.bidi("Listen")
    stream.send(Frame(listen=handshake_pb2.ListenStart()))
    return stream


def _wait_until_listening(server: ServerProcess, state: Path, deadline: float = 20.0) -> None:
    """Waits until the agent's own Listen stream is registered: a second one is then refused."""
    ch = channel(server, state)
    try:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            probe = _listening(ch)
            probe.wait(0.3)
            probe.close()
            probe.wait(5)
            if "already listening" in probe.details:
                return
            time.sleep(0.1)
        raise AssertionError("the agent never started listening")
    finally:
        ch.channel.close()


def _revoke_timed(server: ServerProcess, *args: str) -> float:
    server.admin("revoke", *args)
    return time.monotonic()


def _popen(state: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [exe("kms-agent"), *args, "--dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


# --- item 3: every stream a revoked certificate holds closes, with UNAUTHENTICATED --------------


def test_watch_listen_and_exchange_streams_close_within_a_second_of_revocation(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    raw = _enroll(server, root, "raw")
    ch = channel(server, raw)
    try:
        watch = ch.watch()
        listen = _listening(ch)
        exchange = ch.bidi("Exchange")  # stalled after the server's answer: it waits for init_auth
        exchange.send(to_frame(hello(raw, "server")))
        assert exchange.first.wait(10) and exchange.code is None, exchange.details
        assert watch.first.wait(10) and watch.code is None, watch.details  # a heartbeat: it is open
        time.sleep(0.3)
        assert listen.code is None, listen.details

        revoked = _revoke_timed(server, "agent", "raw")
        for name, stream in (("Watch", watch), ("Listen", listen), ("Exchange", exchange)):
            assert stream.wait(5), f"the {name} stream of a revoked agent is still open after 5 s"
            assert stream.ended_at is not None
            took = stream.ended_at - revoked
            assert stream.code == grpc.StatusCode.UNAUTHENTICATED, (name, stream.code, stream.details)
            assert "was revoked" in stream.details, (name, stream.details)
            assert took < 1.0, f"the {name} stream closed {took:.2f} s after the revocation"
    finally:
        ch.channel.close()


@_IN_MEMORY
def test_revoked_agents_listen_watch_and_exchange_commands_exit_with_their_revoked_status(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    lis, wat, ini, bait = (_enroll(server, root, n) for n in ("lis", "wat", "ini", "bait"))
    # The initiator's exchange goes to a listener (this test) that never answers: it stays in progress.
    bait_ch = channel(server, bait)
    listener = _listening(bait_ch)
    procs: list[subprocess.Popen[str]] = []
    watcher = WatchProcess(wat)
    try:
        procs.append(_popen(lis, "listen"))
        _wait_until_listening(server, lis)
        procs.append(_popen(ini, "exchange", "--peer", "bait", "--handshake-timeout", "60"))
        assert listener.first.wait(20), "the exchange never reached the listener"

        for proc, state, how in (
            (procs[0], lis, ("agent", "lis")),
            (procs[1], ini, ("cert", _serial(ini))),
        ):
            revoked = _revoke_timed(server, *how)
            code = proc.wait(10)
            took = time.monotonic() - revoked
            err = proc.stderr.read() if proc.stderr else ""
            assert code == 11, f"{state.name} exited {code}: {err}"
            assert "was revoked" in err and "Traceback" not in err, err
            assert took < 3.0, f"{state.name} exited {took:.2f} s after its revocation"
        revoked = _revoke_timed(server, "agent", "wat")
        assert watcher.proc.wait(10) == 11
        assert time.monotonic() - revoked < 3.0
    finally:
        watcher.stop()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        listener.close()
        bait_ch.channel.close()


# --- item 13: probing names and revocations, and hijacking a listener ------------------------------


@_IN_MEMORY
def test_exchange_gives_one_answer_for_unknown_revoked_and_absent_agents(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    asker = _enroll(server, root, "asker")
    _enroll(server, root, "gone")
    _enroll(server, root, "idle")
    server.admin("revoke", "agent", "gone")
    ch = channel(server, asker)
    try:
        answers = {}
        for peer in ("nobody-here", "gone", "idle"):
            stream = ch.bidi("Exchange")
            stream.send(to_frame(hello(asker, peer)))
            assert stream.wait(10)
            answers[peer] = (stream.code, stream.details.replace(repr(peer), "NAME"))
        assert len(set(answers.values())) == 1, answers
        assert answers["idle"][0] == grpc.StatusCode.FAILED_PRECONDITION, answers
    finally:
        ch.channel.close()


@_IN_MEMORY
def test_bogus_exchanges_neither_use_up_listen_once_nor_evict_the_listener(
    rig: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    server, root = rig
    victim, mallory, friend = (_enroll(server, root, n) for n in ("victim", "mallory", "friend"))
    listener = _popen(victim, "listen", "--once", "--json", "--out-dir", str(tmp_path))
    ch = channel(server, mallory)
    try:
        # A bogus hello (a key share of the wrong size), sent until the listener is there to refuse it.
        bogus = dataclasses.replace(hello(mallory, "victim"), share=b"\x00" * 7)
        deadline = time.monotonic() + 20
        while True:
            refused = ch.bidi("Exchange")
            refused.send(to_frame(bogus))
            assert refused.wait(10)
            if "not listening" not in refused.details or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert refused.code == grpc.StatusCode.FAILED_PRECONDITION and "refused" in refused.details, (
            refused.details
        )
        # A well-formed hello, and the initiator walks away once the listener has answered.
        walked = ch.bidi("Exchange")
        walked.send(to_frame(hello(mallory, "victim")))
        assert walked.first.wait(10) and walked.code is None, walked.details
        walked.close()
        # One that stalls after the listener's answer holds it only briefly, and meanwhile the
        # same initiator cannot queue more attempts (it would keep the listener to itself).
        stalled = ch.bidi("Exchange")
        stalled.send(to_frame(hello(mallory, "victim")))
        assert stalled.first.wait(10) and stalled.code is None, stalled.details
        again = ch.bidi("Exchange")
        again.send(to_frame(hello(mallory, "victim")))
        assert again.wait(10)
        assert (
            again.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            and "already waiting or under way" in again.details
        )
        assert stalled.wait(10) and stalled.code == grpc.StatusCode.DEADLINE_EXCEEDED, stalled.details
        # The listener is still there, and its one exchange is still to come: the first try works.
        result = subprocess.run(
            [exe("kms-agent"), "exchange", "--peer", "victim", "--json", "--dir", str(friend)],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr
        out, err = listener.communicate(timeout=20)
        assert listener.returncode == 0, err
        assert json.loads(out)["peer"] == "friend"
        assert err.count("exchange failed") == 3 and "Traceback" not in err, err
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(10)
        ch.channel.close()


# --- item 5: an exchange flood from one agent -------------------------------------------------------


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def whoami_under_exchange_flood(
    server: ServerProcess, flooder: Path, quiet: Path, seconds: float, lanes: int = 8
) -> tuple[list[float], dict[str, Any]]:
    """Another agent's WhoAmI latencies (s) while flooder replays one ffdhe3072 Hello; the flood's outcome."""
    hello_file = flooder / "hello.bin"
    hello_file.write_bytes(to_frame(hello(flooder, "server", Group.FFDHE3072)).SerializeToString())
    ch = grpc.secure_channel(server.address, agent_credentials(quiet))
    stub = identity_pb2_grpc.IdentityStub(ch)
    request = identity_pb2.WhoAmIRequest()
    try:
        for _ in range(20):  # warm: connection, caches
            stub.WhoAmI(request, timeout=10)
        attacker = subprocess.Popen(
            [sys.executable, "-m", "tests.flood", "exchange", server.address, str(flooder), str(hello_file)]
            + [str(seconds), str(lanes)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # the flood is under way
        latencies: list[float] = []
        while attacker.poll() is None:
            began = time.perf_counter()
            stub.WhoAmI(request, timeout=10)
            latencies.append(time.perf_counter() - began)
            time.sleep(0.005)
        out, err = attacker.communicate(timeout=30)
        assert attacker.returncode == 0, err
        return latencies, json.loads(out)
    finally:
        ch.close()


@_IN_MEMORY
def test_an_exchange_flood_is_limited_and_does_not_stall_other_agents(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    flooder, quiet = _enroll(server, root, "flooder"), _enroll(server, root, "quiet")
    seconds = 3.0
    p99s: list[float] = []
    # Up to three floods: a busy machine (the rest of the suite) can delay this test's own calls
    # past 50 ms now and then, whatever the server does; an event loop that really stalls (DH on
    # the loop: p99 0.4-0.9 s) fails every one of them.
    for _ in range(3):
        latencies, flood = whoami_under_exchange_flood(server, flooder, quiet, seconds)
        counts, examples = flood["counts"], flood["examples"]
        # At most --exchange-rate (10) a second, after a burst of as many: the rest are refused with a hint.
        assert counts.get("ok", 0) <= 10 * (seconds + 1) + 10, flood
        assert counts.get("RESOURCE_EXHAUSTED", 0) > 0 and "retry in" in examples["RESOURCE_EXHAUSTED"], flood
        assert len(latencies) > 50
        p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
        print(
            f"WhoAmI under the flood: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over {len(latencies)} calls"
        )
        p99s.append(p99)
        if p99 < 0.050:
            break
    assert min(p99s) < 0.050, (
        f"another agent's WhoAmI p99 was {[round(p * 1000) for p in p99s]} ms under exchange floods"
    )


# --- item 6: a stolen certificate, renewed, against its revocation -----------------------------------


def test_a_stolen_certificate_does_not_survive_its_revocation_through_renewal(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "d", extra_args=["--max-streams-per-identity", "2"]).start()
    channels: list[grpc.Channel] = []
    watcher: WatchProcess | None = None
    try:
        owner, observer = _enroll(server, tmp_path, "owner"), _enroll(server, tmp_path, "observer")
        thief = tmp_path / "thief"
        shutil.copytree(owner, thief)  # the stolen key and certificate
        stolen = _serial(owner)
        watcher = WatchProcess(observer)

        # Renewal is limited per agent: one, then none for a while, whoever asks.
        assert agent(thief, "renew").returncode == 0
        renewed = _serial(thief)
        assert_one_line_error(agent(thief, "renew"), 7, "renews at most once", "retry in")
        assert_one_line_error(agent(owner, "renew"), 7, "renews at most once", "retry in")

        # Open streams count per agent: the owner's two leave none for the thief's certificates.
        owner_ch = grpc.secure_channel(server.address, agent_credentials(owner))
        thief_ch = grpc.secure_channel(server.address, agent_credentials(thief))
        channels += [owner_ch, thief_ch]
        held = [
            RawStream(revocation_pb2_grpc.RevocationStub(owner_ch).Watch(revocation_pb2.WatchRequest()))
            for _ in (1, 2)
        ]
        for stream in held:
            assert stream.first.wait(10) and stream.code is None, stream.details
        extra = RawStream(revocation_pb2_grpc.RevocationStub(thief_ch).Watch(revocation_pb2.WatchRequest()))
        assert extra.wait(10) and extra.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (
            extra.code,
            extra.details,
        )
        for stream in held:
            stream.close()

        # keyCompromise of the stolen certificate reaches everything renewed from it.
        # (At any depth: tests/unit/server/test_store*.py.) Every watcher hears of each certificate.
        done = json.loads(
            server.admin("revoke", "cert", stolen, "--reason", "keyCompromise", "--json").stdout
        )
        assert done["serial"] == stolen and not done["already_revoked"]
        assert [e["serial"] for e in done["cascaded"]] == [renewed]
        assert_one_line_error(agent(thief, "status"), 11, "was revoked")
        watcher.wait_for(lambda events: {renewed, stolen} <= {e.get("serial") for e in events})
    finally:
        if watcher is not None:
            watcher.stop()
        for ch in channels:
            ch.close()
        assert server.stop() == 0


# --- item 12: key releases in flight while the agent is revoked -------------------------------------


def test_no_key_release_is_recorded_after_the_revocation_of_its_caller(
    rig: tuple[ServerProcess, Path],
) -> None:
    """Three agents fetch a key flat out; each is revoked meanwhile. No release of theirs may be
    recorded after their revocation (in the review: after 12 of 20 revocations)."""
    server, root = rig
    server.admin("key", "create", "app", "--grant", "group:fetchers")
    names = [f"fetcher-{trial}" for trial in range(3)]
    for name in names:
        assert enroll(server, root / name, server.token(name, "fetchers")).returncode == 0
    stop = root / "stop-fetching"
    floods = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.flood",
                "fetch-key",
                server.address,
                str(root / name),
                "app",
                "30",
                "24",
            ]
            + [str(stop)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for name in names
    ]
    time.sleep(1.0)  # releases under way
    revokes = [
        subprocess.Popen(
            [exe("kms-server"), "revoke", "agent", name, "--data-dir", str(server.data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for name in names
    ]
    for revoke in revokes:
        assert revoke.wait(60) == 0, revoke.communicate()[1]
    time.sleep(0.5)  # releases still under way after the revocations: they must all be refused
    stop.touch()
    outcomes = []
    for flood in floods:
        out, err = flood.communicate(timeout=60)
        assert flood.returncode == 0, err
        outcomes.append(json.loads(out)["counts"])
    records = json.loads(server.admin("audit", "list", "--json").stdout)
    late = {}
    for name in names:
        revoked = next(
            r["seq"] for r in records if r["action"] == "revoke.agent" and f"agent:{name} " in r["object"]
        )
        late[name] = sum(
            1
            for r in records
            if r["action"] == "key.release" and r["actor"].startswith(f"agent:{name}/") and r["seq"] > revoked
        )
    assert late == dict.fromkeys(names, 0), f"releases recorded after each agent's revocation: {late}"
    # Each flood was refused once its agent was revoked, having been served until then.
    assert all(o.get("ok", 0) > 0 and o.get("UNAUTHENTICATED", 0) > 0 for o in outcomes), outcomes
