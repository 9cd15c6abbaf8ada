"""kms-agent revocation commands: watch and check."""

from __future__ import annotations

import argparse

from cryptography import x509

from agent.commands import add_renewal_options
from agent.context import connect, iso, state_dir
from agent.servers import Servers
from agent.watch import Watcher
from kms.cli import ArgumentParser, Subcommands, add_listing_options, print_json, print_views
from kms.errors import Held, InvalidArgument, NotFound, Revoked
from kms.output import Cell, Record, State, When
from kms.revocation import HOLD
from kms.securefile import open_input

__all__ = ["add_check", "add_watch", "cmd_check", "cmd_watch"]


def cmd_watch(args: argparse.Namespace) -> int:
    state = state_dir(args)
    identity = state.load()
    # One Servers for every reconnection: a broken stream moves on to the next address.
    servers = Servers(identity.settings.servers)
    watcher = Watcher(
        state,
        identity,
        lambda: connect(args, servers=servers)[1],
        as_json=args.json,
        exec_cmd=args.exec,
        silence_timeout=args.silence_timeout,
    )
    return watcher.run()


def cmd_check(args: argparse.Namespace) -> int:
    if bool(args.serial) == bool(args.cert):
        raise InvalidArgument("check needs exactly one of --serial or --cert")
    serial = args.serial
    if args.cert:
        try:
            with open_input(args.cert) as f:
                pem = f.read()
            serial = format(x509.load_pem_x509_certificate(pem).serial_number, "x")
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"--cert {args.cert} is not a readable PEM certificate") from exc
    # A question about any certificate, often a relying party's: it never renews this agent's own.
    _, client = connect(args, auto_renew=False)
    with client:
        status = client.check_certificate(serial)
    # A hold is "revoked" on the wire (reason certificateHold, as OCSP says it); here it is "held".
    held = status.status == "revoked" and status.reason == HOLD
    fields: dict[str, object] = {"serial": status.serial, "status": "held" if held else status.status}
    if status.agent_name:
        fields["agent"] = status.agent_name
    if status.status == "revoked":
        fields |= {"reason": status.reason, "revoked_at": iso(status.revoked_at)}
    if args.json:
        print_json(fields)
    else:
        cells: dict[str, Cell] = {k: str(v) for k, v in fields.items()}
        cells["status"] = State(str(fields["status"]))
        if status.status == "revoked":
            cells["revoked_at"] = When(status.revoked_at)
        line = " ".join(f"{k}={v}" for k, v in fields.items())
        print_views(Record(None, [(k.replace("_", " "), v) for k, v in cells.items()], [line]))
    # Scripts read the answer from the exit code: 0 good, 11 revoked, 13 held (may be released), 5 unknown.
    if held:
        return Held.exit_code
    return {"good": 0, "revoked": Revoked.exit_code}.get(status.status, NotFound.exit_code)


def add_watch(sub: Subcommands, common: ArgumentParser) -> None:
    wa = sub.add_parser("watch", parents=[common], help="follow revocations; resume where it left off")
    wa.add_argument("--json", action="store_true", help="one JSON object per line")
    wa.add_argument("--exec", help="shell command run per event, with KMS_EVENT_* variables")
    wa.add_argument(
        "--silence-timeout",
        type=float,
        default=20.0,
        help="reconnect after this many seconds without a message",
    )
    add_renewal_options(wa)
    wa.set_defaults(func=cmd_watch)


def add_check(sub: Subcommands, common: ArgumentParser) -> None:
    ck = sub.add_parser(
        "check",
        parents=[common],
        help="revocation status of a certificate (exit 0 good, 11 revoked, 13 held, 5 unknown)",
    )
    ck.add_argument("--serial", help="certificate serial, hex")
    ck.add_argument("--cert", help="a PEM certificate file; - for stdin")
    add_listing_options(ck)
    ck.set_defaults(func=cmd_check)
