"""Adversarial stories for issue 15, streams and exchanges: items 3 and 13.

Each test attacks as the review did and fails on the code before the fix. Floods,
stolen certificates and releases in flight (items 5, 6, 12): test_attacks_floods.py.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path

import grpc

from kms.handshake_wire import to_frame
from kms.v1 import handshake_pb2
from tests.e2e.raw_streams import (
    ATTACK_RIG,
    IN_MEMORY,
    Channel,
    Frame,
    RawStream,
    channel,
    enrolled,
    hello,
    serial_of,
)
from tests.harness import ServerProcess, WatchProcess, exe

RIG = ATTACK_RIG


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
    server.admin("revoke", *args, "--yes")
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
    raw = enrolled(server, root, "raw")
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


@IN_MEMORY
def test_revoked_agents_listen_watch_and_exchange_commands_exit_with_their_revoked_status(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    lis, wat, ini, bait = (enrolled(server, root, n) for n in ("lis", "wat", "ini", "bait"))
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
            (procs[1], ini, ("cert", serial_of(ini))),
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


@IN_MEMORY
def test_exchange_gives_one_answer_for_unknown_revoked_and_absent_agents(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    asker = enrolled(server, root, "asker")
    enrolled(server, root, "gone")
    enrolled(server, root, "idle")
    server.admin("revoke", "agent", "--yes", "gone")
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


@IN_MEMORY
def test_bogus_exchanges_neither_use_up_listen_once_nor_evict_the_listener(
    rig: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    server, root = rig
    victim, mallory, friend = (enrolled(server, root, n) for n in ("victim", "mallory", "friend"))
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
