"""kms-server ca rotate, activate, cancel and status: the CA's generations (issue 19 §1), over the admin socket.

ca rotate only prepares the next CA (published in the trust bundle, cross-certified by the
active one): it changes nothing that issues or verifies, and a prepared CA is never used
until it is activated, so it asks no confirmation. ca activate makes it the one that
issues, after the propagation period (ca-propagation; --now skips it); it asks none either:
it is refused before then, and the CA before it stays trusted.

The emergency path, ``--now --revoke-old`` (on either), takes the active CA to be compromised:
every valid certificate it signed is revoked and it is retired at once. That cannot be undone
and cuts every agent of the old CA off until it re-enrolls, so it asks (server/cli/confirm.py).
"""

from __future__ import annotations

import argparse

from kms.cli import ArgumentParser, Subcommands, add_listing_options, print_json, print_table
from kms.errors import InvalidArgument
from kms.output import State, When
from kms.v1 import admin_pb2
from server.ca.keytype import CAKeyType
from server.cli.admin_client import AdminClient
from server.cli.confirm import add_yes, ask, refuse_unconfirmable
from server.cli.context import admin as _admin
from server.cli.context import iso

__all__ = ["add_ca_rotation"]


def _at(seconds: int) -> str | None:
    return iso(seconds) if seconds else None


def ca_fields(g: admin_pb2.CAGeneration) -> dict[str, object]:
    return {
        "generation": g.generation,
        "state": g.state,
        "key_type": g.key_type,
        "fingerprint": g.fingerprint,
        "not_before": iso(g.not_before),
        "not_after": iso(g.not_after),
        "valid_certificates": g.valid_certificates,
        "created_at": _at(g.created_at),
        "activated_at": _at(g.activated_at),
        "retired_at": _at(g.retired_at),
        "cross_certified": bool(g.cross_certificate_pem),
        "certificate_pem": g.certificate_pem,
        "key_uri": g.key_uri or None,
    }


def _compromise_summary(admin: AdminClient) -> str:
    active = next((g for g in admin.list_cas().cas if g.state == "active"), None)
    if active is None:
        return "the store has no active CA: nothing will be revoked"
    return (
        f"CA generation {active.generation} ({active.fingerprint}) is taken to be compromised: its"
        f" {active.valid_certificates} valid certificates will be revoked (cACompromise) and it will no longer"
        " be trusted. Every agent enrolled under it loses access until it enrolls again with a new join token."
    )


def _check_emergency(args: argparse.Namespace, command: str) -> None:
    if args.revoke_old and not args.now:
        raise InvalidArgument(
            f"kms-server {command} --revoke-old needs --now: a compromised CA must stop issuing at once"
        )
    if args.revoke_old:
        refuse_unconfirmable(args, f"{command} --revoke-old")


def _revoked_old(args: argparse.Namespace) -> None:
    if args.revoke_old:
        print(
            "the CA before it is retired and every valid certificate it signed is revoked (cACompromise):"
            " give each of its agents a new join token (kms-server token create NAME) and run"
            " kms-agent enroll --force on it"
        )


def cmd_ca_rotate(args: argparse.Namespace) -> int:
    _check_emergency(args, "ca rotate")
    with _admin(args) as admin:
        if args.revoke_old and not args.yes:
            ask(args, "ca rotate --revoke-old", lambda: _compromise_summary(admin))
        g = admin.rotate_ca(args.key_type or "", args.now, args.revoke_old)
    if args.now:
        print(
            f"prepared and activated CA generation {g.generation} ({g.key_type}, {g.fingerprint}): it issues from now on"
        )
        _revoked_old(args)
        return 0
    print(
        f"prepared CA generation {g.generation} ({g.key_type}, {g.fingerprint}, valid until {iso(g.not_after)}),"
        " cross-certified by the active CA and published in the trust bundle; the active CA still issues"
    )
    return 0


def cmd_ca_activate(args: argparse.Namespace) -> int:
    _check_emergency(args, "ca activate")
    with _admin(args) as admin:
        if args.revoke_old and not args.yes:
            ask(args, "ca activate --revoke-old", lambda: _compromise_summary(admin))
        g = admin.activate_ca(args.now, args.revoke_old)
    if args.revoke_old:
        print(
            f"activated CA generation {g.generation} ({g.key_type}, {g.fingerprint}): it issues from now on"
        )
        _revoked_old(args)
        return 0
    print(
        f"activated CA generation {g.generation} ({g.key_type}, {g.fingerprint}): it issues from now on,"
        " and the CA before it stays trusted until the certificates it signed expire"
    )
    return 0


def _add_emergency(parser: ArgumentParser, now_help: str) -> None:
    parser.add_argument("--now", action="store_true", help=now_help)
    parser.add_argument(
        "--revoke-old",
        action="store_true",
        help="with --now: the active CA is compromised; revoke every certificate it signed and retire it at once",
    )
    add_yes(parser)


def cmd_ca_cancel(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        g = admin.cancel_ca()
    print(
        f"cancelled CA generation {g.generation} ({g.key_type}, {g.fingerprint}): it never issued, and"
        " leaves the trust bundle; the active CA still issues"
    )
    return 0


def cmd_ca_status(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        cas = admin.list_cas().cas
    if args.json:
        print_json([ca_fields(g) for g in cas])
        return 0
    print_table(
        ["GEN", "STATE", "KEY TYPE", "NOT AFTER", "VALID CERTS", "RETIRED", "FINGERPRINT"],
        [
            [
                str(g.generation),
                State(g.state),
                g.key_type,
                When(g.not_after),
                str(g.valid_certificates),
                When(g.retired_at),
                g.fingerprint,
            ]
            for g in cas
        ],
    )
    return 0


def add_ca_rotation(ca: Subcommands, common: ArgumentParser) -> None:
    rotate = ca.add_parser(
        "rotate",
        parents=[common],
        help="prepare the next CA: a new key (in the same PKCS#11 token when the CA key is in one) and certificate, cross-certified by the active CA",
    )
    rotate.add_argument(
        "--key-type",
        choices=[k.value for k in CAKeyType],
        help="the new CA's key type (default: the active CA's)",
    )
    _add_emergency(rotate, "activate the new CA at once, skipping ca-propagation (see ca activate --now)")
    rotate.set_defaults(func=cmd_ca_rotate)
    activate = ca.add_parser(
        "activate",
        parents=[common],
        help="make the prepared CA the one that issues, once ca-propagation has passed since ca rotate",
    )
    _add_emergency(
        activate,
        "skip the propagation period: agents that have not fetched the trust bundle cannot verify the server",
    )
    activate.set_defaults(func=cmd_ca_activate)
    cancel = ca.add_parser(
        "cancel",
        parents=[common],
        help="remove the prepared CA (before ca activate): it leaves the trust bundle",
    )
    cancel.set_defaults(func=cmd_ca_cancel)
    status = ca.add_parser(
        "status", parents=[common], help="list the CA generations: state, validity, fingerprint, certificates"
    )
    add_listing_options(status)
    status.set_defaults(func=cmd_ca_status)
