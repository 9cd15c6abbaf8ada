"""kms-agent identity commands: enroll and status."""

from __future__ import annotations

import argparse
import os

from agent.context import connect, iso, state_dir
from agent.enroll import enroll
from agent.renew import renew
from agent.servers import default_enroll_addresses, parse_addresses
from kms.cli import print_json
from kms.errors import AlreadyExists, InvalidArgument

__all__ = ["cmd_enroll", "cmd_renew", "cmd_status"]


def _addresses(flag: list[str] | None, env: str, what: str) -> tuple[str, ...] | None:
    """Addresses from a repeatable, comma-separated flag, else its environment variable."""
    if flag:
        return parse_addresses(flag, what=what)
    if os.environ.get(env):
        return parse_addresses([os.environ[env]], what=env)
    return None


def cmd_enroll(args: argparse.Namespace) -> int:
    state = state_dir(args)
    if state.enrolled and not args.force:
        raise AlreadyExists(f"this agent is already enrolled ({state.path}): pass --force to enroll again")
    servers = _addresses(args.server, "KMS_SERVER", "--server")
    token = args.token or os.environ.get("KMS_JOIN_TOKEN")
    fp = args.ca_fingerprint or os.environ.get("KMS_CA_FINGERPRINT")
    if not servers or not token or not fp:
        raise InvalidArgument(
            "enroll needs --server, --token and --ca-fingerprint (or KMS_SERVER, KMS_JOIN_TOKEN, KMS_CA_FINGERPRINT)"
        )
    # Convention shared with kms-server: enrollment listens on the API port + 1
    # unless told otherwise (docs/adr/0001-enrollment-listener.md).
    enroll_servers = _addresses(
        args.enroll_server, "KMS_ENROLL_SERVER", "--enroll-server"
    ) or default_enroll_addresses(servers)
    # A retry after a lost reply sends the same key again, so the server can answer
    # with the certificate it issued instead of refusing the spent token.
    # Only a local file key: a malformed token is the server's to refuse, after the CA pin is checked.
    token_id = token.strip().split(".", 1)[0]
    identity, watch_from_seq = enroll(
        servers=servers,
        enroll_servers=enroll_servers,
        token=token,
        ca_fingerprint=fp,
        key_size=args.key_size,
        timeout=args.timeout,
        key=state.pending_key(token_id),
        keep_key=lambda key: state.save_pending_key(token_id, key),
    )
    state.save(identity, watch_from_seq=watch_from_seq)
    not_after = identity.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    print(
        f"enrolled as {identity.settings.name} ({identity.settings.spiffe_id}), certificate {identity.cert.serial_number:x} valid until {not_after}"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    identity, client = connect(args)
    with client:
        seen = client.whoami().agent
        answered = client.servers.current  # the address that answered
    servers = identity.settings.servers
    not_after = iso(seen.not_after)
    if args.json:
        print_json(
            {
                "name": seen.name,
                "groups": list(seen.groups),
                "spiffe_id": seen.spiffe_id,
                "serial": seen.serial,
                "not_after": not_after,
                "server": answered,
                "servers": list(servers),
                "enroll_servers": list(identity.settings.enroll_servers),
                "status": seen.status,
            }
        )
    else:
        print(f"name:      {seen.name}")
        print(f"groups:    {','.join(seen.groups) or '-'}")
        print(f"spiffe id: {seen.spiffe_id}")
        print(f"serial:    {seen.serial}")
        print(f"expires:   {not_after}")
        print(f"server:    {answered} (verified over mTLS)")
        print(f"servers:   {', '.join(servers)}")
    return 0


def cmd_renew(args: argparse.Namespace) -> int:
    state = state_dir(args)
    identity, client = connect(args, auto_renew=False)
    with client:
        renewed = renew(state, identity, client)
    not_after = renewed.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"renewed: certificate {renewed.cert.serial_number:x} (new key) valid until {not_after}")
    return 0
