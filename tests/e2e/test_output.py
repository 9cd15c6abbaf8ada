"""Output for people and for scripts (issue 17 §5), against one real server: on a terminal (a real
pty), listings are tables with headers and color, without color under NO_COLOR or --no-color;
piped, the plain text as before; and every --json command of both programs emits exactly the
fields docs/cli.md documents.

The commands run in this process (main(argv), as the console scripts call it), against the
server's real admin socket and mTLS port: a subprocess per command would cost ~0.2 s of CPU
each. watch and listen, which run until stopped, are real child processes.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pexpect
import pytest

from agent.cli import build_parser as agent_parser
from agent.cli import main as agent_main
from kms.cli_help import subcommands
from server.cli import build_parser as server_parser
from server.cli import main as server_main
from tests.e2e.rig import Rig
from tests.harness import ServerProcess, WatchProcess, _env, agent, exe

pytestmark = pytest.mark.sqlite_only("what the command lines print; the store plays no part")

RIG = Rig("json", agents=(("alice", ("web",)), ("bob", ("web",)), ("carol", ("ops",))))

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"

Main = Callable[[Sequence[str] | None], int]


def _sections() -> list[tuple[list[str], set[str]]]:
    """docs/cli.md as (the commands a ### heading names, the fields its table lists)."""
    sections: list[tuple[list[str], set[str]]] = []
    documented: dict[str, set[str]] = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("### "):
            sections.append((re.findall(r"`(kms-(?:server|agent) [^`]+)`", line), set()))
        elif sections and (row := re.match(r"\| `([^`]+)` \|", line)):
            sections[-1][1].add(row.group(1))
        elif sections and (same := re.match(r"Every field of `([^`]+)`", line)):
            sections[-1][1].update(documented[same.group(1)])
        for command in sections[-1][0] if sections else ():
            documented[command] = sections[-1][1]
    return sections


def _fields(value: Any, prefix: str = "") -> set[str]:
    """The field names of a JSON value: an object's keys, a list's objects' keys, and nested
    objects' keys in lists as name[].field."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= _fields(item, prefix)
    elif isinstance(value, dict):
        for key, item in value.items():
            found.add(prefix + key)
            if isinstance(item, list) and any(isinstance(i, dict) for i in item):
                found |= _fields(item, f"{prefix}{key}[].")
    return found


def test_docs_cover_exactly_the_commands_that_take_json() -> None:
    taking = {
        f"{prog} {path}"
        for prog, parser in (("kms-server", server_parser()), ("kms-agent", agent_parser()))
        for path, sub, _ in subcommands(parser)
        if any("--json" in a.option_strings for a in sub._actions)
    }
    assert {c for commands, _ in _sections() for c in commands} == taking


class _Runner:
    """Runs commands in this process, collecting the fields of what each prints."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.emitted: dict[str, set[str]] = defaultdict(set)

    def ok(self, main: Main, argv: list[str]) -> tuple[int, str, str]:
        code = main(argv)
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, prog: str, command: str, argv: list[str], exit_code: int = 0) -> Any:
        code, out, err = self.ok(server_main if prog == "kms-server" else agent_main, [*argv, "--json"])
        assert code == exit_code, f"{prog} {' '.join(argv)}: exit {code}: {err}"
        value = json.loads(out)
        self.emitted[f"{prog} {command}"] |= _fields(value)
        return value


