"""kms-agent key commands: fetch-key, public-key, encrypt, decrypt."""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from agent.commands import add_output_flags, add_renewal_options
from agent.context import connect, iso, state_dir
from agent.files import decrypt_file, encrypt_file
from agent.keys import FetchedKey, KeyFetcher, encode_key
from agent.state import KeyFile
from kms.cli import ArgumentParser, Subcommands, print_json
from kms.errors import DataLoss, FailedPrecondition, InvalidArgument, WrongKeyType
from kms.keypairs import AES_256, load_public_key
from kms.securefile import is_stdio, output_is_regular, write_output

__all__ = [
    "add_decrypt",
    "add_encrypt",
    "add_fetch_key",
    "add_public_key",
    "cmd_decrypt",
    "cmd_encrypt",
    "cmd_fetch_key",
    "cmd_public_key",
]


def _fetch_any(fetcher: KeyFetcher, name: str, version: int, fmt: str | None, *, decrypt: bool) -> FetchedKey:
    """An AES key, or a key pair's private key: --format pem asks for a pair, a byte format for
    an AES key, and no format for whichever the key is (a refused ask releases nothing)."""
    if fmt == "pem":
        return fetcher.fetch(name, version, decrypt=decrypt, key_pair=True)
    try:
        return fetcher.fetch(name, version, decrypt=decrypt)
    except WrongKeyType:
        if fmt is not None:
            raise
        return fetcher.fetch(name, version, decrypt=decrypt, key_pair=True)


def cmd_fetch_key(args: argparse.Namespace) -> int:
    out = args.out
    follow = args.follow_symlinks
    if out is not None and is_stdio(out) and args.json:
        raise InvalidArgument("--out - and --json both write to stdout: use --json --include-key instead")
    # Checked before the key is fetched: a refused output must not cost a release.
    regular = out is not None and output_is_regular(out, follow_symlink=follow)
    identity, client = connect(args)
    with client:
        fetcher, decrypt = KeyFetcher(identity, client), args.purpose == "decrypt"
        key = _fetch_any(fetcher, args.name, args.version, args.format, decrypt=decrypt)
    pair = key.key_type != AES_256
    meta = {"name": key.name, "version": key.version, "state": key.state, "created_at": iso(key.created_at)}
    meta["type"] = key.key_type
    if out is not None and not is_stdio(out):
        # A key file is raw bytes unless a text format is asked for; a key pair's is PEM.
        fmt = "pem" if pair else args.format or "raw"
        write_output(out, encode_key(key.material, fmt), mode=0o600, follow_symlink=follow)
        if regular:
            # Remembered so that kms-agent watch can delete it if the version is compromised,
            # and kms-agent run can move it to the new version when the key rotates. A FIFO or
            # a device is written once and never touched again.
            state_dir(args).remember_key_file(
                KeyFile(key.name, key.version, Path(out), fmt, follows_current=not args.version)
            )
        meta["file"] = out
    if args.json:
        if args.include_key and pair:
            meta["key_pem"] = encode_key(key.material, "pem").decode()
        elif args.include_key:
            meta["key_base64"] = base64.b64encode(key.material).decode()
        print_json(meta)
    elif out is not None and not is_stdio(out):
        print(f"wrote {key.name} version {key.version} to {out}")
    else:
        # Standard output (no --out, or --out -): base64 unless asked otherwise, never raw to a terminal.
        fmt = "pem" if pair else args.format or ("raw" if out is not None else "base64")
        if fmt == "raw" and sys.stdout.isatty():
            raise InvalidArgument(
                "refusing to print a raw key to a terminal: use --out FILE or --format base64"
            )
        sys.stdout.buffer.write(encode_key(key.material, fmt))
        sys.stdout.flush()
    return 0


