"""kms-server configuration: one frozen, typed object, validated once at start.

Precedence is defaults < config file < ``KMS_*`` environment < flags. A
config file's keys are the flag names, with ``-`` or ``_`` between words.
Every error names the setting so the operator knows what to fix. The admin
commands find the data dir (and so the admin socket) the same way as ``run``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from kms.addresses import join_hostport, parse_hostport
from kms.cli import config_keys
from kms.durations import format_duration, parse_duration
from kms.errors import InvalidArgument
from kms.identity import validate_trust_domain
from server.ca.keytype import CAKeyType

__all__ = [
    "CAKeyType",
    "ServerConfig",
    "default_data_dir",
    "redact_url",
    "resolve_data_dir",
    "url_has_password",
    "url_holds_secret",
]

MiB = 1024 * 1024


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("KMS_DATA_DIR"):
        return Path(env["KMS_DATA_DIR"])
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    base = env.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(base) / "seed-kms"


def resolve_data_dir(
    flag: str | None, env: Mapping[str, str] | None = None, file: Mapping[str, object] | None = None
) -> Path:
    """The data dir, as `run` and every admin command find it: --data-dir < KMS_DATA_DIR < config file < default.

    ``file`` is the config file's keys as kms.cli.config_keys() returns them.
    """
    env = os.environ if env is None else env
    if flag:
        return Path(flag)
    if env.get("KMS_DATA_DIR"):
        return Path(env["KMS_DATA_DIR"])
    value = (file or {}).get("data_dir")
    if value is not None:
        if not isinstance(value, str) or not value:
            raise InvalidArgument("config file key 'data_dir' must be a path (a string)")
        return Path(value)
    return default_data_dir(env)


def redact_url(url: str) -> str:
    """A database URL without its passwords (user:password@ and ?password=), for messages and `config show`."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        rest = f"{creds.split(':', 1)[0]}:***@{host}"
    return scheme + sep + re.sub(r"((?:^|[?&])(?:ssl)?password=)[^&]*", r"\1***", rest)


def url_has_password(url: str) -> bool:
    """Whether a database URL carries a password (user:password@ or ?password=)."""
    rest = url.partition("://")[2]
    creds, at, _ = rest.rpartition("@")
    return bool(at and ":" in creds) or re.search(r"(?:^|[?&])password=", rest) is not None


def url_holds_secret(url: str) -> bool:
    """Whether a database URL carries anything secret: a password, or a client key's (sslpassword)."""
    return url_has_password(url) or re.search(r"(?:^|[?&])sslpassword=", url.partition("://")[2]) is not None


def _fraction(text: str | None) -> float:
    try:
        value = float(text or "")
    except ValueError:
        raise InvalidArgument(f"--renew-fraction {text!r} is not a number") from None
    if not 0 < value < 1:
        raise InvalidArgument(f"--renew-fraction {value} must be between 0 and 1 (exclusive), like 0.67")
    return value


def _int(text: str | None, what: str) -> int:
    try:
        return int(text or "")
    except ValueError:
        raise InvalidArgument(f"{what} {text!r} is not a whole number") from None


