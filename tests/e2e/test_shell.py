"""Story: the interactive shells in a real pseudo-terminal (pexpect) against a running server: Tab
completes a live key name, menu creates a key, errors are one line and the shell goes on, Ctrl-C
cancels a line, Ctrl-D leaves; the history is 0600 and holds no secret; piped, nothing prompts."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pexpect
import pytest

from tests.e2e.rig import Rig
from tests.harness import ServerProcess, agent, exe, run

pytestmark = pytest.mark.sqlite_only(
    "the shell talks to the admin socket and the agent alike over either store"
)

RIG = Rig("kmssh", agents=(("web-1", ("web",)),), keys=(("payroll-db", "group:web"),))
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _spawn(prog: str, *args: str, cache: Path) -> pexpect.spawn:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}
    # A pty answers no cursor-position request: without this prompt_toolkit waits, then warns.
    env.update(PROMPT_TOOLKIT_NO_CPR="1", XDG_CACHE_HOME=str(cache), TERM="xterm")
    child = pexpect.spawn(exe(prog), list(args), env=env, encoding="utf-8", timeout=20, dimensions=(40, 200))
    child.expect(f"{prog}>")
    return child


def _rendered(text: str) -> str:
    """A pattern for text as the screen shows it: redraws may put escapes between any two letters."""
    return "(?:\x1b\\[[0-9;?]*[A-Za-z])*".join(re.escape(c) for c in text)


def _type(child: pexpect.spawn, text: str) -> None:
    """Types text once the prompt reads keys: keys typed while the terminal is still in line mode
    (between a command and the prompt's raw mode) may be dropped when it switches."""
    assert child.waitnoecho(timeout=20)
    child.send(text)


def _line(child: pexpect.spawn, prog: str, text: str, *expected: str) -> str:
    """Types text and Enter; what was printed before the next prompt, escapes removed."""
    _type(child, text + "\r")
    child.expect(f"\r\n[^\r\n]*{prog}>")
    printed = _ESCAPES.sub("", child.before)
    for needle in expected:
        assert needle in printed, printed
    return printed


def test_server_shell_completes_runs_and_guides(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    child = _spawn("kms-server", "--data-dir", str(server.data_dir), cache=root / "cache")
    try:
        _type(child, "key show pay\t")
        child.expect(_rendered("key show payroll-db"))
        _line(child, "kms-server", "", "payroll-db", "group:web")
        _type(child, "menu\r")
        child.expect("create a key")
        child.expect("choose 1-")
        _type(child, "1\r")
        child.expect("key name:")
        _type(child, "billing\r")
        child.expect("optional")
        _type(child, "group:w\t")  # the grant completes from live names too
        child.expect(_rendered("group:web"))
        child.send("\r")
        child.expect("kms-server key create billing --grant group:web")
        child.expect("billing: aes-256")
        child.expect("kms-server>")
        _line(child, "kms-server", "key rotate nosuch", "error: ", "nosuch")
        _line(child, "kms-server", "frobnicate", "no command 'frobnicate'")
        _line(child, "kms-server", "help revoke", "usage: kms-server revoke")
        printed = _line(child, "kms-server", "token create --name web-9")
        (token,) = re.findall(r"[0-9a-f]{16}\.[A-Za-z0-9_-]{43}", printed)
        _type(child, "key destroy payroll-db --version 1")
        child.sendcontrol("c")  # cancels the line: nothing destroyed
        # The next prompt, on a line of its own: a bare "kms-server>" also matches a redraw of the
        # cancelled line, and a Ctrl-D sent before the new prompt reads keys is lost.
        child.expect("\r\n[^\r\n]*kms-server>")
        assert child.waitnoecho(timeout=20)
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
        child.wait()  # the pty's end can come before the exit; close() would kill it
    finally:
        child.close()
    assert child.exitstatus == 0
    listed = server.admin("key", "list").stdout
    assert "billing" in listed and "group:web" in listed and "v1:active" in listed
    history = server.data_dir / "shell-history"
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    text = history.read_text()
    assert "key show payroll-db" in text and "token create --name web-9" in text
    assert "destroy" not in text and "billing" not in text  # cancelled; menu answers are not commands
    assert token not in text and token.split(".")[1] not in text  # printed, never kept


def test_agent_shell_completes_what_it_knows_and_keeps_secrets_out(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    web = root / "web-1"
    assert agent(web, "fetch-key", "payroll-db", "--out", str(root / "p.key")).returncode == 0
    token = server.token("web-7")
    child = _spawn("kms-agent", "--dir", str(web), cache=root / "cache")
    try:
        _type(child, "fetch-key pa\t")
        child.expect(_rendered("fetch-key payroll-db"))
        shown = _line(child, "kms-agent", " --include-key --json", '"key_base64"')
        key = shown.split('"key_base64": "')[1].split('"')[0]
        _line(child, "kms-agent", f"enroll --token {token} --server 127.0.0.1:1", "error: ")
        _line(child, "kms-agent", f"check --serial {token}", "error")
        _line(child, "kms-agent", "status", "web-1")
        assert child.waitnoecho(timeout=20)
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
        child.wait()  # the pty's end can come before the exit; close() would kill it
    finally:
        child.close()
    text = (web / "shell-history").read_text()
    assert "status" in text
    assert token not in text and token.split(".")[1] not in text
    assert "--include-key" not in text and key not in text


def test_piped_the_programs_never_prompt(rig: tuple[ServerProcess, Path]) -> None:
    server, _ = rig
    for prog, flag, where in (
        ("kms-server", "--data-dir", server.data_dir),
        ("kms-agent", "--dir", Path("/nonexistent")),
    ):
        bare = run([exe(prog), flag, str(where)])
        assert bare.returncode == 2 and "required: COMMAND" in bare.stderr and bare.stdout == ""
        shell = run([exe(prog), flag, str(where), "shell"])
        assert shell.returncode == 2 and "needs a terminal" in shell.stderr and shell.stdout == ""
