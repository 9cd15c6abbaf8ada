"""kms-agent settings from a TOML file (--config or KMS_AGENT_CONFIG): defaults < file < KMS_* < flags.

The file's keys are the flag names, with ``-`` or ``_`` between words.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kms.cli import config_keys, read_toml
from kms.errors import InvalidArgument

__all__ = ["KNOWN_KEYS", "apply_config"]

# key -> (type, environment variable)
KNOWN_KEYS: dict[str, tuple[type, str]] = {
    "dir": (str, "KMS_AGENT_DIR"),
    "timeout": (float, "KMS_TIMEOUT"),
    "renew_fraction": (float, "KMS_RENEW_FRACTION"),
    "log_format": (str, "KMS_LOG_FORMAT"),
}


def apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fills unset options from the environment, then the config file; checks the results."""
    path = getattr(args, "config", None) or os.environ.get("KMS_AGENT_CONFIG")
    # Keys are the flag names, with - or _ between words (renew-fraction, renew_fraction).
    file = config_keys(read_toml(Path(path)), KNOWN_KEYS) if path else {}
    for key, (kind, env) in KNOWN_KEYS.items():
        if getattr(args, key, None) != parser.get_default(key):
            continue  # given on the command line: flags win
        raw = os.environ.get(env, file.get(key))
        if raw is None:
            continue
        try:
            setattr(args, key, kind(raw))
        except (TypeError, ValueError):
            raise InvalidArgument(
                f"config key {key!r} ({env}) must be a {kind.__name__}, not {raw!r}"
            ) from None
    if not 0 < args.renew_fraction < 1:
        raise InvalidArgument(
            f"renew_fraction {args.renew_fraction} must be between 0 and 1 (exclusive), like 0.67"
        )
    if args.timeout <= 0:
        raise InvalidArgument("timeout must be a positive number of seconds")
    if args.log_format not in ("text", "json"):
        raise InvalidArgument(f"log_format {args.log_format!r} is not one of text, json")
    if args.log_format == "json":
        from kms.cli import use_json_logs

        use_json_logs()
