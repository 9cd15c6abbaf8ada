"""kms-server ca rotate, activate, cancel and status: the CA's generations (issue 19 §1), over the admin socket.

ca rotate only prepares the next CA (published in the trust bundle, cross-certified by the
active one): it changes nothing that issues or verifies, and a prepared CA is never used
until it is activated, so it asks no confirmation. ca activate makes it the one that
issues, after the propagation period (ca-propagation; --now skips it); it asks none either:
it is refused before then, and the CA before it stays trusted.
"""

from __future__ import annotations

import argparse

from kms.cli import ArgumentParser, Subcommands, add_listing_options, print_json, print_table
from kms.output import State, When
from kms.v1 import admin_pb2
from server.ca.keytype import CAKeyType
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
    }


def cmd_ca_rotate(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        g = admin.rotate_ca(args.key_type or "")
    print(
        f"prepared CA generation {g.generation} ({g.key_type}, {g.fingerprint}, valid until {iso(g.not_after)}),"
        " cross-certified by the active CA and published in the trust bundle; the active CA still issues"
    )
    return 0


def cmd_ca_activate(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        g = admin.activate_ca(args.now)
    print(
        f"activated CA generation {g.generation} ({g.key_type}, {g.fingerprint}): it issues from now on,"
        " and the CA before it stays trusted until the certificates it signed expire"
    )
    return 0


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
        help="prepare the next CA: a new key and certificate, cross-certified by the active CA",
    )
    rotate.add_argument(
        "--key-type",
        choices=[k.value for k in CAKeyType],
        help="the new CA's key type (default: the active CA's)",
    )
    rotate.set_defaults(func=cmd_ca_rotate)
    activate = ca.add_parser(
        "activate",
        parents=[common],
        help="make the prepared CA the one that issues, once ca-propagation has passed since ca rotate",
    )
    activate.add_argument(
        "--now",
        action="store_true",
        help="skip the propagation period: agents that have not fetched the trust bundle cannot verify the server",
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