def test_every_json_field_is_documented_and_emitted(
    rig: tuple[ServerProcess, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server, root = rig
    run = _Runner(capsys)

    def srv(command: str, *rest: str) -> Any:
        return run.json("kms-server", command, [*command.split(), *rest, "--data-dir", str(server.data_dir)])

    def agt(who: str, command: str, *rest: str, exit_code: int = 0) -> Any:
        return run.json("kms-agent", command, [command, *rest, "--dir", str(root / who)], exit_code)

    watch = WatchProcess(root / "alice")
    try:
        _keys(srv)
        _agent_side(run, agt, root, tmp_path)
        _revocations(run, srv, agt, root)
        watch.wait_for(lambda evs: any("key" in e for e in evs) and any(e["kind"] == "release" for e in evs))
    finally:
        assert watch.stop() == 0
    run.emitted["kms-agent watch"] = _fields(watch.events)

    problems = []
    for commands, documented in _sections():
        for command in commands:
            if command not in run.emitted:
                problems.append(f"{command}: not run")
            elif extra := run.emitted[command] - documented:
                problems.append(f"{command} emits, docs/cli.md does not list: {sorted(extra)}")
        if missing := documented - set().union(*(run.emitted.get(c, set()) for c in commands)):
            problems.append(f"{', '.join(commands)}: docs/cli.md lists, never emitted: {sorted(missing)}")
    assert not problems, "\n".join(problems)


def _keys(srv: Callable[..., Any]) -> None:
    srv("token create", "--name", "dave", "--group", "web")
    srv("key create", "app", "--grant", "group:web", "--expires-in", "90d", "--rotate-every", "30d")
    srv("key create", "pair", "--type", "ec-p256", "--grant", "group:web")
    srv("key rotate", "app")
    srv("key grant", "app", "agent:carol")
    srv("key ungrant", "app", "agent:carol")
    srv("key set", "app", "--no-expiry")
    srv("key destroy", "app", "--version", "1", "--yes")
    srv("key disable", "pair", "--reason", "a test")
    srv("key show", "pair")
    srv("key list")  # with a disabled key: disabled_at, disabled_reason
    srv("key enable", "pair")
    srv("agents list")
    srv("ca status")


def _agent_side(run: _Runner, agt: Callable[..., Any], root: Path, tmp_path: Path) -> None:
    agt("alice", "status")
    agt("alice", "keys")
    agt("alice", "fetch-key", "app", "--include-key")
    agt("alice", "fetch-key", "pair", "--include-key")
    agt("alice", "fetch-key", "app", "--out", str(tmp_path / "app.key"))
    data = tmp_path / "data.txt"
    data.write_text("signed\n")
    for sig, extra in (("by-agent.sig", []), ("by-key.sig", ["--key", "pair"])):
        signed = run.ok(
            agent_main,
            ["sign", str(data), "--out", str(tmp_path / sig), *extra, "--dir", str(root / "alice")],
        )
        assert signed[0] == 0, signed[2]
        agt("bob", "verify", str(data), str(tmp_path / sig), *(extra or ["--signer", "alice"]))
    agt("alice", "exchange", "--peer", "server")
    agt("alice", "exchange", "--peer", "server", "--out", str(tmp_path / "session.key"))
    listener = subprocess.Popen(
        [exe("kms-agent"), "listen", "--once", "--json", "--dir", str(root / "bob"), "--out-dir", str(tmp_path / "s")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:  # until the listener is listening
            code, out, err = run.ok(
                agent_main, ["exchange", "--peer", "bob", "--json", "--dir", str(root / "alice")]
            )
            if code == 0 or "is not listening" not in err or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert code == 0, err
        run.emitted["kms-agent exchange"] |= _fields(json.loads(out))
        answered, err = listener.communicate(timeout=20)
    finally:
        listener.kill() if listener.poll() is None else None
    assert listener.returncode == 0, err
    run.emitted["kms-agent listen"] |= _fields(json.loads(answered))


def _revocations(run: _Runner, srv: Callable[..., Any], agt: Callable[..., Any], root: Path) -> None:
    renewed_from = agt("bob", "status")["serial"]  # bob's part is done: its lineage is revoked
    renewed = run.ok(agent_main, ["renew", "--dir", str(root / "bob")])
    assert renewed[0] == 0, renewed[2]
    assert srv("revoke cert", renewed_from, "--reason", "keyCompromise", "--yes")["cascaded"]
    carol = agt("carol", "status")["serial"]
    srv("revoke agent", "carol", "--hold")
    srv("release agent", "carol")
    srv("revoke cert", carol, "--reason", "certificateHold")
    srv("release cert", carol)
    srv("revoke key", "app", "--version", "2", "--yes")
    srv("revocations list")
    agt("alice", "check", "--serial", renewed_from, exit_code=11)  # revoked: the exit code says so too
    srv("audit list")
    srv("audit verify")
    srv("top")


def _on_a_terminal(program: str, *args: str, env: dict[str, str] | None = None) -> str:
    """What the command prints in a real pty (wide enough for a table's every column)."""
    child = pexpect.spawn(
        exe(program), list(args), env=_env(env), encoding="utf-8", timeout=30, dimensions=(40, 200)
    )
    text = child.read()
    # The pty's end can come before the process has exited: wait for it (close() would kill it).
    code = child.wait()
    child.close()
    assert code == 0, text
    return str(text)


def test_a_terminal_gets_a_table_with_headers_and_color(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    d = ("--data-dir", str(server.data_dir))
    shown = _on_a_terminal("kms-server", "agents", "list", *d, env={"NO_COLOR": ""})  # empty: no effect
    assert re.search(r"\x1b\[1mNAME.*\x1b\[1mSTATUS", shown)  # bold headers
    assert "\x1b[32mvalid" in shown  # a state in its color
    assert re.search(r"in 2[34] h", shown)  # a certificate's expiry, relative (1-day certificates)

    for program, args, env in [
        ("kms-server", ("agents", "list", *d), {"NO_COLOR": "1"}),
        ("kms-server", ("--no-color", "agents", "list", *d), None),
        ("kms-agent", ("status", "--no-color", "--dir", str(root / "alice")), None),
    ]:
        plain = _on_a_terminal(program, *args, env=env)
        assert "\x1b" not in plain, (args, env)
        assert "NAME" in plain or "spiffe://" in plain
        assert " ago" in plain or "in " in plain  # still a table for a person: relative times

    # Piped: the plain columns and ISO times scripts read, as before.
    piped = server.admin("agents", "list").stdout
    assert piped.splitlines()[0].split() == ["NAME", "GROUPS", "SERIAL", "NOT", "AFTER", "STATUS"]
    assert "\x1b" not in piped and re.search(r"  \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  ", piped)
    assert agent(root / "alice", "status").stdout.startswith("name:      alice\n")
