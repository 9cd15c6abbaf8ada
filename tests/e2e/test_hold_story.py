"""Story: a certificate put on hold (RFC 5280 certificateHold) and released, as calls, watchers,
kms-agent run, the CRL and OCSP (through openssl) see it; and what cannot be released."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from kms.errors import REASON_KEY
from kms.v1 import revocation_pb2, revocation_pb2_grpc
from tests.e2e.rig import Rig
from tests.harness import (
    ServerProcess,
    WatchProcess,
    agent,
    agent_credentials,
    assert_one_line_error,
    exe,
    openssl_ocsp,
    run,
)

# The guarantees must hold across worker processes too (issue 20).
pytestmark = pytest.mark.every_worker_setting

RIG = Rig(
    "kmshold",
    ("--heartbeat", "1s", "--http-listen", "127.0.0.1:0"),
    agents=(("h", ("web",)), ("w", ("web",)), ("r", ("web",)), ("x", ("web",))),
    keys=(("app", "group:web"),),
)
HELD = 13  # kms-agent's exit code for a certificate on hold


def _serial(state: Path) -> str:
    out = run(["openssl", "x509", "-in", str(state / "agent.crt"), "-noout", "-serial"]).stdout
    return out.strip().split("=")[1].lower().lstrip("0")


def _openssl_view(server: ServerProcess, cert: Path, tmp: Path) -> tuple[str, str, str]:
    """(openssl verify -crl_check output, openssl crl -text, openssl ocsp output) for cert, now."""
    http, ca = server.fields["http-address"], server.data_dir / "ca.crt"
    crl_der, crl_pem, bundle = tmp / "crl.der", tmp / "crl.pem", tmp / "ca+crl.pem"
    run(["curl", "-sf", "-o", str(crl_der), f"http://{http}/crl"])
    run(["openssl", "crl", "-inform", "DER", "-in", str(crl_der), "-out", str(crl_pem)])
    bundle.write_bytes(ca.read_bytes() + crl_pem.read_bytes())
    verify = run(["openssl", "verify", "-crl_check", "-CAfile", str(bundle), str(cert)])
    crl_text = run(["openssl", "crl", "-in", str(crl_pem), "-noout", "-text"]).stdout
    ocsp = openssl_ocsp(ca, cert, http)
    assert "Response verify OK" in ocsp.stdout + ocsp.stderr, ocsp.stdout + ocsp.stderr
    return verify.stdout + verify.stderr, crl_text, ocsp.stdout


def _open_watch(state: Path, server: ServerProcess) -> tuple[grpc.Channel, Any]:
    """A raw Watch stream of the agent at state, read on a thread: (channel, result dict)."""
    channel = grpc.secure_channel(server.address, agent_credentials(state))
    call = revocation_pb2_grpc.RevocationStub(channel).Watch(revocation_pb2.WatchRequest(after_seq=0))
    result: dict[str, Any] = {}

    def read() -> None:
        try:
            for _ in call:
                result.setdefault("first", time.monotonic())
        except grpc.RpcError as exc:
            result.update(at=time.monotonic(), code=exc.code(), trailers=dict(exc.trailing_metadata() or ()))

    threading.Thread(target=read, daemon=True).start()
    return channel, result


def _fetch(root: Path, name: str) -> subprocess.CompletedProcess[str]:
    return agent(root / name, "fetch-key", "app", "--out", str(root / f"{name}-app.key"))


def test_hold_then_release_as_calls_streams_watchers_crl_and_ocsp_see_it(
    rig: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    server, root = rig
    cert, serial = root / "h" / "agent.crt", _serial(root / "h")
    assert _fetch(root, "h").returncode == 0
    held_watch, other_watch = WatchProcess(root / "h"), WatchProcess(root / "w")
    channel, stream = _open_watch(root / "h", server)
    try:
        # Both watchers' streams are open before the hold (a watcher that connects after it is
        # refused until the release): both hear a rotation of the key they share.
        server.admin("key", "rotate", "app")
        for watcher in (held_watch, other_watch):
            watcher.wait_for(lambda evs: any(e.get("kind") == "rotate" for e in evs))
        deadline = time.monotonic() + 5
        while "first" not in stream and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "first" in stream, stream  # the raw stream heard it too
        held = json.loads(
            server.admin("revoke", "cert", serial, "--reason", "certificateHold", "--json").stdout
        )
        acted = time.monotonic()
        assert held["kind"] == "cert" and held["reason"] == "certificateHold" and held["serial"] == serial
        # Its open stream closes within a second, saying why.
        deadline = time.monotonic() + 5
        while "code" not in stream and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stream["code"] == grpc.StatusCode.UNAUTHENTICATED and stream["trailers"][REASON_KEY] == "held"
        assert stream["at"] - acted < 1.0
        # The next call is refused, with its own exit code; check says held.
        assert_one_line_error(_fetch(root, "h"), HELD, "on hold", "release")
        check = agent(root / "w", "check", "--serial", serial)
        assert check.returncode == HELD and "status=held" in check.stdout
        # openssl: the CRL lists it as certificateHold, OCSP says revoked (certificateHold).
        verify, crl_text, ocsp = _openssl_view(server, cert, tmp_path)
        assert "certificate revoked" in verify and "Certificate Hold" in crl_text, crl_text
        assert ": revoked" in ocsp and "certificateHold" in ocsp, ocsp
        other_watch.wait_for(lambda evs: any(e.get("serial") == serial for e in evs))
        # The held agent's watch heard it and waits: it does not exit as for a revocation.
        held_watch.wait_for(lambda evs: any(e.get("reason") == "certificateHold" for e in evs))
        time.sleep(1.5)
        assert held_watch.proc.poll() is None

        released = json.loads(server.admin("release", "cert", serial, "--json").stdout)
        assert released["kind"] == "release" and released["serial"] == serial
        # The same certificate works again, without enrolling again.
        assert _fetch(root, "h").returncode == 0
        assert agent(root / "w", "check", "--serial", serial).returncode == 0
        verify, crl_text, ocsp = _openssl_view(server, cert, tmp_path)
        assert ": OK" in verify and "Certificate Hold" not in crl_text, verify + crl_text
        assert ": good" in ocsp, ocsp
        other_watch.wait_for(lambda evs: any(e.get("kind") == "release" for e in evs))
        # The held agent's watch reopened its stream and heard the release.
        held_watch.wait_for(lambda evs: any(e.get("kind") == "release" for e in evs), timeout=15)
        assert held_watch.proc.poll() is None
    finally:
        channel.close()
        held_watch.stop()
        other_watch.stop()
    # Listed with its state; --active lists only those in force.
    entries = json.loads(server.admin("revocations", "list", "--json").stdout)
    hold = next(e for e in entries if e["seq"] == held["seq"])
    assert hold["state"] == "released" and hold["released_by"] == released["seq"]
    active = json.loads(server.admin("revocations", "list", "--active", "--json").stdout)
    assert held["seq"] not in [e["seq"] for e in active]
    assert all(e["state"] == "in force" for e in active)
    actions = [r["action"] for r in json.loads(server.admin("audit", "list", "--json").stdout)]
    assert "revoke.cert" in actions and "release.cert" in actions


def test_agent_hold_keeps_kms_agent_run_waiting_until_release(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    daemon = subprocess.Popen(
        [exe("kms-agent"), "run", "--dir", str(root / "r"), "--no-listen"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events: list[dict[str, Any]] = []

    def pump() -> None:
        for line in daemon.stdout or ():
            events.append(json.loads(line))

    threading.Thread(target=pump, daemon=True).start()
    try:
        # Its watch stream is open (it hears a rotation of its key) before the hold.
        server.admin("key", "rotate", "app")
        deadline = time.monotonic() + 20
        while not any(e.get("kind") == "rotate" for e in events) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(e.get("kind") == "rotate" for e in events), events
        held = json.loads(server.admin("revoke", "agent", "r", "--hold", "--json").stdout)
        assert held["kind"] == "agent" and held["serial"] == _serial(root / "r")
        assert_one_line_error(_fetch(root, "r"), HELD, "on hold")
        # The held name is still in use: no second machine takes it without --replace.
        assert_one_line_error(server.admin("token", "create", "--name", "r", check=False), 6, "--replace")
        time.sleep(3)
        assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
        assert any(e.get("seq") == held["seq"] for e in events)
        # A second hold changes nothing; a release lifts it.
        again = json.loads(server.admin("revoke", "agent", "r", "--hold", "--json").stdout)
        assert again["already_revoked"] and again["seq"] == held["seq"]
        server.admin("release", "agent", "r")
        assert _fetch(root, "r").returncode == 0
        deadline = time.monotonic() + 15
        while not any(e.get("kind") == "release" for e in events) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(e.get("kind") == "release" for e in events), events
        assert daemon.poll() is None
        # Released already: one line, and nothing changed.
        assert_one_line_error(server.admin("release", "agent", "r", check=False), 6, "not held")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0


def test_only_holds_can_be_released(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    serial = _serial(root / "x")
    assert_one_line_error(server.admin("release", "cert", serial, check=False), 6, "is not held")
    assert_one_line_error(server.admin("release", "agent", "x", check=False), 6, "is not held")
    # A hold that a final revocation replaces is no longer the hold's to lift.
    server.admin("revoke", "agent", "x", "--hold")
    final = json.loads(
        server.admin("revoke", "cert", "--yes", serial, "--reason", "keyCompromise", "--json").stdout
    )
    assert not final["already_revoked"] and final["reason"] == "keyCompromise"
    assert_one_line_error(server.admin("release", "cert", serial, check=False), 6, "keyCompromise", "final")
    assert_one_line_error(server.admin("release", "agent", "x", check=False), 6, "not held")
    server.admin("revoke", "agent", "--yes", "x", "--reason", "superseded")
    assert_one_line_error(server.admin("release", "agent", "x", check=False), 6, "superseded", "final")
    assert agent(root / "w", "check", "--serial", serial).returncode == 11
    # Key versions cannot be held.
    assert_one_line_error(
        server.admin("revoke", "key", "app", "--version", "1", "--reason", "certificateHold", check=False),
        2,
        "certificateHold",
    )


@pytest.mark.parametrize("args", [["--hold", "--reason", "keyCompromise"]], ids=["hold-and-reason"])
def test_revoke_agent_hold_with_another_reason_is_refused(
    rig: tuple[ServerProcess, Path], args: list[str]
) -> None:
    server, _ = rig
    assert_one_line_error(server.admin("revoke", "agent", "w", *args, check=False), 2, "--hold")
