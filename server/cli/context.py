"""What every kms-server command finds the same way: the config file, the data dir, the admin socket.

Its own module because the daemon commands (run, restore) and the admin ones
(token, key, audit, ...) both need it, and neither should import the other.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kms.cli import config_keys, read_toml
from kms.times import iso
from server.cli.admin_client import AdminClient
from server.config import KNOWN_KEYS, resolve_data_dir

__all__ = ["admin", "config_file", "data_dir", "iso"]


def config_file(args: argparse.Namespace) -> dict[str, object] | None:
    """The config file of --config or KMS_CONFIG, with its keys in one spelling (None: no file)."""
    path = args.config or os.environ.get("KMS_CONFIG")
    return config_keys(read_toml(Path(path)), KNOWN_KEYS) if path else None


def data_dir(args: argparse.Namespace) -> Path:
    """The data dir exactly as `run` finds it: --data-dir, KMS_DATA_DIR, the config file, the default."""
    return resolve_data_dir(args.data_dir, file=config_file(args))


def admin(args: argparse.Namespace) -> AdminClient:
    """A client of the admin socket in the data dir."""
    return AdminClient(data_dir(args) / "admin.sock")
