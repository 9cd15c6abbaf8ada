"""Story: `kms-server top` in a real pseudo-terminal against a running server (issue 17 §6), and a
confirmation that counts what a revocation will close, answered No inside `kms-server shell` (§3).

top redraws only the cells that change, so what the pty receives is fed to pyte (a VT100
emulator) and the screen is read back line by line, as a person sees it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pexpect
import pyte
import pytest

from kms.v1 import monitor_pb2, monitor_pb2_grpc
from tests.e2e.rig import Rig
from tests.harness import ServerProcess, WatchProcess, assert_one_line_error, exe, run

pytestmark = pytest.mark.sqlite_only(
    "top reads the server's memory and the admin socket; the store plays no part"
)

RIG = Rig("kmstop", agents=(("web-1", ("web",)),), keys=(("payroll-db", "group:web"),))
_ROWS, _COLS = 40, 160


def _open_streams(server: ServerProcess, name: str) -> int:
    socket = f"unix:{server.data_dir / 'admin.sock'}"
    with grpc.secure_channel(socket, grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)) as channel:
        stub = monitor_pb2_grpc.MonitorStub(channel)
        return int(stub.GetStanding(monitor_pb2.GetStandingRequest(name=name), timeout=5).open_streams)


@pytest.fixture(scope="module")
def watcher(rig: tuple[ServerProcess, Path]) -> Iterator[WatchProcess]:
    """web-1 online (one open Watch stream) for the rest of the module."""
    server, root = rig
    watch = WatchProcess(root / "web-1")
    deadline = time.monotonic() + 15
    while _open_streams(server, "web-1") < 1:
        assert time.monotonic() < deadline, "kms-agent watch never opened its stream"
        time.sleep(0.05)
    yield watch
    watch.stop()


def _spawn(*args: str) -> pexpect.spawn:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}
    # A pty answers no cursor-position request: without this prompt_toolkit waits, then warns.
    env.update(PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")
    return pexpect.spawn(
        exe("kms-server"), list(args), env=env, encoding="utf-8", timeout=20, dimensions=(_ROWS, _COLS)
    )


class _Screen:
    """What a terminal of _ROWS x _COLS shows of everything the child wrote so far."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.screen = pyte.Screen(_COLS, _ROWS)
        self.stream = pyte.Stream(self.screen)

    def wait(self, what: str, predicate: Callable[[list[str]], bool], timeout: float = 15.0) -> float:
        """Reads until predicate holds of the screen's lines; when it did (time.monotonic())."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.screen.display):
                return time.monotonic()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not on screen after {timeout} s:\n" + "\n".join(self.screen.display)
                )
            with contextlib.suppress(pexpect.TIMEOUT):
                self.stream.feed(self.child.read_nonblocking(65536, timeout=0.05))


def _row(name: str) -> Callable[[list[str]], bool]:
    """A row of the agents pane (the left one) starts with the agent's name."""
    return lambda lines: any(line.startswith(f"{name} ") for line in lines)


def _key(name: str) -> Callable[[list[str]], bool]:
    """A row of the keys pane, right of the line between the panes."""
    return lambda lines: any(f"│{name} " in line for line in lines)


def test_top_once_json_piped_and_top_without_a_terminal(rig: tuple[ServerProcess, Path]) -> None:
    server, _ = rig
    overview = json.loads(server.admin("top", "--once", "--json").stdout)
    assert (overview["agents_total"], overview["keys_total"]) == (1, 1)
    assert [(a["name"], a["status"]) for a in overview["agents"]] == [("web-1", "valid")]
    assert [k["name"] for k in overview["keys"]] == ["payroll-db"]
    assert any(e["kind"] == "enroll" and e["subject"] == "agent web-1" for e in overview["events"])
    plain = server.admin("top", "--once", "--filter", "pay").stdout
    assert "payroll-db" in plain and "0 of 0 matching 'pay'" in plain
    assert_one_line_error(server.admin("top", check=False), 2, "--once")


def test_shell_confirmation_counts_certificates_and_streams_and_no_changes_nothing(
    rig: tuple[ServerProcess, Path], watcher: WatchProcess
) -> None:
    server, _ = rig
    child = _spawn("--data-dir", str(server.data_dir), "shell")
    try:
        child.expect("kms-server>")
        assert child.waitnoecho(timeout=20)
        child.send("revoke agent web-1\r")
        child.expect("agent web-1 .*1 valid certificate, 1 open stream will be closed, re-enrollment barred")
        child.expect_exact("[y/N] ")
        child.sendline("n")
        child.expect("kms-server>")
        assert child.waitnoecho(timeout=20)
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    agents = {a["name"]: a for a in json.loads(server.admin("agents", "list", "--json").stdout)}
    assert agents["web-1"]["status"] == "valid"


def test_top_shows_agents_filters_moves_and_a_revocation_within_2s(
    rig: tuple[ServerProcess, Path], watcher: WatchProcess
) -> None:
    server, _ = rig
    child = _spawn("top", "--data-dir", str(server.data_dir))
    screen = _Screen(child)
    try:
        screen.wait("web-1 online", lambda s: any(line.startswith("web-1 ") and "● 1" in line for line in s))
        screen.wait("the key, agents focused", lambda s: _key("payroll-db")(s) and "▶ AGENTS" in "".join(s))

        child.send("/")
        screen.wait("the filter line", lambda s: any("filter (Enter applies" in line for line in s))
        child.send("pay\r")  # keys and agents alike: the key stays, the agent goes
        screen.wait("only the key", lambda s: _key("payroll-db")(s) and not _row("web-1")(s))
        child.send("/")
        screen.wait("the filter line", lambda s: any("filter (Enter applies" in line for line in s))
        child.send("\x15web\r")  # Ctrl-U clears the line first
        screen.wait("only the agent", lambda s: _row("web-1")(s) and not _key("payroll-db")(s))

        child.send("\t")
        screen.wait("keys focused", lambda s: "▶ KEYS" in "".join(s) and "▶ AGENTS" not in "".join(s))
        child.send("\t")
        screen.wait("events focused", lambda s: "▶ EVENTS" in "".join(s) and "▶ KEYS" not in "".join(s))

        revoked = run([exe("kms-server"), "revoke", "agent", "web-1", "--reason", "keyCompromise", "--yes",
                       "--data-dir", str(server.data_dir)])  # fmt: skip
        done = time.monotonic()
        assert revoked.returncode == 0, revoked.stderr
        shown = screen.wait(
            "the revocation",
            lambda s: any(
                "revoke" in line and "agent web-1" in line and "keyCompromise" in line for line in s
            ),
            timeout=5,
        )
        assert shown - done < 2.0
        screen.wait(
            "web-1 revoked", lambda s: any(line.startswith("web-1 ") and "revoked" in line for line in s)
        )
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
