"""agent/config.py's SETTINGS: every row is an option of every command, read from KMS_* and the file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.commands import GLOBAL_SETTINGS
from agent.config import SETTINGS, apply_config
from kms.errors import InvalidArgument


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_global_setting_is_an_option_of_every_command() -> None:
    """--renew-fraction is under the commands that renew only (tests/unit/test_cli_options.py)."""
    for name, command in _commands(build_parser()).items():
        flags = {flag for action in command._actions for flag in action.option_strings}
        assert {s.flag for s in GLOBAL_SETTINGS} <= flags, name
    assert {s.flag for s in SETTINGS} - {s.flag for s in GLOBAL_SETTINGS} == {"--renew-fraction"}


def _applied(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    for s in SETTINGS:
        monkeypatch.delenv(s.env_name, raising=False)
    monkeypatch.delenv("KMS_AGENT_CONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = build_parser().parse_args(argv)
    apply_config(args)
    return args


def test_defaults_file_environment_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = _applied(["status"], {}, monkeypatch)
    assert (args.dir, args.timeout, args.log_format, args.renew_fraction) == (None, 15.0, "text", 2 / 3)
    conf = tmp_path / "agent.toml"
    conf.write_text('dir = "/f"\ntimeout = 20\nrenew-fraction = 0.5\n')
    args = _applied(["status", "--config", str(conf)], {"KMS_AGENT_DIR": "/e"}, monkeypatch)
    assert (args.dir, args.timeout, args.renew_fraction) == ("/e", 20.0, 0.5)
    args = _applied(["status", "--config", str(conf), "--timeout", "15"], {"KMS_TIMEOUT": "3"}, monkeypatch)
    assert args.timeout == 15.0  # a flag wins, even one equal to the default


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"KMS_TIMEOUT": "x"}, r"config key 'timeout' \(KMS_TIMEOUT\) must be a float, not 'x'"),
        ({"KMS_TIMEOUT": "0"}, "timeout must be a positive number of seconds"),
        ({"KMS_RENEW_FRACTION": "1"}, r"renew_fraction 1.0 must be between 0 and 1 \(exclusive\)"),
        ({"KMS_LOG_FORMAT": "xml"}, "log_format 'xml' is not one of text, json"),
    ],
    ids=["not-a-number", "zero-timeout", "fraction", "log-format"],
)
def test_bad_values_name_the_key(env: dict[str, str], needle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        _applied(["status"], env, monkeypatch)
