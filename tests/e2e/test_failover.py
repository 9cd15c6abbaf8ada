"""Story: an agent given several server addresses fails over between them, command by command.

The agent's side does not depend on the store, so this runs on SQLite only, with
stand-ins for replicas (tests/e2e/failover_addresses.py): an address where nothing
listens (connection refused, as a replica that is down), one that accepts and never
answers (a host that drops packets), and a listener that only counts connections (to
prove an address was never tried). Watching across failovers: test_failover_watch.py.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.failover_addresses import (
    Counting,
    Refusing,
    Silent,
    enroll_direct,
    enroll_listed,
    set_servers,
)
from tests.e2e.rig import Rig
from tests.harness import (
    ServerProcess,
    agent,
    assert_one_line_error,
    exe,
)

AGENT_SIDE = pytest.mark.sqlite_only("agent-side failover: the store behind the server does not matter")


RIG = Rig("kmsfo", keys=(("app", "group:web"),), stand_ins=(Refusing, Refusing))


@AGENT_SIDE
def test_a_dead_first_address_is_skipped_by_every_command(
    rig: tuple[ServerProcess, Path, Refusing, Refusing],
) -> None:
    server, root, dead, dead_enroll = rig
    a, b = root / "a", root / "b"
    # Comma-separated in the environment ...
    result = agent(
        a,
        "enroll",
        env={
            "KMS_SERVER": f"{dead.address},{server.address}",
            "KMS_ENROLL_SERVER": f"{dead_enroll.address},{server.enroll_address}",
            "KMS_JOIN_TOKEN": server.token("a", "web"),
            "KMS_CA_FINGERPRINT": server.fingerprint,
        },
    )
    assert result.returncode == 0, result.stderr
    assert "enrolled as a" in result.stdout and result.stderr == ""
    # ... or a repeated flag.
    result = enroll_listed(
        server,
        b,
        "b",
        "--server",
        dead.address,
        "--server",
        server.address,
        "--enroll-server",
        f"{dead_enroll.address},{server.enroll_address}",
    )
    assert result.returncode == 0, result.stderr

    for state in (a, b):
        settings = json.loads((state / "agent.json").read_text())
        assert settings["servers"] == [dead.address, server.address]
        assert settings["enroll_servers"] == [dead_enroll.address, server.enroll_address]
        assert "server" not in settings and "enroll_server" not in settings

    status = agent(a, "status", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["server"] == server.address and shown["servers"] == [dead.address, server.address]
    text = agent(a, "status")
    assert f"servers:   {dead.address}, {server.address}" in text.stdout
    assert f"server:    {server.address} (verified over mTLS)" in text.stdout

    fetched = agent(a, "fetch-key", "app", "--format", "hex")
    assert fetched.returncode == 0 and len(fetched.stdout.strip()) == 64, fetched.stderr
    assert agent(a, "check", "--cert", str(b / "agent.crt")).returncode == 0
    renewed = agent(a, "renew")
    assert renewed.returncode == 0, renewed.stderr
    assert json.loads((a / "agent.json").read_text())["servers"] == [dead.address, server.address]
    exchanged = agent(a, "exchange", "--peer", "server", "--json")
    assert exchanged.returncode == 0, exchanged.stderr

    # sign/verify (verify asks the server for revocation status).
    doc = root / "doc.txt"
    doc.write_text("hello\n")
    assert agent(a, "sign", str(doc)).returncode == 0
    verified = agent(b, "verify", str(doc), str(doc) + ".sig", "--signer", "a")
    assert verified.returncode == 0, verified.stderr

    # Agent to agent: both listen and initiate past the dead address.
    listener = subprocess.Popen(
        [exe("kms-agent"), "listen", "--once", "--json", "--dir", str(b), "--out-dir", str(root / "keys")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        result = agent(a, "exchange", "--peer", "b", "--json")
        while "not listening" in result.stderr and time.monotonic() < deadline:
            time.sleep(0.3)
            result = agent(a, "exchange", "--peer", "b", "--json")
        assert result.returncode == 0, result.stderr
        out, err = listener.communicate(timeout=20)
        assert listener.returncode == 0, err
        assert json.loads(out)["session_id"] == json.loads(result.stdout)["session_id"]
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()


@AGENT_SIDE
def test_a_silent_address_is_passed_after_the_deadline(
    rig: tuple[ServerProcess, Path, Refusing, Refusing], tmpdir_short: Path
) -> None:
    """No refusal, no answer: a deadline that passes before any connection moves on too."""
    server, _, _, _ = rig
    silent = Silent()
    try:
        state = tmpdir_short / "s"
        enroll_direct(server, state, "s")
        set_servers(state, [silent.address, server.address])
        started = time.monotonic()
        fetched = agent(state, "fetch-key", "app", "--timeout", "1")
        assert fetched.returncode == 0, fetched.stderr
        exchanged = agent(state, "exchange", "--peer", "server", "--handshake-timeout", "1")
        assert exchanged.returncode == 0, exchanged.stderr
        assert time.monotonic() - started < 15
        set_servers(state, [silent.address])
        assert_one_line_error(
            agent(state, "fetch-key", "app", "--timeout", "1"), 8, "no connection within 1s"
        )
    finally:
        silent.close()


@AGENT_SIDE
def test_when_every_address_is_down_one_line_names_each(
    rig: tuple[ServerProcess, Path, Refusing, Refusing], tmpdir_short: Path
) -> None:
    server, root, dead, dead_enroll = rig
    other = Refusing()
    try:
        result = enroll_listed(
            server,
            tmpdir_short / "x",
            "x",
            "--server",
            server.address,
            "--enroll-server",
            f"{dead_enroll.address},{other.address}",
        )
        assert_one_line_error(result, 8, "any of", dead_enroll.address, other.address)
        assert not (tmpdir_short / "x" / "agent.json").exists()

        state = tmpdir_short / "c"
        enroll_direct(server, state, "c")
        set_servers(state, [dead.address, other.address])
        for args in (
            ["fetch-key", "app"],
            ["status"],
            ["check", "--serial", "1"],
            ["exchange", "--peer", "server"],
        ):
            assert_one_line_error(
                agent(state, *args), 8, "cannot reach kms-server at any of", dead.address, other.address
            )
    finally:
        other.close()


@AGENT_SIDE
def test_a_final_answer_is_not_asked_of_the_next_address(
    rig: tuple[ServerProcess, Path, Refusing, Refusing], tmpdir_short: Path
) -> None:
    server, root, dead, _ = rig
    counting = Counting()
    try:
        enroll_at = f"{server.enroll_address},{counting.address}"
        # A refused token is final: join tokens are single-use, another replica must not see it.
        bad_token = agent(
            tmpdir_short / "t",
            "enroll",
            "--server",
            server.address,
            "--enroll-server",
            enroll_at,
            "--token",
            server.token("t").split(".")[0] + "." + "A" * 43,  # a known id, a wrong secret
            "--ca-fingerprint",
            server.fingerprint,
        )
        assert_one_line_error(bad_token, 3)
        # So is a CA that does not match the pin.
        wrong_pin = agent(
            tmpdir_short / "t",
            "enroll",
            "--server",
            server.address,
            "--enroll-server",
            enroll_at,
            "--token",
            server.token("t"),
            "--ca-fingerprint",
            "sha256:" + "00" * 32,
        )
        assert_one_line_error(wrong_pin, 3, "does not match")
        assert counting.connections == 0

        # A used token, retried by hand with the dead address first: refused (not 'unavailable').
        state = tmpdir_short / "p"
        token = server.token("p")
        args = ["--server", server.address, "--enroll-server", server.enroll_address]
        assert (
            agent(state, "enroll", *args, "--token", token, "--ca-fingerprint", server.fingerprint).returncode
            == 0
        )
        again = agent(
            tmpdir_short / "q",
            "enroll",
            "--server",
            server.address,
            "--enroll-server",
            f"{dead.address},{server.enroll_address}",
            "--token",
            token,
            "--ca-fingerprint",
            server.fingerprint,
        )
        assert_one_line_error(again, 3)

        # PERMISSION_DENIED, FAILED_PRECONDITION: the deployment's answer, not a reason to try elsewhere.
        set_servers(state, [server.address, counting.address])
        assert_one_line_error(agent(state, "fetch-key", "app"), 4)  # p is in no group
        # (An unknown agent is answered as one not listening: names cannot be probed.)
        assert_one_line_error(agent(state, "exchange", "--peer", "nobody"), 6, "not listening")
        assert counting.connections == 0
    finally:
        counting.close()


@AGENT_SIDE
@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--server", "127.0.0.1:1,,127.0.0.1:2"], {}, "empty address"),
        (["--server", "127.0.0.1:1", "--server", "127.0.0.1:1"], {}, "twice"),
        (["--server", "nohost"], {}, "HOST:PORT"),
        ([], {"KMS_SERVER": "127.0.0.1:1,nohost"}, "KMS_SERVER"),
        (["--server", "127.0.0.1:1", "--enroll-server", "127.0.0.1:x"], {}, "--enroll-server"),
        ([], {"KMS_SERVER": "127.0.0.1:1", "KMS_ENROLL_SERVER": "127.0.0.1:2,"}, "KMS_ENROLL_SERVER"),
    ],
    ids=["empty-entry", "repeated", "no-port", "env-bad", "enroll-bad", "env-enroll-trailing-comma"],
)
def test_bad_address_lists_are_one_line(
    tmpdir_short: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    result = agent(
        tmpdir_short / "z",
        "enroll",
        *args,
        "--token",
        "x.y",
        "--ca-fingerprint",
        "sha256:" + "00" * 32,
        env=env,
    )
    assert_one_line_error(result, 2, needle)


@AGENT_SIDE
def test_an_older_agents_single_address_state_still_works(
    rig: tuple[ServerProcess, Path, Refusing, Refusing], tmpdir_short: Path
) -> None:
    server, _, _, _ = rig
    state = tmpdir_short / "old"
    enroll_direct(server, state, "old")
    settings = json.loads((state / "agent.json").read_text())
    old = {k: v for k, v in settings.items() if k not in ("servers", "enroll_servers")}
    old |= {"server": server.address, "enroll_server": server.enroll_address}
    (state / "agent.json").write_text(json.dumps(old, indent=2))

    shown = agent(state, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["servers"] == [server.address]
    assert agent(state, "fetch-key", "app").returncode == 0
    assert agent(state, "renew").returncode == 0  # saves the identity: the new form
    written = json.loads((state / "agent.json").read_text())
    assert written["servers"] == [server.address] and written["enroll_servers"] == [server.enroll_address]
    assert "server" not in written
