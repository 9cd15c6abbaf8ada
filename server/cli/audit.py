"""kms-server audit list | verify [--against FILE]: the audit trail, over the admin socket.

``verify`` has the server check the chain (only it holds the chain's key);
with ``--against`` it then reads every record and cross-checks them against a
copy kept outside the database (--audit-file, or syslog lines of it), which
is what shows the newest records deleted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from kms.audit import AuditRecord, compare, parse_line
from kms.cli import ArgumentParser, Subcommands, add_listing_options, print_json, print_table
from kms.errors import DataLoss, InvalidArgument
from kms.output import State, When
from kms.times import iso
from kms.v1 import admin_pb2
from server.cli.admin_client import AdminClient
from server.cli.context import admin

__all__ = ["add_audit"]

Connect = Callable[[argparse.Namespace], AdminClient]

# Records per ListAudit call: well under gRPC's 4 MiB message limit.
_PAGE = 5000


def _records(admin: AdminClient, after_seq: int) -> Iterator[admin_pb2.AuditRecord]:
    while records := admin.list_audit(after_seq, _PAGE).records:
        yield from records
        after_seq = records[-1].seq


def cmd_audit_list(args: argparse.Namespace, connect: Connect) -> int:
    with connect(args) as admin:
        records = list(_records(admin, args.since))
    if args.json:
        print_json(
            [
                {
                    "seq": r.seq,
                    "at": iso(r.at),
                    "actor": r.actor,
                    "action": r.action,
                    "object": r.object,
                    "outcome": r.outcome,
                    "prev_hash": r.prev_hash.hex(),
                    "hash": r.hash.hex(),
                }
                for r in records
            ]
        )
    else:
        print_table(
            ["SEQ", "AT", "ACTOR", "ACTION", "OBJECT", "OUTCOME"],
            [[f"#{r.seq}", When(r.at), r.actor, r.action, r.object, State(r.outcome)] for r in records],
            lines=[f"#{r.seq} {iso(r.at)} {r.actor} {r.action} {r.object} {r.outcome}" for r in records],
        )
    return 0


def read_checkpoints(name: str) -> list[AuditRecord]:
    """The records of an --audit-file (or of syslog lines carrying them); '-' reads stdin."""
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read --against {name}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"--against {name} is not a text file of audit records") from None
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append(parse_line(line))
            except ValueError as exc:
                raise InvalidArgument(
                    f"--against {name} line {number} is not an audit record: {exc}"
                ) from None
    return out


def cmd_audit_verify(args: argparse.Namespace, connect: Connect) -> int:
    checkpoints = read_checkpoints(args.against) if args.against else None
    with connect(args) as admin:
        result = admin.verify_audit()
        if not result.intact:
            raise DataLoss(
                f"the audit trail is broken at record {result.first_bad_seq}: "
                f"{result.problem or 'it was edited, deleted or reordered there'}"
            )
        if checkpoints is None:
            if args.json:  # the same fields with --against or without, so a script reads one shape
                print_json({"intact": True, "records": result.records, "against": None, "matched": None})
            else:
                print(f"audit trail intact: {result.records} records")
            return 0
        stored = (
            AuditRecord(r.seq, r.at, r.actor, r.action, r.object, r.outcome, r.prev_hash, r.hash)
            for r in _records(admin, 0)
        )
        found = compare(stored, checkpoints)
    if found.difference is not None:
        raise DataLoss(f"the audit trail does not match {args.against}: {found.difference}")
    if args.json:
        print_json(
            {"intact": True, "records": result.records, "against": args.against, "matched": found.matched}
        )
        return 0
    print(
        f"audit trail intact: {result.records} records; all {found.matched} records of {args.against} "
        f"are in it, unchanged ({found.not_in_file} records are not in {args.against})"
    )
    return 0


def add_audit(sub: Subcommands, common: ArgumentParser, connect: Connect = admin) -> None:
    audit = sub.add_parser("audit", help="the keyed, hash-chained audit trail").add_subparsers(
        dest="audit_command", required=True, metavar="COMMAND"
    )
    al = audit.add_parser("list", parents=[common], help="list audit records")
    al.add_argument("--since", type=int, default=0, help="records after this sequence number")
    add_listing_options(al)
    al.set_defaults(func=partial(cmd_audit_list, connect=connect))
    av = audit.add_parser("verify", parents=[common], help="check the chain; names the first bad record")
    av.add_argument(
        "--against",
        metavar="FILE",
        help="also check that every record of this --audit-file (or syslog lines of it; - for stdin) "
        "is in the store, unchanged",
    )
    add_listing_options(av, "print the answer as JSON (a broken trail is still an error: exit 10)")
    av.set_defaults(func=partial(cmd_audit_verify, connect=connect))
