"""kms-agent: enroll with kms-server, then prove the identity over mutual TLS."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from agent.client import DEFAULT_TIMEOUT, KmsClient
from agent.enroll import enroll
from agent.state import StateDir, default_state_dir
from kms.addresses import join_hostport, parse_hostport
from kms.cli import ArgumentParser, print_json, run_main
from kms.errors import AlreadyExists, InvalidArgument

__all__ = ["main"]


def _state(args: argparse.Namespace) -> StateDir:
    return StateDir(Path(args.dir) if args.dir else default_state_dir())


def _default_enroll_server(server: str) -> str:
    # Convention shared with kms-server: enrollment listens on the API port + 1
    # unless told otherwise (docs/adr/0001-enrollment-listener.md).
    host, port = parse_hostport(server, what="--server")
    return join_hostport(host, port + 1)


def cmd_enroll(args: argparse.Namespace) -> int:
    state = _state(args)
    if state.enrolled and not args.force:
        raise AlreadyExists(f"this agent is already enrolled ({state.path}): pass --force to enroll again")
    server = args.server or os.environ.get("KMS_SERVER")
    token = args.token or os.environ.get("KMS_JOIN_TOKEN")
    fp = args.ca_fingerprint or os.environ.get("KMS_CA_FINGERPRINT")
    if not server or not token or not fp:
        raise InvalidArgument(
            "enroll needs --server, --token and --ca-fingerprint (or KMS_SERVER, KMS_JOIN_TOKEN, KMS_CA_FINGERPRINT)"
        )
    enroll_server = (
        args.enroll_server or os.environ.get("KMS_ENROLL_SERVER") or _default_enroll_server(server)
    )
    identity = enroll(
        server=server,
        enroll_server=enroll_server,
        token=token,
        ca_fingerprint=fp,
        key_size=args.key_size,
        timeout=args.timeout,
    )
    state.save(identity)
    not_after = identity.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    print(
        f"enrolled as {identity.settings.name} ({identity.settings.spiffe_id}), certificate {identity.cert.serial_number:x} valid until {not_after}"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    identity = _state(args).load()
    with KmsClient(
        identity.settings.server,
        identity.ca_bundle_pem,
        key_pem=identity.key_pem,
        cert_pem=identity.cert_pem,
        timeout=args.timeout,
    ) as client:
        seen = client.whoami().agent
    not_after = datetime.fromtimestamp(seen.not_after, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if args.json:
        print_json(
            {
                "name": seen.name,
                "groups": list(seen.groups),
                "spiffe_id": seen.spiffe_id,
                "serial": seen.serial,
                "not_after": not_after,
                "server": identity.settings.server,
                "status": seen.status,
            }
        )
    else:
        print(f"name:      {seen.name}")
        print(f"groups:    {','.join(seen.groups) or '-'}")
        print(f"spiffe id: {seen.spiffe_id}")
        print(f"serial:    {seen.serial}")
        print(f"expires:   {not_after}")
        print(f"server:    {identity.settings.server} (verified over mTLS)")
    return 0


def build_parser() -> ArgumentParser:
    common = ArgumentParser(add_help=False)
    common.add_argument("--dir", help="state directory (env KMS_AGENT_DIR; default ~/.local/state/kms-agent)")
    common.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per call")
    common.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")

    parser = ArgumentParser(prog="kms-agent", description="Seed KMS agent.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    en = sub.add_parser(
        "enroll", parents=[common], help="make a key and trade a join token for a certificate"
    )
    en.add_argument("--server", help="the server's mTLS address HOST:PORT (env KMS_SERVER)")
    en.add_argument(
        "--enroll-server",
        help="the enrollment address HOST:PORT (env KMS_ENROLL_SERVER; default: --server port + 1)",
    )
    en.add_argument("--token", help="one-time join token (env KMS_JOIN_TOKEN, which keeps it out of ps)")
    en.add_argument("--ca-fingerprint", help="sha256:HEX as kms-server prints it (env KMS_CA_FINGERPRINT)")
    en.add_argument("--key-size", type=int, choices=(2048, 3072, 4096), default=2048, help="RSA key size")
    en.add_argument("--force", action="store_true", help="replace an existing enrollment")
    en.set_defaults(func=cmd_enroll)

    st = sub.add_parser("status", parents=[common], help="show this agent's identity, proven over mTLS")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("kms-agent", build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
