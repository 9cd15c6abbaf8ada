"""kms-server key schedules: --expires / --expires-in / --rotate-every as typed, and the
`key set` and `key show` commands (how a key is printed: key_view.py).

Dates are ISO 8601 with a zone (``Z`` or ``+02:00``): a date without one means a different
instant on every machine, so it is refused here, before the server is asked. The server
checks again what it can (a time in the past, a period below its minimum).
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime

from kms.cli import ArgumentParser, add_listing_options, print_json
from kms.durations import parse_duration
from kms.errors import InvalidArgument
from server.cli.context import admin as _admin
from server.cli.context import iso
from server.cli.key_view import expiry_text, key_json, print_show, rotation_text

__all__ = ["add_schedule_options", "add_set_and_show", "parse_expires", "schedule_request"]


def parse_expires(text: str) -> int:
    """An ISO 8601 time that names its zone, as Unix seconds. Raises InvalidArgument."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidArgument(
            f"--expires {text!r} is not an ISO 8601 time: use e.g. 2027-06-30T00:00:00Z"
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidArgument(f"--expires {text!r} has no time zone: add Z (UTC) or an offset such as +02:00")
    try:
        seconds = int(when.timestamp())
    except (OverflowError, ValueError):  # e.g. year 1 with a positive offset: before year 1 in UTC
        seconds = 0
    if seconds <= 0:  # before 1970: in the past, and not a time every printer can show
        raise InvalidArgument(f"--expires {text.strip()} is in the past: give a later time")
    return seconds


def _seconds(text: str, what: str) -> int:
    return int(parse_duration(text, what=what).total_seconds())


def schedule_request(args: argparse.Namespace, now: int) -> tuple[int | None, int | None]:
    """(expires_at, rotate_every) as the admin API takes them: None unchanged, 0 none."""
    expires_at: int | None = None
    if args.expires is not None:
        expires_at = parse_expires(args.expires)
    elif args.expires_in is not None:
        expires_at = now + _seconds(args.expires_in, "--expires-in")
    elif getattr(args, "no_expiry", False):
        expires_at = 0
    rotate_every: int | None = None
    if args.rotate_every is not None:
        rotate_every = _seconds(args.rotate_every, "--rotate-every")
    elif getattr(args, "no_rotation", False):
        rotate_every = 0
    if expires_at is not None and expires_at and expires_at <= now:
        raise InvalidArgument(f"--expires {iso(expires_at)} is in the past: give a later time")
    return expires_at, rotate_every


def add_schedule_options(parser: ArgumentParser, *, clearing: bool) -> None:
    """--expires | --expires-in [| --no-expiry], --rotate-every [| --no-rotation] (clearing: key set)."""
    expiry = parser.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires", metavar="TIME", help="expiry, ISO 8601 with a zone, e.g. 2027-06-30T00:00:00Z"
    )
    expiry.add_argument("--expires-in", metavar="DURATION", help="expiry from now, e.g. 90d")
    rotation = parser.add_mutually_exclusive_group()
    rotation.add_argument(
        "--rotate-every",
        metavar="DURATION",
        help="rotate on a schedule, e.g. 30d (at least the server's min-rotation-period, default 1h)",
    )
    if clearing:
        expiry.add_argument("--no-expiry", action="store_true", help="the key never expires")
        rotation.add_argument("--no-rotation", action="store_true", help="rotate by hand only")


def cmd_key_show(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        key = admin.get_key(args.name)
    now = int(time.time())
    if args.json:
        print_json(key_json(key, now))
    else:
        print_show(key, now)
    return 0


def cmd_key_set(args: argparse.Namespace) -> int:
    expires_at, rotate_every = schedule_request(args, int(time.time()))
    if expires_at is None and rotate_every is None:
        raise InvalidArgument(
            "key set needs --expires, --expires-in or --no-expiry, and/or --rotate-every or --no-rotation"
        )
    with _admin(args) as admin:
        key = admin.set_key(args.name, expires_at=expires_at, rotate_every=rotate_every)
    if args.json:
        print_json(key_json(key, int(time.time())))
    else:
        print(f"key {key.name}: expires {expiry_text(key, int(time.time()))}; rotation {rotation_text(key)}")
    return 0


def add_set_and_show(key: argparse._SubParsersAction[ArgumentParser], common: ArgumentParser) -> None:
    ks = key.add_parser("set", parents=[common], help="set or clear a key's expiry and rotation period")
    ks.add_argument("name")
    add_schedule_options(ks, clearing=True)
    ks.set_defaults(func=cmd_key_set)
    sh = key.add_parser(
        "show", parents=[common], help="a key's type, state, expiry, rotation schedule and versions"
    )
    sh.add_argument("name")
    sh.set_defaults(func=cmd_key_show)
    ks.add_argument("--json", action="store_true")
    add_listing_options(sh)
