"""Story: session keys with the server and between agents, through the relay, and signatures."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from kms.errors import DeadlineExceeded
from tests import harness
from tests.e2e.rig import Rig
from tests.harness import ServerProcess, agent, assert_one_line_error, exe
from tests.tamper_relay import TamperRelay

pytestmark = [
    pytest.mark.every_worker_setting,
    pytest.mark.sqlite_only(
        "the handshake and the relay run in memory; the store only authenticates callers, as in every story"
    ),
]

RIG = Rig("kmsex", ("--handshake-timeout", "3s"), agents=tuple((n, ()) for n in ("a", "b", "c", "lonely")))


def _listen(state: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            exe("kms-agent"),
            "listen",
            "--once",
            "--json",
            "--dir",
            str(state),
            "--handshake-timeout",
            "4",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stderr_lines(proc: subprocess.Popen[str]) -> list[str]:
    """Collects a running process's stderr lines as they come (a thread reads them)."""
    lines: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: list[str], needle: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(needle in line for line in lines):
        assert time.monotonic() < deadline, f"{needle!r} never came: {''.join(lines)}"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(15)


def _exchange(state: Path, peer: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return agent(state, "exchange", "--peer", peer, "--json", "--handshake-timeout", "4", *extra)


def _exchange_with_listener(state: Path, peer: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The listener is a separate process: retry while the server says it is not listening yet."""
    deadline = time.monotonic() + 20
    while True:
        result = _exchange(state, peer, *extra)
        if "is not listening" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


@pytest.mark.parametrize("group", ["x25519", "ffdhe2048", "ffdhe3072"])
def test_agent_and_server_agree(rig: tuple[ServerProcess, Path], group: str) -> None:
    server, root = rig
    result = _exchange(root / "a", "server", "--group", group)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["peer"] == "server" and len(base64.b64decode(out["key_base64"])) == 32
    assert len(out["session_id"]) == 32
    assert out["key_base64"] not in server.output()  # the server keeps and logs nothing secret


def test_agents_agree_through_the_server(rig: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    server, root = rig
    listener = _listen(root / "b", "--out-dir", str(tmp_path))
    result = _exchange_with_listener(root / "a", "b", "--out", str(tmp_path / "a.key"))
    out_b, err_b = listener.communicate(timeout=20)
    assert result.returncode == 0, result.stderr
    assert listener.returncode == 0, err_b
    a, b = json.loads(result.stdout), json.loads(out_b)
    assert a["session_id"] == b["session_id"] and (a["peer"], b["peer"]) == ("b", "a")
    key_a = (tmp_path / "a.key").read_bytes()
    assert len(key_a) == 32 and key_a == Path(b["file"]).read_bytes()
    assert (tmp_path / "a.key").stat().st_mode & 0o777 == 0o600
    assert key_a.hex() not in server.output()


@pytest.mark.parametrize(
    "tamper",
    [
        ("hello", "nonce"),
        ("resp_auth", "signature"),
        ("resp_auth", "chain"),
        ("init_auth", "mac"),
        ("finished", "confirm"),
    ],
    ids=lambda t: f"{t[0]}.{t[1]}",
)
def test_a_relay_that_flips_one_byte_fails_both_sides(
    rig: tuple[ServerProcess, Path], tmp_path: Path, tamper: tuple[str, str]
) -> None:
    server, root = rig
    relay = TamperRelay(server.data_dir, tamper=tamper)
    try:
        dirs = {}
        for name in ("a", "b"):  # the same agents, pointed at the tampering relay
            dirs[name] = tmp_path / name
            shutil.copytree(root / name, dirs[name])
            settings = json.loads((dirs[name] / "agent.json").read_text())
            settings["server"] = f"127.0.0.1:{relay.port}"
            (dirs[name] / "agent.json").write_text(json.dumps(settings))
        listener = _listen(dirs["b"], "--out-dir", str(tmp_path / "keys"))
        err_b = _stderr_lines(listener)
        assert relay.listening.wait(20)
        result = _exchange(dirs["a"], "b")
        assert result.returncode != 0 and "key_base64" not in result.stdout, result.stdout
        if tamper[0] == "finished":
            # A flipped confirmation is caught by the initiator alone, after B finished.
            listener.wait(20)
        else:
            # B refuses, or sees the exchange abandoned: a failed attempt, which does not use up
            # its --once (it goes on listening), and leaves no key behind.
            _wait_for(err_b, "exchange failed")
            assert listener.poll() is None
            assert _stop(listener) == 0
            assert not list((tmp_path / "keys").glob("*.key"))
        assert "Traceback" not in result.stderr + "".join(err_b)
    finally:
        relay.stop()


def test_a_stalled_exchange_times_out_on_both_sides(rig: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    server, root = rig
    # The relay swallows B's answer and never closes anything: each side must give up on its own.
    relay = TamperRelay(server.data_dir, stall="resp_auth")
    try:
        for name in ("a", "b"):
            shutil.copytree(root / name, tmp_path / name)
            settings = json.loads((tmp_path / name / "agent.json").read_text())
            settings["server"] = f"127.0.0.1:{relay.port}"
            (tmp_path / name / "agent.json").write_text(json.dumps(settings))
        listener = _listen(tmp_path / "b", "--out-dir", str(tmp_path / "keys"))
        err_b = _stderr_lines(listener)
        assert relay.listening.wait(20)
        result = _exchange(tmp_path / "a", "b")
        assert_one_line_error(result, DeadlineExceeded.exit_code, "stalled")
        # B gives up on the attempt on its own too, and goes on listening (--once is not used up).
        _wait_for(err_b, "stalled", timeout=30)
        assert listener.poll() is None
        assert _stop(listener) == 0
    finally:
        relay.stop()


def test_listen_from_accepts_only_the_named_agent(rig: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    server, root = rig
    listener = _listen(root / "b", "--out-dir", str(tmp_path), "--from", "lonely")
    err_b = _stderr_lines(listener)
    result = _exchange_with_listener(root / "a", "b")
    assert_one_line_error(result, 6, "refused the exchange")
    _wait_for(err_b, "expected 'lonely'")
    assert not list(tmp_path.glob("*.key"))
    # The refusal did not use up --once: the agent it waits for still gets through.
    welcome = _exchange(root / "lonely", "b")
    assert welcome.returncode == 0, welcome.stderr
    assert listener.wait(20) == 0
    assert listener.stdout is not None
    assert json.loads(listener.stdout.read())["peer"] == "lonely"


def test_unknown_offline_and_revoked_peers(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    server.admin("revoke", "agent", "--yes", "c")
    # One answer for all three, so no agent can probe names or revocations through the relay.
    answers = {peer: _exchange(root / "a", peer) for peer in ("nobody", "lonely", "c")}
    for peer, result in answers.items():
        assert_one_line_error(result, 6, "not listening")
    assert len({r.stderr.replace(repr(p), "NAME") for p, r in answers.items()}) == 1, answers
    assert_one_line_error(_exchange(root / "c", "server"), 11, "was revoked")
    assert_one_line_error(agent(root / "c", "listen", "--once"), 11, "was revoked")


def test_sign_and_verify(rig: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    if harness.workers() > 1:
        pytest.skip("signatures use no relay; a revocation seen by every worker is the revocation story's")
    server, root = rig
    doc = tmp_path / "release.tar"
    doc.write_bytes(b"release contents\n" * 1000)
    signed = agent(root / "a", "sign", str(doc))
    assert signed.returncode == 0, signed.stderr
    sig = Path(str(doc) + ".sig")
    good = agent(root / "b", "verify", str(doc), str(sig), "--signer", "a", "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["signer"] == "a"

    # Wrong file.
    other = tmp_path / "other.tar"
    other.write_bytes(b"something else")
    assert_one_line_error(agent(root / "b", "verify", str(other), str(sig)), 10, "different contents")
    # Claiming another signer: by name, and by swapping in another agent's certificate.
    assert_one_line_error(agent(root / "b", "verify", str(doc), str(sig), "--signer", "b"), 3, "expected 'b'")
    forged = json.loads(sig.read_text())
    forged["signer_chain"] = [(root / "b" / "agent.crt").read_text()]
    fake = tmp_path / "forged.sig"
    fake.write_text(json.dumps(forged))
    assert_one_line_error(
        agent(root / "a", "verify", str(doc), str(fake), "--signer", "b"), 10, "does not verify"
    )
    # A signature by an agent revoked since: refused now.
    assert agent(root / "lonely", "sign", str(doc), "--out", str(tmp_path / "lonely.sig")).returncode == 0
    server.admin("revoke", "agent", "--yes", "lonely")
    assert_one_line_error(agent(root / "a", "verify", str(doc), str(tmp_path / "lonely.sig")), 3, "revoked")
    # Not a signature file at all.
    assert_one_line_error(agent(root / "a", "verify", str(doc), str(doc)), 2, "not a kms-agent signature")
