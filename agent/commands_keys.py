"""kms-agent key commands: fetch-key, encrypt, decrypt."""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

from agent.context import connect, iso, state_dir
from agent.files import decrypt_file, encrypt_file
from agent.keys import KeyFetcher, encode_key
from agent.state import KeyFile
from kms.cli import print_json
from kms.errors import FailedPrecondition, InvalidArgument
from kms.securefile import write_atomic

__all__ = ["cmd_fetch_key", "cmd_encrypt", "cmd_decrypt"]


def cmd_fetch_key(args: argparse.Namespace) -> int:
    identity, client = connect(args)
    with client:
        key = KeyFetcher(identity, client).fetch(args.name, args.version)
    meta = {"name": key.name, "version": key.version, "state": key.state, "created_at": iso(key.created_at)}
    if args.out:
        # A key file is raw bytes unless a text format is asked for.
        fmt = args.format or "raw"
        write_atomic(Path(args.out), encode_key(key.material, fmt), mode=0o600)
        # Remembered so that kms-agent watch can delete it if the version is compromised,
        # and kms-agent run can move it to the new version when the key rotates.
        state_dir(args).remember_key_file(
            KeyFile(key.name, key.version, Path(args.out), fmt, follows_current=not args.version)
        )
        meta["file"] = args.out
    if args.json:
        if args.include_key:
            meta["key_base64"] = base64.b64encode(key.material).decode()
        print_json(meta)
    elif args.out:
        print(f"wrote {key.name} version {key.version} to {args.out}")
    else:
        fmt = args.format or "base64"
        if fmt == "raw" and sys.stdout.isatty():
            raise InvalidArgument(
                "refusing to print a raw key to a terminal: use --out FILE or --format base64"
            )
        sys.stdout.buffer.write(encode_key(key.material, fmt))
        sys.stdout.flush()
    return 0


def cmd_encrypt(args: argparse.Namespace) -> int:
    identity, client = connect(args)
    with client:
        key = KeyFetcher(identity, client).fetch(args.key)
    if key.state != "active":
        raise FailedPrecondition(
            f"key {key.name!r} version {key.version} is {key.state}: it may only decrypt"
        )
    encrypt_file(Path(args.input), Path(args.output), key.material, key.name, key.version)
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    identity, client = connect(args)
    with client:
        fetcher = KeyFetcher(identity, client)
        decrypt_file(
            Path(args.input), Path(args.output), lambda name, version: fetcher.fetch(name, version).material
        )
    return 0
