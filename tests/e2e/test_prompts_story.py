"""Guided prompts and confirmations (issue 17 §2, §3), typed in a real pseudo-terminal.

pexpect gives each command a pty, so stdin and stdout are terminals as for a person;
the same commands run through pipes (harness.run: stdin is /dev/null) never ask,
and fail with one line as before the questions existed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pexpect
import pytest

from tests.e2e.rig import Rig
from tests.harness import ServerProcess, _env, agent, assert_one_line_error, exe

pytestmark = pytest.mark.sqlite_only("prompts are the command line's; the store plays no part")

RIG = Rig("prompt")


def _spawn(program: str, *args: str, env: dict[str, str] | None = None) -> tuple[pexpect.spawn, io.StringIO]:
    """The program in a pty; everything it printed (and the terminal echoed) is in the StringIO."""
    child = pexpect.spawn(exe(program), list(args), env=_env(env), encoding="utf-8", timeout=30)
    seen = io.StringIO()
    child.logfile_read = seen
    return child, seen


def _finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return int(child.exitstatus if child.exitstatus is not None else -1)


def _versions(server: ServerProcess, key: str) -> dict[int, str]:
    shown = json.loads(server.admin("key", "show", key, "--json").stdout)
    return {v["version"]: v["state"] for v in shown["versions"]}


def test_enroll_asks_for_address_ca_and_hidden_token(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    env = {"KMS_ENROLL_SERVER": server.enroll_address}  # the test server's ports are not port + 1
    # Answer No to the CA: nothing is enrolled, and the token is never asked for.
    child, _ = _spawn("kms-agent", "enroll", "--dir", str(root / "doubter"), env=env)
    child.expect_exact("kms-server address (HOST:PORT): ")
    child.sendline(server.address)
    child.expect_exact("Trust this CA and enroll with it? [y/N] ")
    child.sendline("n")
    child.expect("not trusted")
    assert _finish(child) == 14
    assert not (root / "doubter" / "agent.json").exists()

    token = server.token("guided", "web")
    child, seen = _spawn("kms-agent", "enroll", "--dir", str(root / "guided"), env=env)
    child.expect_exact("kms-server address (HOST:PORT): ")
    child.sendline(server.address)
    child.expect(r"subject: +CN=")
    child.expect(r"fingerprint: +(sha256:[0-9a-f]{64})")
    assert child.match.group(1) == server.fingerprint
    child.expect(r"valid: +\d{4}-\d\d-\d\dT")
    child.expect_exact("[y/N] ")
    child.sendline("yes")
    child.expect_exact("join token (typing is hidden): ")
    child.sendline(token)
    child.expect("enrolled as guided")
    assert _finish(child) == 0
    transcript = seen.getvalue()
    assert token not in transcript and token.split(".", 1)[-1] not in transcript  # never echoed
    assert f"--ca-fingerprint {server.fingerprint}" in transcript  # the flags for a script, shown
    assert json.loads(agent(root / "guided", "status", "--json").stdout)["name"] == "guided"


def test_not_on_a_terminal_nothing_is_asked(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    assert_one_line_error(
        agent(root / "piped", "enroll"), 2, "enroll needs --server, --token and --ca-fingerprint"
    )
    assert_one_line_error(
        server.admin("token", "create", check=False), 2, "the following arguments are required: --name"
    )
    assert_one_line_error(
        server.admin("key", "create", check=False), 2, "the following arguments are required: name"
    )


def test_admin_commands_ask_for_a_missing_name(rig: tuple[ServerProcess, Path]) -> None:
    server, _ = rig
    child, _ = _spawn("kms-server", "key", "create", "--data-dir", str(server.data_dir))
    child.expect_exact("key name: ")
    child.sendline("asked")
    child.expect_exact("empty for none): ")
    child.sendline("group:web")
    child.expect("asked: aes-256")
    assert _finish(child) == 0
    child, _ = _spawn("kms-server", "token", "create", "--data-dir", str(server.data_dir), "--json")
    child.expect_exact("agent name: ")
    child.sendline("asked-agent")
    child.expect_exact("empty for none): ")
    child.sendline("web, db")
    child.expect('"groups"')
    assert _finish(child) == 0
    assert json.loads(server.admin("key", "show", "asked", "--json").stdout)["grants"] == ["group:web"]


def test_destroy_asks_and_no_keeps_the_key(rig: tuple[ServerProcess, Path]) -> None:
    server, _ = rig
    server.admin("key", "create", "precious", "--grant", "group:web")
    server.admin("key", "rotate", "precious")
    child, _ = _spawn(
        "kms-server", "key", "destroy", "precious", "--version", "1", "--data-dir", str(server.data_dir)
    )
    child.expect("key precious version 1 \\(deactivated\\) will be erased for good")
    child.expect_exact("Proceed? [y/N] ")
    child.sendline("")  # Enter: the default, No
    child.expect("nothing changed")
    assert _finish(child) == 14
    assert _versions(server, "precious")[1] == "deactivated"

    # Piped, without --yes: refused before anything is asked of the server, and nothing changes.
    refused = server.admin("key", "destroy", "precious", "--version", "1", check=False)
    assert_one_line_error(refused, 2, "--yes", "without a terminal")
    assert _versions(server, "precious")[1] == "deactivated"
    server.admin("key", "destroy", "precious", "--version", "1", "--yes")
    assert _versions(server, "precious")[1] == "destroyed"


def test_revoke_agent_says_what_happens_and_yes_revokes(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    token = server.token("doomed")
    enrolled = agent(
        root / "doomed",
        "enroll",
        "--server",
        server.address,
        "--enroll-server",
        server.enroll_address,
        "--token",
        token,
        "--ca-fingerprint",
        server.fingerprint,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    assert_one_line_error(server.admin("revoke", "agent", "doomed", check=False), 2, "--yes")
    replacing = ("token", "create", "--name", "doomed", "--replace", "--data-dir", str(server.data_dir))
    assert_one_line_error(server.admin(*replacing[:5], check=False), 2, "--yes")
    child, _ = _spawn("kms-server", *replacing)
    child.expect("agent doomed holds a valid certificate .*: enrolling with this token revokes it")
    child.expect_exact("[y/N] ")
    child.sendline("n")
    assert _finish(child) == 14
    child, _ = _spawn("kms-server", "revoke", "agent", "doomed", "--data-dir", str(server.data_dir))
    child.expect("agent doomed .*: 1 valid certificate, 0 open streams will be closed, re-enrollment barred")
    child.expect_exact("[y/N] ")
    child.sendline("y")
    child.expect("revoked: ")
    assert _finish(child) == 0
    agents = {a["name"]: a for a in json.loads(server.admin("agents", "list", "--json").stdout)}
    assert agents["doomed"]["status"] == "revoked"
