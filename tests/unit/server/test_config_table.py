"""server/config.py's SETTINGS: every row reaches the command line and `config show`, so none can drift."""

from __future__ import annotations

import argparse
import os
import re

import pytest

from kms.settings import Setting
from server.cli import build_parser
from server.config import KNOWN_KEYS, SETTINGS, ServerConfig


def _subcommand(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


@pytest.mark.parametrize("path", [("run",), ("init",), ("config", "show")], ids=" ".join)
def test_every_setting_is_a_flag_of_the_commands_that_read_the_config(path: tuple[str, ...]) -> None:
    parser = _subcommand(build_parser(), *path)
    helps = {flag: action.help for action in parser._actions for flag in action.option_strings}
    for setting in SETTINGS:
        assert helps.get(setting.flag) == setting.help, setting.name


def test_every_setting_has_a_config_show_line() -> None:
    # The lines shown only when set are set here.
    env = {
        "HOME": "/h",
        "KMS_DATABASE": "postgresql://kms@db/kms?sslpassword=s3cret",
        "KMS_DATABASE_PASSWORD_FILE": "/p",
        "KMS_MASTER_KEY_FILE": "/k",
        "KMS_CA_KEY": "pkcs11:token=t;object=ca",
        "KMS_PKCS11_MODULE": "/m.so",
        "KMS_PKCS11_PIN_FILE": "/pin",
    }
    shown = ServerConfig.load({}, env=env).to_dict()
    assert set(shown) == {s.name for s in SETTINGS} | {"data_dir"} == set(KNOWN_KEYS)
    assert shown["database"] == "postgresql://kms@db/kms?sslpassword=***"  # secret: redacted
    shown = ServerConfig.load({}, env={"HOME": "/h"}).to_dict()
    assert {s.name for s in SETTINGS if s.show_unset} | {"data_dir"} == set(shown)


def test_a_default_named_in_the_help_is_the_default() -> None:
    for setting in SETTINGS:
        named = re.search(r"\(default ([^):;]+)\)$", setting.help)
        if named and setting.default is not None:
            assert named.group(1) == setting.default, setting.name


# A value other than the default for each setting (a new setting needs one here).
SAMPLES = {
    "listen": "127.0.0.1:9100", "enroll_listen": "127.0.0.1:9200", "san": "kms.example.org",
    "trust_domain": "t.example", "ca_key_type": "rsa-3072", "cert_ttl": "7h", "ca_ttl": "3000d", "ca_propagation": "2d",
    "ca_rotate_at": "0.5",
    "server_cert_ttl": "20d", "renew_fraction": "0.5", "token_ttl": "10m", "max_token_ttl": "6d",
    "max_request_bytes": "8192", "shutdown_grace": "4s", "http_listen": "127.0.0.1:9300", "heartbeat": "4s",
    "handshake_timeout": "9s", "watch_buffer": "64", "log_format": "json", "enroll_rate": "5",
    "auth_failure_rate": "6", "max_streams_per_identity": "7", "exchange_rate": "8", "renew_interval": "2m",
    "database": "postgresql://kms@other/kms", "database_password_file": "/p", "master_key_file": "/k",
    "audit_file": "/var/log/kms.jsonl", "audit_syslog": "/dev/log", "tls_handshake_timeout": "4s",
    "max_anonymous_connections_per_address": "9", "failure_report_interval": "30s",
    "min_rotation_period": "2h",
    "key_schedule_poll": "2s", "workers": "3",
    "ca_key": "pkcs11:token=t;object=ca", "pkcs11_module": "/usr/lib/m.so", "pkcs11_pin_file": "/pin",
}  # fmt: skip


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_reads_its_flag_variable_and_both_file_spellings(setting: Setting) -> None:
    env = {"HOME": "/h"}
    # Some settings need a PostgreSQL store: given as a flag, which no other source overrides.
    base: dict[str, str | list[str] | None] = (
        {} if setting.name == "database" else {"database": "postgresql://kms@db/kms"}
    )
    text = SAMPLES[setting.name]
    default = ServerConfig.load(base, env=env).to_dict().get(setting.name)
    given = {setting.name: [text] if setting.many else text}
    flag = ServerConfig.load({**base, **given}, env=env).to_dict()[setting.name]
    assert flag != default
    assert ServerConfig.load(base, env={**env, setting.env_name: text}).to_dict()[setting.name] == flag
    for key in (setting.name, setting.name.replace("_", "-")):
        file = {key: [text] if setting.many else text}
        assert ServerConfig.load(base, env=env, file=file).to_dict()[setting.name] == flag


def test_every_setting_has_a_sample() -> None:
    assert set(SAMPLES) == {s.name for s in SETTINGS}


def test_workers_auto_is_one_per_core_this_process_may_run_on() -> None:
    assert ServerConfig.load({}, env={"HOME": "/h"}).workers == len(os.sched_getaffinity(0))
    assert ServerConfig.load({"workers": "AUTO"}, env={"HOME": "/h"}).workers == len(os.sched_getaffinity(0))
    assert ServerConfig.load({"workers": "1"}, env={"HOME": "/h"}).workers == 1
