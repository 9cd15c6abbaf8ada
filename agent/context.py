"""What every kms-agent command needs: the state directory, an mTLS client, times as text."""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime
from pathlib import Path

from agent.client import KmsClient
from agent.renew import renew, renewal_due
from agent.servers import Servers
from agent.state import AgentIdentity, StateDir, default_state_dir
from kms.errors import ResourceExhausted, Unauthenticated
from kms.times import iso, iso_datetime

__all__ = ["client_for", "connect", "iso", "refuse_expired", "state_dir"]

logger = logging.getLogger(__name__)


def state_dir(args: argparse.Namespace) -> StateDir:
    return StateDir(Path(args.dir) if args.dir else default_state_dir())


def client_for(identity: AgentIdentity, timeout: float, servers: Servers | None = None) -> KmsClient:
    """A client for every server address of this agent.

    Args:
        servers: shared failover state (which address answered last); pass the same
            object to every client a process opens. Default: a fresh one.
    """
    return KmsClient(
        servers or Servers(identity.settings.servers),
        identity.roots_pem,
        key_pem=identity.key_pem,
        cert_pem=identity.cert_pem,
        timeout=timeout,
    )


def refuse_expired(identity: AgentIdentity, now: datetime) -> None:
    """Raises Unauthenticated, saying what to do, when this agent's own certificate has expired.

    Checked before any call: the server would refuse the TLS handshake, which an
    agent can only report as "cannot reach kms-server", though it knows better.
    """
    cert = identity.cert
    if now < cert.not_valid_after_utc:
        return
    raise Unauthenticated(
        f"this agent's certificate {cert.serial_number:x} expired at {iso_datetime(cert.not_valid_after_utc)}"
        " (checked locally, by its dates)"
        " and can no longer be renewed: ask for a new join token (kms-server token create --name"
        f" {identity.settings.name}) and run kms-agent enroll --force with it"
    )


def connect(
    args: argparse.Namespace, *, auto_renew: bool = True, servers: Servers | None = None
) -> tuple[AgentIdentity, KmsClient]:
    """Loads this agent's identity and opens an mTLS client to its servers.

    Every command renews first when the certificate is past the renewal
    fraction of its life (2/3 by default), so agents that run only now and
    then never let it lapse. Both clients share one Servers, so an address
    found unavailable while renewing is not tried first again.
    """
    state = state_dir(args)
    identity = state.load()
    refuse_expired(identity, datetime.now(UTC))  # not "cannot reach kms-server": the agent knows why
    servers = servers or Servers(identity.settings.servers)
    if auto_renew and renewal_due(identity, args.renew_fraction):
        with client_for(identity, args.timeout, servers) as client:
            try:
                identity = renew(state, identity, client)
            except ResourceExhausted as exc:
                # The server limits renewals per agent; the certificate we hold is still valid.
                logger.warning(
                    "automatic renewal refused, carrying on with the current certificate: %s", exc.message
                )
    return identity, client_for(identity, args.timeout, servers)
