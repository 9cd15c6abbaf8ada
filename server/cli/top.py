"""kms-server top: the running server at a glance, live, over the admin socket (issue 17 §6).

On a terminal it opens a full-screen view (server/cli/top_screen.py); ``--once``
(or ``--json``) prints one plain snapshot instead, for scripts. Without a terminal
and without ``--once`` it draws nothing and fails with one line. Either way the
server sends one screen's worth (server/ops/observe.py), never every agent.
"""

from __future__ import annotations

import argparse

import grpc
from google.protobuf.json_format import MessageToDict

from kms.cli import ArgumentParser, Subcommands, print_json
from kms.errors import InvalidArgument
from kms.prompts import NotInteractive, is_interactive
from kms.v1 import monitor_pb2
from server.cli.admin_client import AdminClient
from server.cli.context import admin, data_dir
from server.cli.top_view import agent_lines, event_lines, header_lines, key_lines, plain

__all__ = ["add_top", "request_for", "snapshot"]

# What --once shows of each pane.
_ONCE = {"agent_limit": 50, "key_limit": 50, "soon_limit": 20, "event_limit": 20}


def add_top(sub: Subcommands, common: ArgumentParser) -> None:
    top = sub.add_parser(
        "top",
        parents=[common],
        help="live view of the running server: agents online, expiries, events, rates (q quits)",
    )
    top.add_argument(
        "--once",
        action="store_true",
        help="print one plain snapshot and exit (for scripts: no terminal needed)",
    )
    top.add_argument(
        "--json", action="store_true", help="print one snapshot as JSON and exit (implies --once)"
    )
    top.add_argument(
        "--filter",
        default="",
        metavar="TEXT",
        help="only agents and keys whose name contains TEXT (`/` on screen)",
    )
    top.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between updates while nothing happens (default 1; events show at once)",
    )
    top.set_defaults(func=cmd_top)


def request_for(filter_text: str, interval: float, **window: int) -> monitor_pb2.ObserveRequest:
    return monitor_pb2.ObserveRequest(
        filter=filter_text, interval_ms=max(int(interval * 1000), 200), **window
    )


def snapshot(client: AdminClient, request: monitor_pb2.ObserveRequest) -> monitor_pb2.Overview:
    """The first Overview of a stream, which is then cancelled."""
    stream = client.observe(iter([request]))
    try:
        return next(iter(stream))
    except grpc.RpcError as exc:
        raise client.error_of(exc) from None
    finally:
        stream.cancel()  # type: ignore[attr-defined]


def cmd_top(args: argparse.Namespace) -> int:
    once = args.once or args.json
    if not 0.2 <= args.interval <= 3600:  # also refuses nan
        raise InvalidArgument(f"--interval {args.interval}: give seconds from 0.2 to 3600")
    if not once and not is_interactive():
        raise NotInteractive(
            "kms-server top draws on a terminal, and stdin and stdout are not both one:"
            " pass --once (or --json) for one plain snapshot"
        )
    with admin(args) as client:
        if once:
            overview = snapshot(client, request_for(args.filter, args.interval, **_ONCE))
            _print_once(overview, args.filter, str(data_dir(args)), as_json=args.json)
            return 0
        from server.cli.top_screen import run  # prompt_toolkit: loaded only to draw

        return run(client, str(data_dir(args)), args.filter, args.interval)


def _print_once(o: monitor_pb2.Overview, filter_text: str, where: str, *, as_json: bool) -> None:
    if as_json:
        print_json(
            MessageToDict(o, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        )
        return
    lines = [
        *header_lines(o, where, 120),
        [],
        *agent_lines(o, 0, False, filter_text),
        [],
        *key_lines(o, 0, False),
        [],
        *event_lines(o.events, False),
    ]
    for line in lines:
        print(plain(line).rstrip())
