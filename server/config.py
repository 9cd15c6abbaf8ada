"""kms-server configuration: one frozen, typed object, validated once at start.

Every setting is one row of SETTINGS (kms/settings.py makes the flags, the
``KMS_*`` and config file lookups, the bounds checks and ``config show`` from
it). Precedence is defaults < config file < ``KMS_*`` environment < flags. A
config file's keys are the flag names, with ``-`` or ``_`` between words.
Every error names the setting so the operator knows what to fix. The admin
commands find the data dir (and so the admin socket) the same way as ``run``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from kms.addresses import join_hostport, parse_hostport
from kms.durations import parse_duration
from kms.errors import InvalidArgument
from kms.identity import validate_trust_domain
from kms.settings import Bound, Setting, check_bounds, config_keys, known_keys, resolve, show
from server.ca.keytype import CAKeyType
from server.ca.pkcs11uri import uri_setting
from server.database_url import redact_url, url_has_password

__all__ = [
    "CAKeyType",
    "KNOWN_KEYS",
    "SETTINGS",
    "ServerConfig",
    "default_data_dir",
    "resolve_data_dir",
]


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


def _duration(text: str, s: Setting) -> timedelta:
    return parse_duration(text or s.default or "", what=s.flag)  # empty: the default


def _whole(text: str, s: Setting) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"{s.flag} {text!r} is not a whole number") from None


def _number(text: str, s: Setting) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"{s.flag} {text!r} is not a number") from None


def _text(text: str, s: Setting) -> str:
    return text


def _log_format(text: str, s: Setting) -> str:
    if text not in ("text", "json"):
        raise InvalidArgument(f"{s.flag} {text!r} is not one of text, json")
    return text


def _key_type(text: str, s: Setting) -> CAKeyType:
    try:
        return CAKeyType(text)
    except ValueError:
        choices = ", ".join(k.value for k in CAKeyType)
        raise InvalidArgument(f"{s.flag} {text!r} is not one of {choices}") from None


def _trust_domain(text: str, s: Setting) -> str:
    return validate_trust_domain(text)


def _address(text: str, s: Setting) -> tuple[str, int]:
    return parse_hostport(text, what=s.flag, allow_zero=True)


def _optional_address(text: str, s: Setting) -> tuple[str, int] | None:
    return _address(text, s) if text else None


def _path(text: str, s: Setting) -> Path | None:
    return Path(text) if text else None


def _absolute_path(text: str, s: Setting) -> Path | None:
    # Absolute: `config show` says where it is, wherever the server was started from.
    return Path(text).absolute() if text else None


def _database(text: str, s: Setting) -> str | None:
    if text and not text.startswith(("postgresql://", "postgres://")):
        raise InvalidArgument(
            f"{s.flag} {redact_url(text)!r} is not a postgresql:// URL "
            "(leave it unset for the embedded SQLite store)"
        )
    return text or None


def _syslog_socket(text: str, s: Setting) -> str | None:
    if text and not text.startswith("/"):
        raise InvalidArgument(
            f"{s.flag} {text!r} must be the absolute path of a local syslog socket, like /dev/log"
        )
    return text or None


def _workers(text: str, s: Setting) -> int:
    """auto: one worker per core this process may run on (its CPU affinity, as a container's
    cpuset limits it), the count at which a CPU-bound server stops gaining."""
    if text.strip().lower() == "auto":
        return len(os.sched_getaffinity(0))
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"{s.flag} {text!r} is not a whole number or auto") from None


def _at_most(high: str, note: str = "") -> tuple[Bound, ...]:
    return (Bound(high=high, note=note),)


def _between(low: str, high: str, note: str = "") -> tuple[Bound, ...]:
    return (Bound(low, high, note),)


_S = Setting
# Every setting of `kms-server run`, `init` and `config show`, in --help's order. Each is the flag
# --name-with-dashes, the variable KMS_NAME and the config file key name (or name-with-dashes).
SETTINGS: tuple[Setting, ...] = (
    _S("listen", _address, "127.0.0.1:8443", "mTLS API address HOST:PORT, port 0 picks one (default 127.0.0.1:8443)"),
    _S("enroll_listen", _address, None, "enrollment address HOST:PORT (default: --listen port + 1)"),
    _S("san", _text, "localhost,127.0.0.1", "server certificate name, repeatable (KMS_SAN comma-separated; default localhost, 127.0.0.1)", many=True),
    _S("trust_domain", _trust_domain, None, "SPIFFE trust domain, fixed at init (default seed-kms.local)"),
    _S("ca_key_type", _key_type, None, "CA key type, fixed at init (default ecdsa-p256)", option={"choices": [k.value for k in CAKeyType]}),
    _S("ca_key", uri_setting, None, "the CA key in a PKCS#11 token (HSM), an RFC 7512 URI pkcs11:token=NAME;object=LABEL (default: in software, sealed in the data dir)", show_unset=False),
    _S("pkcs11_module", _absolute_path, None, "the token's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so (with --ca-key)", show_unset=False),
    _S("pkcs11_pin_file", _absolute_path, None, "file (0600) holding the token's user PIN; else KMS_PKCS11_PIN (never a flag)", show_unset=False),
    _S("cert_ttl", _duration, "24h", "agent certificate lifetime, e.g. 24h (default 24h)", (Bound(high="366d", note=": agents renew, long lifetimes only widen exposure"), Bound(low="10s"))),
    _S("ca_ttl", _duration, "3650d", "CA lifetime, used at init (default 3650d)", _at_most("36500d", " (100 years)")),
    _S("ca_propagation", _duration, "24h", "how long a prepared CA is published before ca activate takes it (--now skips it): agents fetch the trust bundle when they connect, so at least --cert-ttl leaves none that still holds a valid certificate behind (default 24h)", _between("5m", "366d")),
    _S("ca_rotate_at", _number, None, "prepare the next CA when the active one has lived this fraction of its life, and activate it ca-propagation later, like 0.5 (default off: ca rotate and ca activate by hand)", (Bound("0", "1", ", like 0.5", exclusive=True),)),
    _S("server_cert_ttl", _duration, "30d", "the server's own TLS certificate lifetime (default 30d)", _at_most("825d")),
    _S("renew_fraction", _number, "0.6667", "renew the server certificate at this fraction of its life (default 0.6667)", (Bound("0", "1", ", like 0.67", exclusive=True),)),
    _S("token_ttl", _duration, "15m", "default join token lifetime (default 15m)"),
    _S("max_token_ttl", _duration, "7d", "longest join token lifetime (default 7d)", _at_most("30d")),
    _S("max_request_bytes", _whole, "262144", "largest request accepted (default 262144)", _between("4096", "67108864")),
    _S("shutdown_grace", _duration, "5s", "how long in-flight calls may finish after SIGTERM (default 5s)", _at_most("5m")),
    _S("http_listen", _optional_address, None, "HTTP side port HOST:PORT for /crl, /ocsp, /metrics, /healthz (default off)"),
    _S("heartbeat", _duration, "5s", "Watch heartbeat interval (default 5s)", _at_most("5m")),
    _S("handshake_timeout", _duration, "10s", "longest wait for one handshake step (default 10s)", _at_most("2m")),
    _S("watch_buffer", _whole, "1024", "events buffered per watcher before it is dropped (default 1024)", _between("16", "65536", " events")),
    _S("log_format", _log_format, "text", "text or json (default text)"),
    _S("enroll_rate", _whole, "30", "failed enrollment attempts per peer address per minute (default 30)", _between("1", "100000", " per minute")),
    _S("auth_failure_rate", _whole, "30", "refused join tokens per peer address per minute (default 30)", _between("1", "100000", " per minute")),
    _S("max_streams_per_identity", _whole, "64", "open streams per agent, all its certificates together (default 64)", _between("1", "10000")),
    _S("exchange_rate", _whole, "10", "key exchanges one agent may start per second (default 10)", _between("1", "10000", " per second")),
    _S("renew_interval", _duration, "1m", "one renewal per agent in this long, at most cert-ttl/4 (default 1m)", _at_most("1d")),
    _S("database", _database, None, "postgresql://USER@HOST/DB shared by replicas (default: SQLite in the data dir)", secret=True, redact=redact_url, show_unset=False),
    _S("database_password_file", _path, None, "file (0600) holding the database password; PGPASSFILE, PGPASSWORD work too", show_unset=False),
    _S("master_key_file", _path, None, "a PostgreSQL replica's master key file (KMS_MASTER_KEY: base64 instead)", show_unset=False),
    _S("audit_file", _absolute_path, None, "also append every audit record to this file, one JSON line each, fsync'd (default off)"),
    _S("audit_syslog", _syslog_socket, None, "also send every audit record to this local syslog socket, e.g. /dev/log (default off)"),
    _S("tls_handshake_timeout", _duration, "5s", "drop a connection whose TLS handshake has not finished by then (default 5s)", _between("1s", "2m")),
    _S("max_anonymous_connections_per_address", _whole, "32", "open connections one peer address may hold on the enrollment port (default 32)", _between("1", "100000")),
    _S("failure_report_interval", _duration, "60s", "log and audit refusals once per peer address per interval (default 60s)", _between("1s", "24h")),
    _S("min_rotation_period", _duration, "1h", "shortest rotation period a key may be given: each rotation keeps a version for good and makes every agent holding the key fetch it again; Vault's auto_rotate_period minimum is 1h too (default 1h)", _between("1s", "366d")),
    _S("workers", _workers, "auto", "worker processes serving the ports, each on its own core (SO_REUSEPORT) under one supervisor; 1 runs the server in one process (default auto: one per usable core)", _between("1", "64")),
    _S("key_schedule_poll", _duration, "5s", "look for scheduled rotations and expiries due at least this often (default 5s)", _between("1s", "1h")),
)  # fmt: skip

# Every key a config file may hold: the settings, and the data dir (which admin commands read too).
KNOWN_KEYS = known_keys(SETTINGS) | {"data_dir"}


@dataclass(frozen=True)
class ServerConfig:
    """The server's settings, as the rest of the server reads them; build it with load().

    One field per row of SETTINGS (their defaults live there), except the addresses,
    split into host and port, and san, kept as sans.
    """

    data_dir: Path
    listen_host: str
    listen_port: int
    enroll_host: str
    enroll_port: int
    sans: tuple[str, ...]
    trust_domain: str | None  # None: as initialised (or "seed-kms.local" on first start)
    ca_key_type: CAKeyType | None  # None: as initialised (or ecdsa-p256 on first start)
    ca_key: str | None  # a PKCS#11 URI (server/ca/hsm.py); None: the key in software
    pkcs11_module: Path | None
    pkcs11_pin_file: Path | None
    cert_ttl: timedelta
    ca_ttl: timedelta
    ca_propagation: timedelta  # the least time between ca rotate and ca activate (without --now)
    ca_rotate_at: float | None  # automatic CA rotation at this fraction of the active CA's life (None: off)
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
    exchange_rate: int  # key exchanges one agent may start per second
    # At most one renewal per agent in this long (capped at a quarter of cert_ttl: see renew_window).
    renew_interval: timedelta
    # None: SQLite in the data dir. Else a postgresql:// URL replicas share (may hold a password: never print it).
    database: str | None
    # A file (0600) holding the database's password, so that it is in neither the URL
    # nor the command line; PGPASSFILE and PGPASSWORD work too, as in libpq.
    database_password_file: Path | None
    # Where a replica of a PostgreSQL deployment reads the shared master key
    # (None: KMS_MASTER_KEY, else master.key in the data dir).
    master_key_file: Path | None
    # Audit devices (server/audit/devices.py): a JSON-lines file, and a local syslog socket.
    audit_file: Path | None
    audit_syslog: str | None
    # A connection whose TLS handshake has not finished by then is dropped (both ports).
    tls_handshake_timeout: timedelta
    # Open connections one peer address may hold on the enrollment port (server/endpoints/gate.py).
    max_anonymous_connections_per_address: int
    # Refusals are logged and audited at most once per peer address per interval (server/endpoints/failures.py).
    failure_report_interval: timedelta
    # The shortest rotation period `key create/set --rotate-every` may give (server/keys/schedule.py).
    min_rotation_period: timedelta
    # The key scheduler looks at the shared schedule at least this often (server/keys/scheduler.py).
    key_schedule_poll: timedelta
    # Worker processes (server/workers/): 1 is one process, as a server always was.
    workers: int

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

    @property
    def san(self) -> tuple[str, ...]:
        return self.sans

    @property
    def http_listen(self) -> str | None:
        return join_hostport(self.http_host, self.http_port) if self.http_host else None

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
        data_dir_flag = flags.get("data_dir")
        data_dir = resolve_data_dir(str(data_dir_flag) if data_dir_flag else None, env, file)
        values: dict[str, Any] = resolve(SETTINGS, flags, env, file)
        listen_host, listen_port = values.pop("listen")
        enroll = values.pop("enroll_listen")
        if enroll is None:
            # The enrollment listener defaults to the next port (or a free one when
            # --listen asks for port 0); see docs/adr/0001-enrollment-listener.md.
            default = join_hostport(listen_host, listen_port + 1 if listen_port else 0)
            enroll = parse_hostport(default, what="--enroll-listen", allow_zero=True)
        http_host, http_port = values.pop("http_listen") or (None, 0)
        cfg = cls(
            data_dir=data_dir,
            listen_host=listen_host,
            listen_port=listen_port,
            enroll_host=enroll[0],
            enroll_port=enroll[1],
            sans=values.pop("san"),
            http_host=http_host,
            http_port=http_port,
            **values,
        )
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, object]:
        """The effective config, as `kms-server config show` prints it (secrets redacted)."""
        return {"data_dir": str(self.data_dir), **show(SETTINGS, self._values())}

    def _values(self) -> dict[str, object]:
        return {s.name: getattr(self, s.name) for s in SETTINGS}

    def validate(self) -> None:
        """Rejects out-of-bound limits (SETTINGS' bounds), then contradictions, naming the setting."""
        check_bounds(SETTINGS, self._values())
        self._check_addresses()
        self._check_lifetimes()
        self._check_store()
        if self.audit_file is not None and self.audit_file.is_dir():
            raise InvalidArgument(f"--audit-file {self.audit_file} is a directory: name a file in it")

    def _check_addresses(self) -> None:
        if not self.sans:
            raise InvalidArgument("--san needs at least one DNS name or IP address")
        if self.listen_port and self.listen_port == self.enroll_port and self.listen_host == self.enroll_host:
            raise InvalidArgument("--enroll-listen must differ from --listen")

    def _check_lifetimes(self) -> None:
        if self.cert_ttl > self.ca_ttl:
            raise InvalidArgument("--cert-ttl is longer than --ca-ttl: a certificate cannot outlive its CA")
        if self.server_cert_ttl > self.ca_ttl:
            raise InvalidArgument("--server-cert-ttl is longer than --ca-ttl")
        if self.token_ttl > self.max_token_ttl:
            raise InvalidArgument("--token-ttl is longer than --max-token-ttl")

    def _check_store(self) -> None:
        """The password file and the master key file belong to a PostgreSQL store, and the password to one place."""
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
