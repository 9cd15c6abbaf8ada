"""kms-agent run: the long-running agent (renewal, revocation watch, key exchanges)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.context import state_dir
from agent.daemon import AgentDaemon

__all__ = ["cmd_run"]


def cmd_run(args: argparse.Namespace) -> int:
    state = state_dir(args)
    daemon = AgentDaemon(
        state,
        timeout=args.timeout,
        renew_fraction=args.renew_fraction,
        handshake_timeout=args.handshake_timeout,
        listen=not args.no_listen,
        sessions_dir=Path(args.sessions_dir) if args.sessions_dir else state.path / "sessions",
    )
    return daemon.run()
