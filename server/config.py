"""kms-server configuration: one frozen, typed object, validated once at start.

Precedence is defaults < ``KMS_*`` environment < flags (a config file joins
between defaults and environment in a later change). Every error names the
setting so the operator knows what to fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from kms.addresses import join_hostport, parse_hostport
from kms.durations import parse_duration
from kms.errors import InvalidArgument
from kms.identity import validate_trust_domain

__all__ = ["CAKeyType", "ServerConfig", "default_data_dir"]

MiB = 1024 * 1024


class CAKeyType(StrEnum):
    # ECDSA P-256 is the default: the field's usual choice (step-ca, SPIRE),
    # 128-bit security, small certificates, and roughly ten times faster to
    # sign with than RSA-3072, which matters for a CA on the enrollment path.
    EC_P256 = "ecdsa-p256"
    EC_P384 = "ecdsa-p384"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("KMS_DATA_DIR"):
        return Path(env["KMS_DATA_DIR"])
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    base = env.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(base) / "seed-kms"


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

    DEFAULT_TRUST_DOMAIN = "seed-kms.local"

    @property
    def listen(self) -> str:
        return join_hostport(self.listen_host, self.listen_port)

    @property
    def enroll_listen(self) -> str:
        return join_hostport(self.enroll_host, self.enroll_port)

    @property
    def admin_socket(self) -> Path:
        return self.data_dir / "admin.sock"

    @classmethod
    def load(
        cls, flags: Mapping[str, str | list[str] | None], env: Mapping[str, str] | None = None
    ) -> ServerConfig:
        """Builds and validates the config from flags (None = unset) and the environment.

        Raises:
            InvalidArgument: naming the first setting that is wrong.
        """
        env = os.environ if env is None else env

        def pick(name: str, default: str | None) -> str | None:
            value = flags.get(name)
            if value is not None:
                return str(value)
            return env.get("KMS_" + name.upper(), default)

        def duration(name: str, default: str) -> timedelta:
            return parse_duration(pick(name, default) or default, what=f"--{name.replace('_', '-')}")

        data_dir = Path(pick("data_dir", None) or default_data_dir(env))
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
        else:
            sans = tuple(s.strip() for s in env.get("KMS_SAN", "localhost,127.0.0.1").split(",") if s.strip())
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
            max_request_bytes=int(pick("max_request_bytes", str(256 * 1024)) or 0),
            shutdown_grace=duration("shutdown_grace", "5s"),
            heartbeat=duration("heartbeat", "5s"),
            handshake_timeout=duration("handshake_timeout", "10s"),
            watch_buffer=int(pick("watch_buffer", "1024") or 0),
            http_host=http_host,
            http_port=http_port,
        )
        cfg.validate()
        return cfg

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
        if self.cert_ttl < timedelta(minutes=5):
            raise InvalidArgument("--cert-ttl must be at least 5m")
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
        if self.shutdown_grace > timedelta(minutes=5):
            raise InvalidArgument("--shutdown-grace must be at most 5m")
