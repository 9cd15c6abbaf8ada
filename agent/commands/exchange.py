"""kms-agent key-exchange commands: exchange and listen."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from agent.commands import add_output_flags, add_renewal_options
from agent.context import connect, state_dir
from agent.exchange import initiate, respond_once
from kms.cli import ArgumentParser, Subcommands
from kms.errors import KmsError, Revoked, Unavailable
from kms.groups import Group
from kms.handshake import Session
from kms.securefile import ensure_private_dir, is_stdio, output_is_regular, write_atomic, write_output

__all__ = ["add_exchange", "add_listen", "cmd_exchange", "cmd_listen"]

logger = logging.getLogger(__name__)


def _print_session(session: Session, args: argparse.Namespace, path: Path | None) -> None:
    fields: dict[str, object] = {"session_id": session.session_id, "peer": session.peer.name}
    out = getattr(args, "out", None)
    if path is not None and not is_stdio(path):
        fields["file"] = str(path)
    elif out is None and getattr(args, "out_dir", None) is None:
        fields["key_base64"] = base64.b64encode(session.key).decode()
    line = (
        json.dumps(fields, sort_keys=True) if args.json else " ".join(f"{k}={v}" for k, v in fields.items())
    )
    # With the key itself on stdout (--out -), the description goes to stderr.
    print(line, file=sys.stderr if out is not None and is_stdio(out) else sys.stdout, flush=True)


def cmd_exchange(args: argparse.Namespace) -> int:
    if args.out:  # refused before the exchange, not after it
        output_is_regular(args.out, follow_symlink=args.follow_symlinks)
    identity, client = connect(args)
    with client:
        session = initiate(identity, client, args.peer, Group(args.group), args.handshake_timeout)
    path = None
    if args.out:
        path = Path(args.out)
        write_output(path, session.key, mode=0o600, follow_symlink=args.follow_symlinks)
    _print_session(session, args, path)
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    state = state_dir(args)
    identity, client = connect(args)
    out_dir = Path(args.out_dir) if args.out_dir else state.path / "sessions"
    ensure_private_dir(out_dir)
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        client.close()  # ends the waiting Listen stream

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    def failed(exc: KmsError) -> None:  # another agent's failed attempt: it costs us nothing
        logger.warning("exchange failed: %s", exc.message)

    with client:
        while not stop.is_set():
            try:
                session = respond_once(
                    identity, client, args.handshake_timeout, args.accept_from, on_failed=failed
                )
            except KmsError as exc:
                if stop.is_set():
                    break
                if args.once or isinstance(exc, Revoked):
                    raise
                logger.warning("exchange failed: %s", exc.message)
                if isinstance(exc, Unavailable):
                    stop.wait(1.0)  # every server address is down: do not spin
                continue
            path = out_dir / f"{session.session_id}.key"
            write_atomic(path, session.key, mode=0o600)
            _print_session(session, args, path)
            if args.once:
                break
    return 0


def add_exchange(sub: Subcommands, common: ArgumentParser) -> None:
    ex = sub.add_parser(
        "exchange", parents=[common], help="agree on a session key with the server or an agent"
    )
    ex.add_argument("--peer", required=True, help="'server' or an agent name")
    ex.add_argument("--group", choices=[g.value for g in Group], default=Group.X25519.value)
    ex.add_argument(
        "--out",
        help="write the 32-byte session key to FILE (0600; - for stdout, raw) instead of printing it in base64",
    )
    add_output_flags(ex)
    ex.add_argument("--json", action="store_true")
    ex.add_argument("--handshake-timeout", type=float, default=15.0, help="seconds to wait for each step")
    add_renewal_options(ex)
    ex.set_defaults(func=cmd_exchange)


def add_listen(sub: Subcommands, common: ArgumentParser) -> None:
    li = sub.add_parser("listen", parents=[common], help="accept key exchanges from other agents")
    li.add_argument(
        "--once", action="store_true", help="exit after one completed exchange (failed attempts do not count)"
    )
    li.add_argument("--out-dir", help="where session keys go, as <id>.key (default: <state dir>/sessions)")
    li.add_argument("--json", action="store_true")
    li.add_argument(
        "--from", dest="accept_from", metavar="AGENT", help="accept exchanges only from this agent"
    )
    li.add_argument("--handshake-timeout", type=float, default=15.0, help="seconds to wait for each step")
    add_renewal_options(li)
    li.set_defaults(func=cmd_listen)
