"""kms-agent enroll on a terminal, without its flags: ask for what is missing.

The server address first, then, without --ca-fingerprint, the CA the enrollment
endpoint presents is shown (subject, SHA-256 fingerprint, validity) for the
operator to accept, as ssh does for a host key on first use; then the join token,
typed hidden. The CA is settled before the token is typed, and the token is sent
only to a server holding a key certified by the accepted CA (agent/bootstrap.py),
as with --ca-fingerprint. Without a terminal nothing is asked (kms/prompts.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.bootstrap import presented_ca
from agent.servers import default_enroll_addresses, parse_addresses
from kms.addresses import parse_hostport
from kms.identity import fingerprint
from kms.prompts import Declined, ask_secret, ask_text, ask_yes_no
from kms.times import iso_datetime

__all__ = ["EnrollInputs", "ask_missing", "describe_ca"]


@dataclass(frozen=True)
class EnrollInputs:
    servers: tuple[str, ...]
    enroll_servers: tuple[str, ...] | None  # None: each server's port + 1
    token: str
    ca_fingerprint: str


def describe_ca(ca: x509.Certificate, address: str) -> str:
    """What the operator is shown before trusting a CA on first use."""
    der = ca.public_bytes(serialization.Encoding.DER)
    return "\n".join(
        (
            f"The server at {address} presents this certificate authority:",
            f"  subject:     {ca.subject.rfc4514_string()}",
            f"  fingerprint: {fingerprint(der)}",
            f"  valid:       {iso_datetime(ca.not_valid_before_utc)} to {iso_datetime(ca.not_valid_after_utc)}",
            "Compare the fingerprint with what `kms-server ca fingerprint` prints on the server.",
        )
    )


def _trust_on_first_use(address: str, timeout: float) -> str:
    host, port = parse_hostport(address, what="enrollment address")
    ca = presented_ca(host, port, timeout)
    print(describe_ca(ca, address), flush=True)
    if not ask_yes_no("Trust this CA and enroll with it?", what="--ca-fingerprint"):
        raise Declined("the CA was not trusted: not enrolled, and no token was sent")
    return fingerprint(ca.public_bytes(serialization.Encoding.DER))


def ask_missing(
    servers: tuple[str, ...] | None,
    enroll_servers: tuple[str, ...] | None,
    token: str | None,
    ca_fingerprint: str | None,
    timeout: float,
) -> EnrollInputs:
    """Asks for each missing value, in the order above (callers check for a terminal first)."""
    if not servers:
        answer = ask_text("kms-server address (HOST:PORT)", what="--server")
        servers = parse_addresses([answer], what="server address")
    if not ca_fingerprint:
        first = (enroll_servers or default_enroll_addresses(servers))[0]
        ca_fingerprint = _trust_on_first_use(first, timeout)
    if not token:
        token = ask_secret("join token (typing is hidden)", what="--token")
    return EnrollInputs(servers, enroll_servers, token, ca_fingerprint)
