"""kms-server run | init | config show | restore: the daemon's own commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from kms.cli import ArgumentParser, Subcommands, print_json
from kms.errors import InvalidArgument
from server.app import initialize, serve
from server.ca.keytype import CAKeyType
from server.cli.context import config_file
from server.cli.context import data_dir as find_data_dir
from server.config import ServerConfig, url_holds_secret
from server.deployment.backup import restore

__all__ = ["add_config", "add_init", "add_restore", "add_run"]

logger = logging.getLogger(__name__)


# Every option of `kms-server run` (and `config show`): flag, help. Each also
# reads KMS_<NAME> and the config file key <name>.
RUN_OPTIONS: list[tuple[str, str]] = [
    ("--listen", "mTLS API address HOST:PORT, port 0 picks one (default 127.0.0.1:8443)"),
    ("--enroll-listen", "enrollment address HOST:PORT (default: --listen port + 1)"),
    ("--san", "server certificate name, repeatable (KMS_SAN comma-separated; default localhost, 127.0.0.1)"),
    ("--trust-domain", "SPIFFE trust domain, fixed at init (default seed-kms.local)"),
    ("--ca-key-type", "CA key type, fixed at init (default ecdsa-p256)"),
    ("--cert-ttl", "agent certificate lifetime, e.g. 24h (default 24h)"),
    ("--ca-ttl", "CA lifetime, used at init (default 3650d)"),
    ("--server-cert-ttl", "the server's own TLS certificate lifetime (default 30d)"),
    ("--renew-fraction", "renew the server certificate at this fraction of its life (default 0.6667)"),
    ("--token-ttl", "default join token lifetime (default 15m)"),
    ("--max-token-ttl", "longest join token lifetime (default 7d)"),
    ("--max-request-bytes", "largest request accepted (default 262144)"),
    ("--shutdown-grace", "how long in-flight calls may finish after SIGTERM (default 5s)"),
    ("--http-listen", "HTTP side port HOST:PORT for /crl, /ocsp, /metrics, /healthz (default off)"),
    ("--heartbeat", "Watch heartbeat interval (default 5s)"),
    ("--handshake-timeout", "longest wait for one handshake step (default 10s)"),
    ("--watch-buffer", "events buffered per watcher before it is dropped (default 1024)"),
    ("--log-format", "text or json (default text)"),
    ("--enroll-rate", "failed enrollment attempts per peer address per minute (default 30)"),
    ("--auth-failure-rate", "refused join tokens per peer address per minute (default 30)"),
    ("--max-streams-per-identity", "open streams per agent, all its certificates together (default 64)"),
    ("--exchange-rate", "key exchanges one agent may start per second (default 10)"),
    ("--renew-interval", "one renewal per agent in this long, at most cert-ttl/4 (default 1m)"),
    ("--database", "postgresql://USER@HOST/DB shared by replicas (default: SQLite in the data dir)"),
    (
        "--database-password-file",
        "file (0600) holding the database password; PGPASSFILE, PGPASSWORD work too",
    ),
    ("--master-key-file", "a PostgreSQL replica's master key file (KMS_MASTER_KEY: base64 instead)"),
    (
        "--audit-file",
        "also append every audit record to this file, one JSON line each, fsync'd (default off)",
    ),
    (
        "--audit-syslog",
        "also send every audit record to this local syslog socket, e.g. /dev/log (default off)",
    ),
    (
        "--tls-handshake-timeout",
        "drop a connection whose TLS handshake has not finished by then (default 5s)",
    ),
    (
        "--max-anonymous-connections-per-address",
        "open connections one peer address may hold on the enrollment port (default 32)",
    ),
    ("--failure-report-interval", "log and audit refusals once per peer address per interval (default 60s)"),
]


def _config(args: argparse.Namespace) -> ServerConfig:
    flags = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag, _ in RUN_OPTIONS}
    flags["data_dir"] = args.data_dir
    cfg = ServerConfig.load(flags, file=config_file(args))
    if args.database and url_holds_secret(args.database):
        # The command line is world-readable (ps, /proc/PID/cmdline); the environment and files are not.
        logger.warning(
            "--database on the command line holds a password, which any local user can read in ps: give "
            "the URL without it, and the password in --database-password-file (0600), PGPASSFILE or "
            "PGPASSWORD, or the whole URL in KMS_DATABASE or the config file"
        )
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    return asyncio.run(serve(_config(args)))


def cmd_init(args: argparse.Namespace) -> int:
    deployment = asyncio.run(initialize(_config(args)))
    verb = "created" if deployment.created else "already initialised:"
    print(f"{verb} trust-domain={deployment.trust_domain} ca-fingerprint={deployment.fingerprint}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    print_json(_config(args).to_dict())
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    data_dir = find_data_dir(args)
    master = Path(args.master_key) if args.master_key else None
    if master is None:
        raise InvalidArgument("restore needs --master-key FILE: the backup does not contain it")
    restore(Path(args.file), data_dir, master)
    print(f"restored {args.file} into {data_dir}: start it with kms-server run --data-dir {data_dir}")
    return 0


def _run_options() -> ArgumentParser:
    """The parent parser of every command that reads the whole config: run, init, config show."""
    run_options = ArgumentParser(add_help=False)
    for flag, text in RUN_OPTIONS:
        if flag == "--san":
            run_options.add_argument(flag, action="append", help=text)
        elif flag == "--ca-key-type":
            run_options.add_argument(flag, choices=[k.value for k in CAKeyType], help=text)
        else:
            run_options.add_argument(flag, help=text)
    return run_options


def add_run(sub: Subcommands, common: ArgumentParser) -> None:
    run = sub.add_parser(
        "run", parents=[common, _run_options()], help="run the server (creates the CA on first start)"
    )
    run.set_defaults(func=cmd_run)


def add_init(sub: Subcommands, common: ArgumentParser) -> None:
    init = sub.add_parser(
        "init",
        parents=[common, _run_options()],
        help="create the CA and master key (once per deployment), then exit; run does it on first start too",
    )
    init.set_defaults(func=cmd_init)


def add_config(sub: Subcommands, common: ArgumentParser) -> None:
    config = sub.add_parser("config", help="the configuration").add_subparsers(
        dest="config_command", required=True, metavar="COMMAND"
    )
    show = config.add_parser(
        "show", parents=[common, _run_options()], help="print the effective config (no secrets)"
    )
    show.set_defaults(func=cmd_config_show)


def add_restore(sub: Subcommands, common: ArgumentParser) -> None:
    rs = sub.add_parser(
        "restore", parents=[common], help="unpack a backup into a new data dir (server stopped)"
    )
    rs.add_argument("file", metavar="FILE")
    rs.add_argument("--master-key", help="the master key file of the backed-up server")
    rs.set_defaults(func=cmd_restore)
