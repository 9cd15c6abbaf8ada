"""kms-agent identity commands: enroll and status."""

from __future__ import annotations

import argparse
import os

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.commands import add_renewal_options
from agent.commands.guided import ask_missing
from agent.context import connect, iso, state_dir
from agent.enroll import enroll
from agent.renew import renew
from agent.servers import default_enroll_addresses, parse_addresses
from agent.state import AgentIdentity, StateDir
from kms.cli import ArgumentParser, Subcommands, add_listing_options, print_json, print_views
from kms.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from kms.identity import fingerprint
from kms.output import Cell, Record, State, When
from kms.prompts import is_interactive
from kms.times import iso_datetime

__all__ = ["add_enroll", "add_renew", "add_status", "cmd_enroll", "cmd_renew", "cmd_status"]


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
    # Convention shared with kms-server: enrollment listens on the API port + 1
    # unless told otherwise (docs/adr/0001-enrollment-listener.md).
    enroll_servers = _addresses(args.enroll_server, "KMS_ENROLL_SERVER", "--enroll-server")
    guided = not (servers and token and fp) and is_interactive()
    if guided:
        asked = ask_missing(servers, enroll_servers, token, fp, args.timeout)
        servers, token, fp = asked.servers, asked.token, asked.ca_fingerprint
    if not servers or not token or not fp:
        raise InvalidArgument(
            "enroll needs --server, --token and --ca-fingerprint (or KMS_SERVER, KMS_JOIN_TOKEN, KMS_CA_FINGERPRINT)"
        )
    enroll_servers = enroll_servers or default_enroll_addresses(servers)
    # A retry after a lost reply sends the same key again, so the server can answer
    # with the certificate it issued instead of refusing the spent token.
    # Only a local file key: a malformed token is the server's to refuse, after the CA pin is checked.
    token_id = token.strip().split(".", 1)[0]
    enrolled = enroll(
        servers=servers,
        enroll_servers=enroll_servers,
        token=token,
        ca_fingerprint=fp,
        key_size=args.key_size,
        timeout=args.timeout,
        key=state.pending_key(token_id),
        keep_key=lambda key: state.save_pending_key(token_id, key),
    )
    identity = enrolled.identity
    trust_bundle = (enrolled.trust_bundle_pem, enrolled.trust_bundle_version)
    state.save(identity, watch_from_seq=enrolled.watch_from_seq, trust_bundle=trust_bundle)
    not_after = iso_datetime(identity.cert.not_valid_after_utc)
    if guided:
        print(
            f"in a script: kms-agent enroll --server {','.join(servers)} --ca-fingerprint {fp}"
            " with the token in KMS_JOIN_TOKEN"
        )
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
    trusted = trusted_cas(identity)
    version = _bundle_version(state_dir(args))
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
                "trusted_cas": trusted,
                "trust_bundle_version": version,
            }
        )
    else:
        shown = {
            "name": seen.name,
            "groups": ",".join(seen.groups) or "-",
            "spiffe id": seen.spiffe_id,
            "serial": seen.serial,
            "expires": not_after,
            "server": f"{answered} (verified over mTLS)",
            "servers": ", ".join(servers),
            "trusts": trusted_text(trusted),
        }
        cells: dict[str, Cell] = {**shown, "expires": When(seen.not_after), "status": State(seen.status)}
        print_views(Record(None, list(cells.items()), [f"{k + ':':<10} {v}" for k, v in shown.items()]))
    return 0


def _bundle_version(state: StateDir) -> int:
    """The stored trust bundle's version (0: none stored, or from a server that predates versions)."""
    try:
        return state.stored_bundle()[1]
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(
            f"{state.trust_bundle} is unreadable ({exc}): enroll again with --force"
        ) from exc


def trusted_cas(identity: AgentIdentity) -> list[dict[str, object]]:
    """The CAs this agent trusts (its latest verified trust bundle's, else the pinned one), each
    with its validity and whether it is the CA enrollment pinned."""
    pinned = x509.load_pem_x509_certificates(identity.ca_bundle_pem)
    return [
        {
            "fingerprint": fingerprint(ca.public_bytes(Encoding.DER)),
            "not_before": iso_datetime(ca.not_valid_before_utc),
            "not_after": iso_datetime(ca.not_valid_after_utc),
            "pinned": ca in pinned,
        }
        for ca in identity.roots
    ]


def trusted_text(trusted: list[dict[str, object]]) -> str:
    """trusted_cas in words: each fingerprint, its validity, and which one is pinned."""
    return "; ".join(
        f"{ca['fingerprint']} ({ca['not_before']} to {ca['not_after']}{', pinned' if ca['pinned'] else ''})"
        for ca in trusted
    )


def cmd_renew(args: argparse.Namespace) -> int:
    state = state_dir(args)
    identity, client = connect(args, auto_renew=False)
    with client:
        renewed = renew(state, identity, client)
    not_after = iso_datetime(renewed.cert.not_valid_after_utc)
    print(f"renewed: certificate {renewed.cert.serial_number:x} (new key) valid until {not_after}")
    return 0


def add_enroll(sub: Subcommands, common: ArgumentParser) -> None:
    en = sub.add_parser(
        "enroll", parents=[common], help="make a key and trade a join token for a certificate"
    )
    en.add_argument(
        "--server",
        action="append",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the server's mTLS address; repeat it or separate with commas for replicas, tried in order"
        " (env KMS_SERVER, comma-separated)",
    )
    en.add_argument(
        "--enroll-server",
        action="append",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="enrollment address(es), tried in order (env KMS_ENROLL_SERVER; default: each --server's port + 1)",
    )
    en.add_argument("--token", help="one-time join token (env KMS_JOIN_TOKEN, which keeps it out of ps)")
    en.add_argument("--ca-fingerprint", help="sha256:HEX as kms-server prints it (env KMS_CA_FINGERPRINT)")
    en.add_argument("--key-size", type=int, choices=(2048, 3072, 4096), default=2048, help="RSA key size")
    en.add_argument("--force", action="store_true", help="replace an existing enrollment")
    en.set_defaults(func=cmd_enroll)


def add_renew(sub: Subcommands, common: ArgumentParser) -> None:
    rn = sub.add_parser("renew", parents=[common], help="renew this agent's certificate now, with a new key")
    rn.set_defaults(func=cmd_renew)


def add_status(sub: Subcommands, common: ArgumentParser) -> None:
    st = sub.add_parser("status", parents=[common], help="show this agent's identity, proven over mTLS")
    add_listing_options(st)
    add_renewal_options(st)
    st.set_defaults(func=cmd_status)
