"""kms-agent run: the long-running agent (renewal, revocation watch, key exchanges)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from agent.commands import add_renewal_options
from agent.context import refuse_expired, state_dir
from agent.daemon import AgentDaemon
from kms.cli import ArgumentParser, Subcommands

__all__ = ["add_run", "cmd_run"]


def cmd_run(args: argparse.Namespace) -> int:
    state = state_dir(args)
    refuse_expired(state.load(), datetime.now(UTC))  # a daemon that could only log "cannot reach" forever
    daemon = AgentDaemon(
        state,
        timeout=args.timeout,
        renew_fraction=args.renew_fraction,
        handshake_timeout=args.handshake_timeout,
        listen=not args.no_listen,
        sessions_dir=Path(args.sessions_dir) if args.sessions_dir else state.path / "sessions",
    )
    return daemon.run()


def add_run(sub: Subcommands, common: ArgumentParser) -> None:
    ru = sub.add_parser(
        "run", parents=[common], help="run the agent: renew, watch revocations, answer exchanges"
    )
    ru.add_argument("--no-listen", action="store_true", help="do not answer key exchanges")
    ru.add_argument("--sessions-dir", help="where answered exchanges' keys go (default <state dir>/sessions)")
    ru.add_argument("--handshake-timeout", type=float, default=15.0, help="seconds to wait for each step")
    add_renewal_options(ru)
    ru.set_defaults(func=cmd_run)
