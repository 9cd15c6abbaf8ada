"""kms-server: run the daemon, and talk to it over the admin socket."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from kms.cli import ArgumentParser, command_parsers, config_keys, print_json, print_table, read_toml, run_main
from kms.durations import parse_duration
from kms.errors import InvalidArgument
from kms.events import describe, event_fields
from kms.revocation import REASONS
from kms.v1 import admin_pb2
from server.app import initialize, serve
from server.ca.keytype import CAKeyType
from server.cli.admin_client import AdminClient
from server.cli.audit import add_audit_commands
from server.config import KNOWN_KEYS, ServerConfig, resolve_data_dir, url_holds_secret
from server.deployment.backup import restore

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _config_file(args: argparse.Namespace) -> dict[str, object] | None:
    """The config file of --config or KMS_CONFIG, with its keys in one spelling (None: no file)."""
    path = args.config or os.environ.get("KMS_CONFIG")
    return config_keys(read_toml(Path(path)), KNOWN_KEYS) if path else None


def _data_dir(args: argparse.Namespace) -> Path:
    """The data dir exactly as `run` finds it: --data-dir, KMS_DATA_DIR, the config file, the default."""
    return resolve_data_dir(args.data_dir, file=_config_file(args))


def _admin(args: argparse.Namespace) -> AdminClient:
    return AdminClient(_data_dir(args) / "admin.sock")


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
    cfg = ServerConfig.load(flags, file=_config_file(args))
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


def cmd_token_create(args: argparse.Namespace) -> int:
    ttl = int(parse_duration(args.ttl, what="--ttl").total_seconds()) if args.ttl else 0
    with _admin(args) as admin:
        resp = admin.create_join_token(args.name, args.group or [], ttl, args.allow_reenroll, args.replace)
    if args.json:
        print_json(
            {
                "token": resp.token,
                "token_id": resp.token_id,
                "name": resp.name,
                "groups": list(resp.groups),
                "expires_at": _iso(resp.expires_at),
            }
        )
    else:
        print(resp.token)
    return 0


def cmd_ca_fingerprint(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        print(admin.get_ca().fingerprint)
    return 0


def cmd_ca_cert(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        print(admin.get_ca().certificate_pem, end="")
    return 0


def cmd_agents_list(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        agents = admin.list_agents().agents
    if args.json:
        print_json(
            [
                {
                    "name": a.name,
                    "groups": list(a.groups),
                    "spiffe_id": a.spiffe_id,
                    "serial": a.serial,
                    "not_after": _iso(a.not_after),
                    "status": a.status,
                }
                for a in agents
            ]
        )
    else:
        print_table(
            ["NAME", "GROUPS", "SERIAL", "NOT AFTER", "STATUS"],
            [[a.name, ",".join(a.groups) or "-", a.serial, _iso(a.not_after), a.status] for a in agents],
        )
    return 0


def _key_json(key: admin_pb2.KeyInfo) -> dict[str, object]:
    return {
        "name": key.name,
        "current_version": key.current_version,
        "created_at": _iso(key.created_at),
        "versions": [
            {"version": v.version, "state": v.state, "created_at": _iso(v.created_at)} for v in key.versions
        ],
        "grants": list(key.grants),
    }


def _print_key(key: admin_pb2.KeyInfo, as_json: bool) -> None:
    for warning in key.warnings:  # on stderr: stdout stays the key's description (or JSON)
        print(f"kms-server: warning: {warning}", file=sys.stderr)
    if as_json:
        print_json(_key_json(key))
        return
    versions = ", ".join(f"v{v.version} {v.state}" for v in key.versions)
    print(
        f"{key.name}: current version {key.current_version} ({versions}); grants: {', '.join(key.grants) or '-'}"
    )


def cmd_key_create(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        _print_key(admin.create_key(args.name, args.grant or [], args.allow_unknown_grantee), args.json)
    return 0


def cmd_key_rotate(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        _print_key(admin.rotate_key(args.name), args.json)
    return 0


def cmd_key_grant(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        key = (
            admin.grant_key(args.name, args.grantee, args.allow_unknown_grantee)
            if args.key_command == "grant"
            else admin.ungrant_key(args.name, args.grantee)
        )
        _print_key(key, args.json)
    return 0


def cmd_key_destroy(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        _print_key(admin.destroy_key_version(args.name, args.version), args.json)
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        keys = admin.list_keys().keys
    if args.json:
        print_json([_key_json(k) for k in keys])
    else:
        print_table(
            ["NAME", "CURRENT", "VERSIONS", "GRANTS"],
            [
                [
                    k.name,
                    str(k.current_version),
                    " ".join(f"v{v.version}:{v.state}" for v in k.versions),
                    ",".join(k.grants) or "-",
                ]
                for k in keys
            ],
        )
    return 0


def _print_revocation(resp: admin_pb2.RevokeResponse, as_json: bool) -> None:
    if as_json:
        fields: dict[str, object] = {**event_fields(resp.event), "already_revoked": resp.already_revoked}
        if resp.cascaded:
            fields["cascaded"] = [event_fields(e) for e in resp.cascaded]
        print_json(fields)
    else:
        print(("already revoked: " if resp.already_revoked else "revoked: ") + describe(resp.event))
        for event in resp.cascaded:
            print("renewed from it, revoked too: " + describe(event))


def cmd_revoke(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        if args.revoke_command == "cert":
            resp = admin.revoke_certificate(args.serial, args.reason)
        elif args.revoke_command == "agent":
            resp = admin.revoke_agent(args.name, args.reason)
        else:
            resp = admin.revoke_key(args.name, args.version, args.reason)
    _print_revocation(resp, args.json)
    return 0


def cmd_revocations_list(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        events = admin.list_revocations().events
    if args.json:
        print_json([event_fields(e) for e in events])
    else:
        for event in events:
            print(describe(event))
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    target = Path(args.file).resolve()
    with _admin(args) as admin:
        resp = admin.backup(str(target))
    print(f"backup written to {resp.path} ({resp.bytes} bytes); it does not contain the master key")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    master = Path(args.master_key) if args.master_key else None
    if master is None:
        raise InvalidArgument("restore needs --master-key FILE: the backup does not contain it")
    restore(Path(args.file), data_dir, master)
    print(f"restored {args.file} into {data_dir}: start it with kms-server run --data-dir {data_dir}")
    return 0


def build_parser() -> ArgumentParser:
    parser, common = command_parsers(
        "kms-server",
        "Seed KMS server: CA and key distributor.",
        [
            (
                ("--data-dir",),
                {
                    "default": None,
                    "help": "data directory (env KMS_DATA_DIR; else the config file's data_dir;"
                    " default ~/.local/share/seed-kms)",
                },
            ),
            (
                ("--config",),
                {
                    "default": None,
                    "help": "TOML config file (env KMS_CONFIG): keys are the flag names; flags and KMS_*"
                    " variables win. Every command reads it, so admin commands find the same data dir",
                },
            ),
        ],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run_options = ArgumentParser(add_help=False)
    for flag, text in RUN_OPTIONS:
        if flag == "--san":
            run_options.add_argument(flag, action="append", help=text)
        elif flag == "--ca-key-type":
            run_options.add_argument(flag, choices=[k.value for k in CAKeyType], help=text)
        else:
            run_options.add_argument(flag, help=text)
    run = sub.add_parser(
        "run", parents=[common, run_options], help="run the server (creates the CA on first start)"
    )
    run.set_defaults(func=cmd_run)
    init = sub.add_parser(
        "init",
        parents=[common, run_options],
        help="create the CA and master key (once per deployment), then exit; run does it on first start too",
    )
    init.set_defaults(func=cmd_init)
    config = sub.add_parser("config", help="the configuration").add_subparsers(
        dest="config_command", required=True, metavar="COMMAND"
    )
    show = config.add_parser(
        "show", parents=[common, run_options], help="print the effective config (no secrets)"
    )
    show.set_defaults(func=cmd_config_show)

    token = sub.add_parser("token", help="join tokens").add_subparsers(
        dest="token_command", required=True, metavar="COMMAND"
    )
    create = token.add_parser("create", parents=[common], help="create a one-time join token for an agent")
    create.add_argument("--name", required=True, help="the agent's name")
    create.add_argument("--group", action="append", help="a group the agent joins, repeatable")
    create.add_argument("--ttl", help="token lifetime, e.g. 15m (default: the server's --token-ttl)")
    create.add_argument("--json", action="store_true", help="print token, name, groups and expiry as JSON")
    create.add_argument(
        "--allow-reenroll", action="store_true", help="let a revoked agent of this name enroll again"
    )
    create.add_argument(
        "--replace",
        action="store_true",
        help="for a name that holds a valid certificate: enrolling with this token revokes it (superseded);"
        " without it such a name is refused, so no two machines hold one identity",
    )
    create.set_defaults(func=cmd_token_create)

    ca = sub.add_parser("ca", help="the certificate authority").add_subparsers(
        dest="ca_command", required=True, metavar="COMMAND"
    )
    ca.add_parser("fingerprint", parents=[common], help="print the CA fingerprint agents pin").set_defaults(
        func=cmd_ca_fingerprint
    )
    ca.add_parser("cert", parents=[common], help="print the CA certificate (PEM)").set_defaults(
        func=cmd_ca_cert
    )

    agents = sub.add_parser("agents", help="enrolled agents").add_subparsers(
        dest="agents_command", required=True, metavar="COMMAND"
    )
    ls = agents.add_parser("list", parents=[common], help="list enrolled agents")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_agents_list)
    key = sub.add_parser("key", help="AES keys: create, rotate, grant, list, destroy").add_subparsers(
        dest="key_command", required=True, metavar="COMMAND"
    )
    kc = key.add_parser("create", parents=[common], help="create a key (version 1)")
    kc.add_argument("name")
    kc.add_argument("--grant", action="append", help="agent:NAME or group:NAME, repeatable")
    kc.set_defaults(func=cmd_key_create)
    unknown_grantee = (
        "accept agent:NAME for an agent neither enrolled nor named by an unused join token (warns);"
        " refused without it"
    )
    kc.add_argument("--allow-unknown-grantee", action="store_true", help=unknown_grantee)
    kr = key.add_parser(
        "rotate", parents=[common], help="make a new current version; older ones still decrypt"
    )
    kr.add_argument("name")
    kr.set_defaults(func=cmd_key_rotate)
    for verb, text in (("grant", "let an agent or group fetch the key"), ("ungrant", "withdraw a grant")):
        kg = key.add_parser(verb, parents=[common], help=text)
        kg.add_argument("name")
        kg.add_argument("grantee", help="agent:NAME or group:NAME")
        if verb == "grant":
            kg.add_argument("--allow-unknown-grantee", action="store_true", help=unknown_grantee)
        kg.set_defaults(func=cmd_key_grant)
    kl = key.add_parser("list", parents=[common], help="list keys, versions and grants (never key material)")
    kl.set_defaults(func=cmd_key_list)
    kd = key.add_parser("destroy", parents=[common], help="erase one non-current version for good")
    kd.add_argument("name")
    kd.add_argument("--version", type=int, required=True)
    kd.set_defaults(func=cmd_key_destroy)
    for p in (kc, kr, kl, kd, *[key.choices[v] for v in ("grant", "ungrant")]):
        p.add_argument("--json", action="store_true")

    reasons = f"RFC 5280 reason: {', '.join(REASONS)} (default unspecified)"
    revoke = sub.add_parser("revoke", help="revoke a certificate, an agent or a key version").add_subparsers(
        dest="revoke_command", required=True, metavar="WHAT"
    )
    rc = revoke.add_parser("cert", parents=[common], help="revoke one certificate by serial")
    rc.add_argument("serial")
    ra = revoke.add_parser(
        "agent", parents=[common], help="revoke every certificate of an agent; bar re-enrollment"
    )
    ra.add_argument("name")
    rk = revoke.add_parser(
        "key", parents=[common], help="mark a key version compromised (rotates if current)"
    )
    rk.add_argument("name")
    rk.add_argument("--version", type=int, required=True)
    for p in (rc, ra, rk):
        p.add_argument("--reason", default="", help=reasons)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_revoke)

    revocations = sub.add_parser("revocations", help="the revocation event log").add_subparsers(
        dest="revocations_command", required=True, metavar="COMMAND"
    )
    rl = revocations.add_parser("list", parents=[common], help="list every revocation event")
    rl.add_argument("--json", action="store_true")
    rl.set_defaults(func=cmd_revocations_list)

    bk = sub.add_parser(
        "backup", parents=[common], help="write a consistent online backup (no master key in it)"
    )
    bk.add_argument("file", metavar="FILE")
    bk.set_defaults(func=cmd_backup)
    rs = sub.add_parser(
        "restore", parents=[common], help="unpack a backup into a new data dir (server stopped)"
    )
    rs.add_argument("file", metavar="FILE")
    rs.add_argument("--master-key", help="the master key file of the backed-up server")
    rs.set_defaults(func=cmd_restore)

    add_audit_commands(sub, common, _admin)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    # The daemon keeps gRPC's own error log; admin commands print one line.
    return run_main("kms-server", build_parser(), argv, quiet_grpc=args[:1] != ["run"])


if __name__ == "__main__":
    raise SystemExit(main())