def _choice(text: str | None, what: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        raise InvalidArgument(f"{what} {text!r} is not one of {', '.join(choices)}")
    return text


# Every key a config file may hold (the flag names with underscores).
KNOWN_KEYS = frozenset(
    {
        "data_dir", "listen", "enroll_listen", "san", "trust_domain", "ca_key_type", "cert_ttl", "ca_ttl",
        "server_cert_ttl", "token_ttl", "max_token_ttl", "max_request_bytes", "shutdown_grace", "heartbeat",
        "handshake_timeout", "watch_buffer", "http_listen", "renew_fraction", "log_format", "enroll_rate",
        "auth_failure_rate", "max_streams_per_identity", "database", "database_password_file", "master_key_file",
        "audit_file", "audit_syslog", "tls_handshake_timeout", "max_anonymous_connections_per_address",
        "failure_report_interval", "exchange_rate", "renew_interval",
    }
)  # fmt: skip


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    listen_host: str
    listen_port: int
    enroll_host: str
    enroll_port: int
    sans: tuple[str, ...]
    trust_domain: str | None  # None: as initialised (or "seed-kms.local" on first start)
    ca_key_type: CAKeyType | None  # None: as initialised (or ecdsa-p256 on first start)
    cert_ttl: timedelta
    ca_ttl: timedelta
    server_cert_ttl: timedelta
    token_ttl: timedelta
    max_token_ttl: timedelta
    max_request_bytes: int
    shutdown_grace: timedelta
    heartbeat: timedelta
    handshake_timeout: timedelta
    watch_buffer: int
    http_host: str | None  # None: no HTTP side port
    http_port: int
    renew_fraction: float  # the server renews its own TLS certificate at this fraction of its life
    log_format: str  # "text" or "json"
    enroll_rate: int  # enrollment attempts per peer address per minute
    auth_failure_rate: int  # failed authentications per peer address per minute
    max_streams_per_identity: int  # open streams per agent, all its certificates together
    exchange_rate: int = 10  # key exchanges one agent may start per second
    # At most one renewal per agent in this long (capped at a quarter of cert_ttl: see renew_window).
    renew_interval: timedelta = timedelta(minutes=1)
    # None: the embedded SQLite store in the data dir. Else a postgresql:// URL
    # that several replicas share (it may hold a password: never print it whole).
    database: str | None = None
    # A file (0600) holding the database's password, so that it is in neither the URL
    # nor the command line; PGPASSFILE and PGPASSWORD work too, as in libpq.
    database_password_file: Path | None = None
    # Where a replica of a PostgreSQL deployment reads the shared master key
    # (None: KMS_MASTER_KEY, else master.key in the data dir).
    master_key_file: Path | None = None
    # Audit devices (server/audit/devices.py): a JSON-lines file, and a local syslog socket.
    audit_file: Path | None = None
    audit_syslog: str | None = None
    # A connection whose TLS handshake has not finished by then is dropped (both ports).
    tls_handshake_timeout: timedelta = timedelta(seconds=5)
    # Open connections one peer address may hold on the enrollment port (server/endpoints/gate.py).
    max_anonymous_connections_per_address: int = 32
    # Refusals are logged and audited at most once per peer address per interval (server/endpoints/failures.py).
    failure_report_interval: timedelta = timedelta(seconds=60)

    DEFAULT_TRUST_DOMAIN = "seed-kms.local"

    @property
    def listen(self) -> str:
        return join_hostport(self.listen_host, self.listen_port)

    @property
    def enroll_listen(self) -> str:
        return join_hostport(self.enroll_host, self.enroll_port)

    @property
    def renew_window(self) -> timedelta:
        """How long after one renewal an agent's next is refused: renew_interval, but at most a
        quarter of cert_ttl, so agents with short-lived certificates (which renew at 2/3 of
        their life by default) always can."""
        return min(self.renew_interval, self.cert_ttl / 4)

    @property
    def admin_socket(self) -> Path:
        return self.data_dir / "admin.sock"

    @classmethod
    def load(
        cls,
        flags: Mapping[str, str | list[str] | None],
        env: Mapping[str, str] | None = None,
        file: Mapping[str, object] | None = None,
    ) -> ServerConfig:
        """Builds and validates the config: defaults < file < KMS_* environment < flags (None = unset).

        Raises:
            InvalidArgument: naming the first setting that is wrong or unknown.
        """
        env = os.environ if env is None else env
        # The README promises "TOML keys = flag names": cert-ttl, and cert_ttl too.
        file = config_keys(file or {}, KNOWN_KEYS)

        def pick(name: str, default: str | None) -> str | None:
            value = flags.get(name)
            if value is not None:
                return str(value)
            if "KMS_" + name.upper() in env:
                return env["KMS_" + name.upper()]
            if name in file:
                if isinstance(file[name], list | dict | bool):
                    raise InvalidArgument(f"config file key {name!r} must be a string or a number")
                return str(file[name])
            return default

        def duration(name: str, default: str) -> timedelta:
            return parse_duration(pick(name, default) or default, what=f"--{name.replace('_', '-')}")

        data_dir_flag = flags.get("data_dir")
        data_dir = resolve_data_dir(str(data_dir_flag) if data_dir_flag else None, env, file)
        listen_host, listen_port = parse_hostport(
            pick("listen", "127.0.0.1:8443") or "", what="--listen", allow_zero=True
        )
        # The enrollment listener defaults to the next port (or a free one when
        # --listen asks for port 0); see docs/adr/0001-enrollment-listener.md.
        default_enroll = join_hostport(listen_host, listen_port + 1 if listen_port else 0)
        enroll_host, enroll_port = parse_hostport(
            pick("enroll_listen", default_enroll) or "", what="--enroll-listen", allow_zero=True
        )

        san_flag = flags.get("san")
        if isinstance(san_flag, list) and san_flag:
            sans = tuple(san_flag)
        elif "KMS_SAN" in env or "san" not in file:
            sans = tuple(s.strip() for s in env.get("KMS_SAN", "localhost,127.0.0.1").split(",") if s.strip())
        else:
            if not isinstance(file["san"], list) or not all(isinstance(s, str) for s in file["san"]):
                raise InvalidArgument(
                    "config file key 'san' must be a list of names, like [\"kms.example.org\"]"
                )
            sans = tuple(file["san"])
        if not sans:
            raise InvalidArgument("--san needs at least one DNS name or IP address")

        trust_domain = pick("trust_domain", None)
        if trust_domain is not None:
            validate_trust_domain(trust_domain)
        key_type_text = pick("ca_key_type", None)
        key_type = None
        if key_type_text is not None:
            try:
                key_type = CAKeyType(key_type_text)
            except ValueError:
                choices = ", ".join(k.value for k in CAKeyType)
                raise InvalidArgument(f"--ca-key-type {key_type_text!r} is not one of {choices}") from None

        master_key_file = pick("master_key_file", None)
        audit_file = pick("audit_file", None)
        password_file = pick("database_password_file", None)
        http = pick("http_listen", None)
        http_host, http_port = (
            parse_hostport(http, what="--http-listen", allow_zero=True) if http else (None, 0)
        )
        cfg = cls(
            data_dir=data_dir,
            listen_host=listen_host,
            listen_port=listen_port,
            enroll_host=enroll_host,
            enroll_port=enroll_port,
            sans=sans,
            trust_domain=trust_domain,
            ca_key_type=key_type,
            cert_ttl=duration("cert_ttl", "24h"),
            ca_ttl=duration("ca_ttl", "3650d"),
            server_cert_ttl=duration("server_cert_ttl", "30d"),
            token_ttl=duration("token_ttl", "15m"),
            max_token_ttl=duration("max_token_ttl", "7d"),
            max_request_bytes=_int(pick("max_request_bytes", str(256 * 1024)), "--max-request-bytes"),
            shutdown_grace=duration("shutdown_grace", "5s"),
            heartbeat=duration("heartbeat", "5s"),
            handshake_timeout=duration("handshake_timeout", "10s"),
            watch_buffer=_int(pick("watch_buffer", "1024"), "--watch-buffer"),
            http_host=http_host,
            http_port=http_port,
            renew_fraction=_fraction(pick("renew_fraction", "0.6667")),
            log_format=_choice(pick("log_format", "text"), "--log-format", ("text", "json")),
            enroll_rate=_int(pick("enroll_rate", "30"), "--enroll-rate"),
            auth_failure_rate=_int(pick("auth_failure_rate", "30"), "--auth-failure-rate"),
            max_streams_per_identity=_int(
                pick("max_streams_per_identity", "64"), "--max-streams-per-identity"
            ),
            exchange_rate=_int(pick("exchange_rate", "10"), "--exchange-rate"),
            renew_interval=duration("renew_interval", "1m"),
            database=pick("database", None) or None,
            database_password_file=Path(password_file) if password_file else None,
            master_key_file=Path(master_key_file) if master_key_file else None,
            # Absolute: `config show` says where it is, wherever the server was started from.
            audit_file=Path(audit_file).absolute() if audit_file else None,
            audit_syslog=pick("audit_syslog", None) or None,
            tls_handshake_timeout=duration("tls_handshake_timeout", "5s"),
            max_anonymous_connections_per_address=_int(
                pick("max_anonymous_connections_per_address", "32"), "--max-anonymous-connections-per-address"
            ),
            failure_report_interval=duration("failure_report_interval", "60s"),
        )
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, object]:
        """The effective config, as `kms-server config show` prints it (it holds no secret)."""
        out: dict[str, object] = {
            "data_dir": str(self.data_dir),
            "listen": self.listen,
            "enroll_listen": self.enroll_listen,
            "san": list(self.sans),
            "http_listen": join_hostport(self.http_host, self.http_port) if self.http_host else None,
        }
        # Shown only when set: an embedded deployment has neither.
        if self.database:
            out["database"] = redact_url(self.database)
        if self.database_password_file:
            out["database_password_file"] = str(self.database_password_file)
        if self.master_key_file:
            out["master_key_file"] = str(self.master_key_file)
        out["audit_file"] = str(self.audit_file) if self.audit_file else None
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in (
                "data_dir",
                "sans",
                "database",
                "database_password_file",
                "master_key_file",
                "audit_file",
            ) or f.name.startswith(("listen_", "enroll_h", "enroll_p", "http_")):
                continue
            if isinstance(value, timedelta):
                value = format_duration(value)
            elif isinstance(value, StrEnum):
                value = value.value
            out[f.name] = value
        return out

    def validate(self) -> None:
        """Rejects contradictions and out-of-bound limits, naming the setting."""
        if self.listen_port and self.listen_port == self.enroll_port and self.listen_host == self.enroll_host:
            raise InvalidArgument("--enroll-listen must differ from --listen")
        if self.ca_ttl > timedelta(days=36500):
            raise InvalidArgument("--ca-ttl must be at most 36500d (100 years)")
        if self.cert_ttl > timedelta(days=366):
            raise InvalidArgument(
                "--cert-ttl must be at most 366d: agents renew, long lifetimes only widen exposure"
            )
        if self.server_cert_ttl > timedelta(days=825):
            raise InvalidArgument("--server-cert-ttl must be at most 825d")
        if self.max_token_ttl > timedelta(days=30):
            raise InvalidArgument("--max-token-ttl must be at most 30d")
        if self.cert_ttl > self.ca_ttl:
            raise InvalidArgument("--cert-ttl is longer than --ca-ttl: a certificate cannot outlive its CA")
        if self.cert_ttl < timedelta(seconds=10):
            raise InvalidArgument("--cert-ttl must be at least 10s")
        if self.server_cert_ttl > self.ca_ttl:
            raise InvalidArgument("--server-cert-ttl is longer than --ca-ttl")
        if self.token_ttl > self.max_token_ttl:
            raise InvalidArgument("--token-ttl is longer than --max-token-ttl")
        if not 4096 <= self.max_request_bytes <= 64 * MiB:
            raise InvalidArgument("--max-request-bytes must be between 4096 and 67108864")
        if self.handshake_timeout > timedelta(minutes=2):
            raise InvalidArgument("--handshake-timeout must be at most 2m")
        if self.heartbeat > timedelta(minutes=5):
            raise InvalidArgument("--heartbeat must be at most 5m")
        if not 16 <= self.watch_buffer <= 65536:
            raise InvalidArgument("--watch-buffer must be between 16 and 65536 events")
        if not 1 <= self.enroll_rate <= 100_000:
            raise InvalidArgument("--enroll-rate must be between 1 and 100000 per minute")
        if not 1 <= self.auth_failure_rate <= 100_000:
            raise InvalidArgument("--auth-failure-rate must be between 1 and 100000 per minute")
        if not 1 <= self.max_streams_per_identity <= 10_000:
            raise InvalidArgument("--max-streams-per-identity must be between 1 and 10000")
        if not timedelta(seconds=1) <= self.tls_handshake_timeout <= timedelta(minutes=2):
            raise InvalidArgument("--tls-handshake-timeout must be between 1s and 2m")
        if not 1 <= self.max_anonymous_connections_per_address <= 100_000:
            raise InvalidArgument("--max-anonymous-connections-per-address must be between 1 and 100000")
        if not timedelta(seconds=1) <= self.failure_report_interval <= timedelta(hours=24):
            raise InvalidArgument("--failure-report-interval must be between 1s and 24h")
        if not 1 <= self.exchange_rate <= 10_000:
            raise InvalidArgument("--exchange-rate must be between 1 and 10000 per second")
        if self.renew_interval > timedelta(days=1):
            raise InvalidArgument("--renew-interval must be at most 1d")
        if self.shutdown_grace > timedelta(minutes=5):
            raise InvalidArgument("--shutdown-grace must be at most 5m")
        if self.database is not None and not self.database.startswith(("postgresql://", "postgres://")):
            raise InvalidArgument(
                f"--database {redact_url(self.database)!r} is not a postgresql:// URL "
                "(leave it unset for the embedded SQLite store)"
            )
        if self.audit_syslog is not None and not self.audit_syslog.startswith("/"):
            raise InvalidArgument(
                f"--audit-syslog {self.audit_syslog!r} must be the absolute path of a local syslog socket, like /dev/log"
            )
        if self.audit_file is not None and self.audit_file.is_dir():
            raise InvalidArgument(f"--audit-file {self.audit_file} is a directory: name a file in it")
        if self.database_password_file is not None and self.database is None:
            raise InvalidArgument(
                "--database-password-file is the password of a PostgreSQL store (--database); "
                "the embedded SQLite store has none"
            )
        if self.database_password_file is not None and self.database and url_has_password(self.database):
            raise InvalidArgument(
                f"--database {redact_url(self.database)!r} has a password and --database-password-file gives "
                "another: give it in one place (the file)"
            )
        if self.master_key_file is not None and self.database is None:
            raise InvalidArgument(
                "--master-key-file is for replicas of a PostgreSQL deployment (--database); "
                "the embedded store keeps master.key in its data dir"
            )
