"""What every kms-agent command needs: the state directory, an mTLS client, times as text."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from agent.client import KmsClient
from agent.state import AgentIdentity, StateDir, default_state_dir

__all__ = ["connect", "iso", "state_dir"]


def state_dir(args: argparse.Namespace) -> StateDir:
    return StateDir(Path(args.dir) if args.dir else default_state_dir())


def connect(args: argparse.Namespace) -> tuple[AgentIdentity, KmsClient]:
    """Loads this agent's identity and opens an mTLS client to its server."""
    identity = state_dir(args).load()
    client = KmsClient(
        identity.settings.server,
        identity.ca_bundle_pem,
        key_pem=identity.key_pem,
        cert_pem=identity.cert_pem,
        timeout=args.timeout,
    )
    return identity, client


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
