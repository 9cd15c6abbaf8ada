"""server/config.py: precedence, defaults, and contradictions named."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from kms.errors import InvalidArgument
from server.config import CAKeyType, ServerConfig


def test_defaults() -> None:
    cfg = ServerConfig.load({}, env={"HOME": "/home/op"})
    assert cfg.data_dir == Path("/home/op/.local/share/seed-kms")
    assert (cfg.listen, cfg.enroll_listen) == ("127.0.0.1:8443", "127.0.0.1:8444")
    assert cfg.sans == ("localhost", "127.0.0.1")
    assert cfg.cert_ttl == timedelta(hours=24) and cfg.token_ttl == timedelta(minutes=15)
    assert cfg.trust_domain is None and cfg.ca_key_type is None  # decided by the data dir, else defaults


def test_flags_beat_environment_beat_defaults() -> None:
    env = {
        "KMS_LISTEN": "0.0.0.0:9000",
        "KMS_CERT_TTL": "12h",
        "KMS_SAN": "kms.example.org, 10.0.0.1",
        "KMS_CA_KEY_TYPE": "rsa-3072",
        "KMS_DATA_DIR": "/srv/kms",
    }
    cfg = ServerConfig.load({"cert_ttl": "6h"}, env=env)
    assert cfg.listen == "0.0.0.0:9000" and cfg.enroll_listen == "0.0.0.0:9001"
    assert cfg.cert_ttl == timedelta(hours=6)
    assert cfg.sans == ("kms.example.org", "10.0.0.1")
    assert cfg.ca_key_type is CAKeyType.RSA_3072
    assert cfg.data_dir == Path("/srv/kms")
    cfg = ServerConfig.load({"san": ["a.example"], "listen": "[::1]:0"}, env=env)
    assert cfg.sans == ("a.example",) and cfg.listen == "[::1]:0" and cfg.enroll_port == 0


@pytest.mark.parametrize(
    "flags, needle",
    [
        ({"cert_ttl": "48h", "ca_ttl": "1d"}, "--cert-ttl is longer than --ca-ttl"),
        ({"cert_ttl": "5s"}, "--cert-ttl must be at least"),
        ({"listen": "localhost"}, "--listen"),
        ({"listen": "h:70000"}, "--listen"),
        ({"listen": "127.0.0.1:5000", "enroll_listen": "127.0.0.1:5000"}, "--enroll-listen must differ"),
        ({"ca_key_type": "dsa-1024"}, "--ca-key-type"),
        ({"trust_domain": "UPPER"}, "trust domain"),
        ({"token_ttl": "30d"}, "--token-ttl"),
    ],
)
def test_contradictions_name_the_setting(flags: dict[str, str], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        ServerConfig.load(flags, env={})


@pytest.mark.parametrize(
    "flags, needle",
    [
        ({"ca_ttl": "3000000d"}, "--ca-ttl must be at most"),
        ({"cert_ttl": "400d"}, "--cert-ttl must be at most"),
        ({"server_cert_ttl": "900d"}, "--server-cert-ttl must be at most"),
        ({"max_token_ttl": "60d"}, "--max-token-ttl must be at most"),
    ],
)
def test_every_lifetime_has_a_bound(flags: dict[str, str], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        ServerConfig.load(flags, env={})


def test_database_comes_from_the_environment_and_never_shows_its_password() -> None:
    cfg = ServerConfig.load(
        {},
        env={
            "HOME": "/h",
            "KMS_DATABASE": "postgresql://kms:s3cret@db:5432/kms",
            "KMS_MASTER_KEY_FILE": "/k",
        },
    )
    assert cfg.database == "postgresql://kms:s3cret@db:5432/kms" and cfg.master_key_file == Path("/k")
    shown = cfg.to_dict()
    assert shown["database"] == "postgresql://kms:***@db:5432/kms" and "s3cret" not in str(shown)
    assert ServerConfig.load({}, env={"HOME": "/h"}).database is None  # SQLite


@pytest.mark.parametrize(
    "flags, needle",
    [
        ({"database": "mysql://kms@db/kms"}, "is not a postgresql:// URL"),
        ({"database": "sqlite:///x.db"}, "is not a postgresql:// URL"),
        ({"master_key_file": "/k"}, "--master-key-file is for replicas"),
    ],
)
def test_database_settings_are_checked(flags: dict[str, str], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        ServerConfig.load(flags, env={"HOME": "/h"})


def test_audit_devices_come_from_flags_environment_or_file(tmp_path: Path) -> None:
    cfg = ServerConfig.load({}, env={"HOME": "/h"})
    assert (cfg.audit_file, cfg.audit_syslog) == (None, None)  # off by default
    cfg = ServerConfig.load({}, env={"HOME": "/h", "KMS_AUDIT_FILE": "/var/log/kms/audit.jsonl"})
    assert cfg.audit_file == Path("/var/log/kms/audit.jsonl") and cfg.to_dict()["audit_file"] == str(
        cfg.audit_file
    )
    cfg = ServerConfig.load(
        {}, env={"HOME": "/h"}, file={"audit_syslog": "/dev/log", "audit_file": "rel.jsonl"}
    )
    assert cfg.audit_syslog == "/dev/log" and cfg.audit_file == Path("rel.jsonl").absolute()


@pytest.mark.parametrize(
    "flags, needle",
    [
        ({"audit_syslog": "localhost:514"}, "--audit-syslog 'localhost:514' must be the absolute path"),
        ({"audit_file": "/"}, "--audit-file / is a directory"),
    ],
)
def test_audit_device_settings_are_checked(flags: dict[str, str], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        ServerConfig.load(flags, env={"HOME": "/h"})


@pytest.mark.parametrize(
    "flags, needle",
    [
        ({"tls_handshake_timeout": "500ms"}, "--tls-handshake-timeout"),
        ({"tls_handshake_timeout": "3m"}, "--tls-handshake-timeout must be between"),
        ({"max_anonymous_connections_per_address": "0"}, "--max-anonymous-connections-per-address"),
        ({"max_anonymous_connections_per_address": "many"}, "--max-anonymous-connections-per-address"),
        ({"failure_report_interval": "2d"}, "--failure-report-interval must be between"),
    ],
)
def test_anonymous_limits_have_bounds(flags: dict[str, str], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        ServerConfig.load(flags, env={})


def test_anonymous_limits_defaults_and_environment() -> None:
    cfg = ServerConfig.load({}, env={"HOME": "/h"})
    assert cfg.tls_handshake_timeout == timedelta(seconds=5)
    assert cfg.max_anonymous_connections_per_address == 32
    assert cfg.failure_report_interval == timedelta(seconds=60)
    env = {"HOME": "/h", "KMS_TLS_HANDSHAKE_TIMEOUT": "2s", "KMS_MAX_ANONYMOUS_CONNECTIONS_PER_ADDRESS": "4"}
    cfg = ServerConfig.load({}, env=env, file={"failure_report_interval": "10s"})
    assert cfg.tls_handshake_timeout == timedelta(seconds=2)
    assert cfg.max_anonymous_connections_per_address == 4
    assert cfg.failure_report_interval == timedelta(seconds=10)


def test_config_file_keys_are_the_flag_names_with_dashes_or_underscores() -> None:
    file = {"cert-ttl": "2h", "token_ttl": "5m", "max-streams-per-identity": 8}
    cfg = ServerConfig.load({}, env={"HOME": "/h"}, file=file)
    assert cfg.cert_ttl == timedelta(hours=2) and cfg.token_ttl == timedelta(minutes=5)
    assert cfg.max_streams_per_identity == 8
    with pytest.raises(InvalidArgument, match="'cert_ttl' twice"):
        ServerConfig.load({}, env={}, file={"cert-ttl": "2h", "cert_ttl": "3h"})
    with pytest.raises(InvalidArgument, match="'cert_tll' is unknown"):
        ServerConfig.load({}, env={}, file={"cert-tll": "2h"})


def test_the_data_dir_is_found_the_same_way_by_run_and_admin_commands() -> None:
    from server.config import resolve_data_dir

    file = {"data_dir": "/from/file"}
    env = {"HOME": "/h"}
    assert resolve_data_dir(None, env, file) == Path("/from/file")
    assert resolve_data_dir(None, {**env, "KMS_DATA_DIR": "/from/env"}, file) == Path("/from/env")
    assert resolve_data_dir("/from/flag", {**env, "KMS_DATA_DIR": "/from/env"}, file) == Path("/from/flag")
    assert resolve_data_dir(None, env, None) == Path("/h/.local/share/seed-kms")
    for flags, fenv in (({}, env), ({"data_dir": "/from/flag"}, env), ({}, {**env, "KMS_DATA_DIR": "/e"})):
        loaded = ServerConfig.load(flags, env=fenv, file=file).data_dir
        assert loaded == resolve_data_dir(flags.get("data_dir"), fenv, file)