def cmd_public_key(args: argparse.Namespace) -> int:
    if args.version < 0:
        raise InvalidArgument("--version must be a positive number (or 0 for the current version)")
    _, client = connect(args)
    with client:
        found = client.get_public_key(args.name, args.version)
    try:
        public = load_public_key(found.public_key, found.key_type)
    except ValueError:
        raise DataLoss(
            f"the server's public key for {found.name} version {found.version} does not load as a"
            f" {found.key_type} key: report it to the server's administrator"
        ) from None
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if found.state in ("compromised", "destroyed_compromised"):
        print(
            f"kms-agent: warning: version {found.version} of key {found.name} is compromised:"
            " do not trust signatures by it",
            file=sys.stderr,
        )
    sys.stdout.write(pem.decode())
    return 0


def cmd_encrypt(args: argparse.Namespace) -> int:
    output_is_regular(args.output, follow_symlink=args.follow_symlinks)  # before fetching the key
    identity, client = connect(args)
    with client:
        key = KeyFetcher(identity, client).fetch(args.key)
    if key.state != "active":
        raise FailedPrecondition(
            f"key {key.name!r} version {key.version} is {key.state}: it may only decrypt"
        )
    encrypt_file(
        Path(args.input),
        Path(args.output),
        key.material,
        key.name,
        key.version,
        follow_symlink=args.follow_symlinks,
    )
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    identity, client = connect(args)
    with client:
        fetcher = KeyFetcher(identity, client)
        decrypt_file(
            Path(args.input),
            Path(args.output),
            lambda name, version: fetcher.fetch(name, version, decrypt=True).material,
            follow_symlink=args.follow_symlinks,
        )
    return 0


def add_fetch_key(sub: Subcommands, common: ArgumentParser) -> None:
    fk = sub.add_parser(
        "fetch-key",
        parents=[common],
        help="fetch a granted key (AES, or a key pair's private key as PEM), unwrap it locally",
    )
    fk.add_argument("name")
    fk.add_argument("--version", type=int, default=0, help="key version (default: current)")
    fk.add_argument(
        "--purpose",
        choices=("encrypt", "decrypt"),
        default="encrypt",
        help="what the key is for (default encrypt: refused once the key has expired);"
        " decrypt needs --version and works until that version is destroyed",
    )
    fk.add_argument(
        "--out",
        help="write the key to FILE (0600, atomically; - for stdout, raw unless --format) instead of"
        " printing it in base64",
    )
    fk.add_argument(
        "--format",
        choices=("raw", "base64", "hex", "pem"),
        help="AES keys: raw for --out, base64 for stdout by default; key pairs: pem (PKCS#8), always",
    )
    fk.add_argument(
        "--json", action="store_true", help="print metadata as JSON (no key unless --include-key)"
    )
    fk.add_argument("--include-key", action="store_true", help="with --json: include the key, base64")
    add_output_flags(fk)
    add_renewal_options(fk)
    fk.set_defaults(func=cmd_fetch_key)


def add_public_key(sub: Subcommands, common: ArgumentParser) -> None:
    pk = sub.add_parser(
        "public-key", parents=[common], help="print the public key (PEM) of a granted key pair's version"
    )
    pk.add_argument("name")
    pk.add_argument("--version", type=int, default=0, help="key version (default: current)")
    add_renewal_options(pk)
    pk.set_defaults(func=cmd_public_key)


def add_encrypt(sub: Subcommands, common: ArgumentParser) -> None:
    en = sub.add_parser("encrypt", parents=[common], help="encrypt a file with the current version of a key")
    en.add_argument("--key", required=True, help="key name")
    en.add_argument("input", metavar="IN", help="file to encrypt; - for stdin")
    en.add_argument("output", metavar="OUT", help="where the ciphertext goes; - for stdout")
    add_output_flags(en)
    add_renewal_options(en)
    en.set_defaults(func=cmd_encrypt)


def add_decrypt(sub: Subcommands, common: ArgumentParser) -> None:
    de = sub.add_parser("decrypt", parents=[common], help="decrypt a file made by kms-agent encrypt")
    de.add_argument("input", metavar="IN", help="file to decrypt; - for stdin")
    de.add_argument("output", metavar="OUT", help="where the plaintext goes; - for stdout")
    add_output_flags(de)
    add_renewal_options(de)
    de.set_defaults(func=cmd_decrypt)
