"""kms/completion.py: the scripts shtab writes from both real parsers, which arguments get live
names, the short-lived cache, and a key's versions picked from the words typed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.cli import build_parser as agent_parser
from agent.commands.complete import rule as agent_rule
from kms import completion
from server.cli import build_parser as server_parser
from server.cli.complete import rule as server_rule

PROGRAMS = (("kms-server", server_parser, server_rule), ("kms-agent", agent_parser, agent_rule))


def _wired(parser_rule: tuple[object, ...]) -> dict[tuple[str, ...], str]:
    _, build, rule = parser_rule
    return {
        (*path, action.dest): kind
        for path, action in completion.walk(build())  # type: ignore[operator]
        if (kind := rule(path, action)) is not None  # type: ignore[operator]
    }


def test_the_arguments_that_name_something_get_live_names() -> None:
    server = _wired(PROGRAMS[0])
    assert server[("key", "show", "name")] == server[("revoke", "key", "name")] == "keys"
    assert ("key", "create", "name") not in server  # a new name: nothing to offer
    assert server[("revoke", "agent", "name")] == server[("release", "agent", "name")] == "agents"
    assert server[("revoke", "cert", "serial")] == server[("release", "cert", "serial")] == "serials"
    assert server[("key", "destroy", "version")] == server[("revoke", "key", "version")] == "versions"
    assert server[("key", "grant", "grantee")] == server[("key", "create", "grant")] == "grants"
    assert server[("token", "create", "group")] == "groups"
    agent = _wired(PROGRAMS[1])
    assert agent[("fetch-key", "name")] == agent[("encrypt", "key")] == agent[("sign", "key")] == "keys"
    assert agent[("fetch-key", "version")] == "versions"
    assert agent[("check", "serial")] == "serials"


@pytest.mark.parametrize("shell", completion.SHELLS)
@pytest.mark.parametrize("program", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_each_script_is_valid_for_its_shell_and_calls_the_hidden_subcommand(
    program: tuple[object, ...], shell: str, tmp_path: Path
) -> None:
    prog, build, rule = program
    text = completion.script(build(), shell, rule)  # type: ignore[operator,arg-type]
    assert f"{prog} __complete keys --" in text
    assert "__complete)" not in text and "'__complete'" not in text  # never offered as a subcommand
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell} here to check the syntax")
    path = tmp_path / f"script.{shell}"
    path.write_text(text)
    check = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


def test_the_cache_serves_a_few_seconds_then_is_stale() -> None:
    names = {"keys": ["app"]}
    text = completion.cache_text(names, 1000.0)
    assert completion.from_cache(text, 1000.0 + completion.TTL) == names
    assert completion.from_cache(text, 1000.0 + completion.TTL + 0.1) is None
    assert completion.from_cache(text, 999.0) is None  # written "in the future": the clock moved
    for bad in ("", "{", "[]", '{"at": "x", "names": {}}', '{"at": 1000}'):
        assert completion.from_cache(bad, 1000.0) is None


def test_versions_are_those_of_the_key_on_the_command_line() -> None:
    names = {"keys": ["a", "b"], "versions:a": ["1", "2"], "versions:b": ["1", "10", "3"]}
    assert completion.values(names, "versions", ["kms-server", "key", "destroy", "a", "--version"]) == [
        "1",
        "2",
    ]
    assert completion.values(names, "versions", ["kms-server", "revoke", "key"]) == ["1", "2", "3", "10"]
    assert completion.values(names, "keys", []) == ["a", "b"]
    assert completion.values(names, "agents", []) == []


@pytest.mark.parametrize("program", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_the_hidden_subcommand_parses_but_is_never_listed(program: tuple[object, ...]) -> None:
    _, build, _ = program
    parser = build()  # type: ignore[operator]
    assert parser.parse_args(["__complete", "keys", "--", "x"]).kind == "keys"
    with pytest.raises(Exception, match="invalid choice") as refused:
        parser.parse_args(["bogus"])
    assert "__complete" not in str(refused.value) and "'shell'" in str(refused.value)
    assert "__complete" not in parser.format_help()


def test_only_well_formed_names_are_offered() -> None:
    """Names come from a server, a socket or a state dir typed on the line: anything that is not
    the shape of its kind (a $(...) a shell would run, a newline) is dropped."""
    evil = ["$(touch /tmp/pwned)", "a`id`", "x\ny", "", "web-1"]
    names = {
        "keys": ["app", *evil],
        "agents": evil,
        "groups": evil,
        "serials": ["3a84c4", "$(id)", "XYZ"],
        "versions:app": ["1", "2", "$(id)", "0"],
        "grants": ["agent:web-1", "group:$(id)", "other:x", "group:web"],
    }
    words = ["kms-server", "key", "destroy", "app"]
    assert completion.values(names, "keys", words) == ["app", "web-1"]
    assert completion.values(names, "agents", words) == ["web-1"]
    assert completion.values(names, "groups", words) == ["web-1"]
    assert completion.values(names, "serials", words) == ["3a84c4"]
    assert completion.values(names, "versions", words) == ["1", "2"]
    assert completion.values(names, "grants", words) == ["agent:web-1", "group:web"]


def test_bash_takes_names_literally(tmp_path: Path) -> None:
    """Even a name that slipped through is never expanded by bash: no compgen -W over output."""
    marker = tmp_path / "ran"
    fake = tmp_path / "kms-agent"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' 'app' 'apple' '$(touch {marker})'\n")
    fake.chmod(0o755)
    script = completion.script(agent_parser(), "bash", agent_rule)
    probe = f"{script}\n_kms_agent_live_keys ap\n_kms_agent_live_keys '$'\n"
    result = subprocess.run(
        ["bash", "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
    )
    assert result.stdout.splitlines() == ["app", "apple", f"$(touch {marker})"], result.stderr
    assert not marker.exists()
