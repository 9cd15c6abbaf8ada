"""kms-agent signature commands: sign and verify, with this agent's certificate key or (--key NAME)
with a managed key pair the agent is granted."""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from cryptography.hazmat.primitives.serialization import Encoding

from agent.commands import add_output_flags, add_renewal_options
from agent.context import connect, state_dir
from agent.issuance import trust_domain_of
from agent.keys import KeyFetcher
from agent.standing import check_standing
from kms import filesig
from kms.cli import ArgumentParser, Subcommands, print_json
from kms.errors import FailedPrecondition, InvalidArgument
from kms.keypairs import load_private_key
from kms.peers import agent_peer
from kms.securefile import is_stdio, open_input, output_is_regular, write_output
from kms.times import iso

__all__ = ["add_sign", "add_verify", "cmd_sign", "cmd_verify"]

_Sig = TypeVar("_Sig", filesig.FileSignature, filesig.KeySignature)


def _sha256_file(path: str) -> bytes:
    """SHA-256 of a file, or of standard input for ``-``."""
    digest = hashlib.sha256()
    with open_input(path) as f:
        try:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        except OSError as exc:
            raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    return digest.digest()


def _read_signature(path: str, parse: Callable[[bytes], _Sig]) -> _Sig:
    """The signature file at path, parsed; a malformed one is refused naming the file and what is wrong."""
    with open_input(path) as f:
        try:
            data = f.read()
        except OSError as exc:
            raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    try:
        return parse(data)
    except InvalidArgument as exc:
        shown = "standard input" if is_stdio(path) else path
        raise InvalidArgument(f"{shown}: {exc.message}") from None


def _sign_with_key(args: argparse.Namespace) -> tuple[bytes, str]:
    """The signature file by the current version of key pair args.key, and who signed."""
    digest = _sha256_file(args.file)
    identity, client = connect(args)
    with client:
        key = KeyFetcher(identity, client).fetch(args.key, key_pair=True)
    if key.state != "active":
        raise FailedPrecondition(f"key {key.name} version {key.version} is {key.state}: it may only verify")
    private = load_private_key(key.material, key.key_type)
    sig = filesig.sign_key_file(private, key.name, key.version, key.key_type, digest)
    return sig.encode(), f"key {key.name} version {key.version}"


def _verify_with_key(args: argparse.Namespace) -> int:
    if args.signer:
        raise InvalidArgument("--signer names an agent: a signature by a key pair (--key) has none")
    sig = _read_signature(args.signature, filesig.parse_key_signature)
    if sig.key != args.key:
        raise InvalidArgument(f"the signature is by key {sig.key}, not {args.key}")
    digest = _sha256_file(args.file)
    identity, client = connect(args)
    with client:
        found = client.get_public_key(sig.key, sig.version)
    filesig.verify_key_file(sig, digest, found.key_type, found.state, found.public_key)
    if args.json:
        print_json({"valid": True, "key": sig.key, "version": sig.version, "key_type": sig.key_type})
    else:
        print(f"good signature by key {sig.key} version {sig.version} ({found.state})")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    if is_stdio(args.file) and not args.out:
        raise InvalidArgument("signing standard input (-) needs --out SIG (or --out - for stdout)")
    out = args.out or args.file + ".sig"
    output_is_regular(out, follow_symlink=args.follow_symlinks)  # refuses a bad output before anything else
    if args.key:
        data, signer = _sign_with_key(args)
        write_output(out, data, mode=0o644, follow_symlink=args.follow_symlinks)
        print(f"signed {args.file} with {signer}: {out}", file=sys.stderr if is_stdio(out) else sys.stdout)
        return 0
    state = state_dir(args)
    identity = state.load()
    now = datetime.now(UTC)
    # Never sign with a certificate that is expired or revoked (a verifier would refuse it).
    standing = check_standing(state, identity, args.timeout, now)
    if standing.offline_note:
        print(f"kms-agent: warning: {standing.offline_note}", file=sys.stderr)
    digest = _sha256_file(args.file)
    chain = (identity.cert.public_bytes(Encoding.DER),)
    sig = filesig.create(identity.key, chain, digest, int(now.timestamp()))
    write_output(out, sig.encode(), mode=0o644, follow_symlink=args.follow_symlinks)
    # With the signature on stdout, the note goes to stderr.
    print(
        f"signed {args.file} as {identity.settings.name}: {out}",
        file=sys.stderr if is_stdio(out) else sys.stdout,
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    if is_stdio(args.file) and is_stdio(args.signature):
        raise InvalidArgument("only one of FILE and SIG can be standard input (-)")
    if args.key:
        return _verify_with_key(args)
    sig = _read_signature(args.signature, filesig.parse)
    digest = _sha256_file(args.file)
    identity, client = connect(args)
    ca = identity.roots
    trust_domain = trust_domain_of(identity.settings.spiffe_id)
    with client:

        def is_revoked(serial: str) -> bool:  # revocation status now, from the server
            return client.check_certificate(serial).status != "good"

        signer = filesig.verify_file(
            sig,
            digest,
            lambda when: agent_peer(ca, trust_domain, args.signer, when, is_revoked, "signer"),
            int(datetime.now(UTC).timestamp()),
        )
    signed = iso(sig.signed_at)
    if args.json:
        print_json({"valid": True, "signer": signer.name, "serial": signer.serial, "signed_at": signed})
    else:
        print(f"good signature by {signer.name} (certificate {signer.serial}) made {signed}")
    return 0


def add_sign(sub: Subcommands, common: ArgumentParser) -> None:
    sg = sub.add_parser(
        "sign", parents=[common], help="sign a file with this agent's key, or a granted key pair (--key)"
    )
    sg.add_argument("file", metavar="FILE", help="file to sign; - for stdin (then --out is needed)")
    sg.add_argument(
        "--key",
        metavar="NAME",
        help="sign with the current version of key pair NAME (RSA-PSS or ECDSA, SHA-256) instead",
    )
    sg.add_argument("--out", metavar="SIG", help="signature file (default FILE.sig); - for stdout")
    add_output_flags(sg)
    add_renewal_options(sg)
    sg.set_defaults(func=cmd_sign)


def add_verify(sub: Subcommands, common: ArgumentParser) -> None:
    vf = sub.add_parser(
        "verify", parents=[common], help="verify a signature: chain, signer, time, revocation"
    )
    vf.add_argument("file", metavar="FILE", help="the signed file; - for stdin")
    vf.add_argument("signature", metavar="SIG", help="its signature; - for stdin")
    vf.add_argument("--signer", help="the agent name the signature must be from")
    vf.add_argument("--key", metavar="NAME", help="a signature by key pair NAME (kms-agent sign --key)")
    vf.add_argument("--json", action="store_true")
    add_renewal_options(vf)
    vf.set_defaults(func=cmd_verify)
