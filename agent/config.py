"""kms-agent settings: one table (kms/settings.py), read from flags, KMS_* and a TOML file.

Precedence is defaults < file (--config or KMS_AGENT_CONFIG) < environment < flags. The file's
keys are the flag names, with ``-`` or ``_`` between words.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from agent.client import DEFAULT_TIMEOUT
from agent.renew import DEFAULT_RENEW_FRACTION
from kms.cli import read_toml, use_json_logs
from kms.errors import InvalidArgument
from kms.settings import Bound, Parse, Setting, check_bounds, config_keys, known_keys, resolve

__all__ = ["KNOWN_KEYS", "SETTINGS", "apply_config"]


def _typed(kind: type) -> Parse:
    def parse(text: str, s: Setting) -> Any:
        try:
            return kind(text)
        except (TypeError, ValueError):
            raise InvalidArgument(
                f"config key {s.name!r} ({s.env_name}) must be a {kind.__name__}, not {text!r}"
            ) from None

    return parse


def _log_format(text: str, s: Setting) -> str:
    if text not in ("text", "json"):
        raise InvalidArgument(f"{s.name} {text!r} is not one of text, json")
    return text


_S = Setting
# The options every kms-agent command takes, in --help's order (--config sits between timeout and log_format).
SETTINGS: tuple[Setting, ...] = (
    _S("dir", _typed(str), None, "state directory (env KMS_AGENT_DIR; default ~/.local/state/kms-agent)", env="KMS_AGENT_DIR", by_key=True),
    _S("timeout", _typed(float), repr(DEFAULT_TIMEOUT), "seconds per call", (Bound(low="0", exclusive=True, says="must be a positive number of seconds"),), option={"type": float}, by_key=True),
    _S("log_format", _log_format, "text", "log lines as text or json", option={"choices": ("text", "json")}, by_key=True),
    _S("renew_fraction", _typed(float), repr(DEFAULT_RENEW_FRACTION), "renew the certificate past this fraction of its life (default 2/3)", (Bound("0", "1", ", like 0.67", exclusive=True),), option={"type": float}, by_key=True),
)  # fmt: skip

KNOWN_KEYS = known_keys(SETTINGS)


def apply_config(args: argparse.Namespace) -> None:
    """Fills every setting in args: flags, else the environment, else the config file, else the default.

    Raises:
        InvalidArgument: naming the setting that is unknown, malformed or out of bounds.
    """
    path = getattr(args, "config", None) or os.environ.get("KMS_AGENT_CONFIG")
    # Keys are the flag names, with - or _ between words (renew-fraction, renew_fraction).
    file = config_keys(read_toml(Path(path)), KNOWN_KEYS) if path else {}
    values = resolve(SETTINGS, {s.name: getattr(args, s.name, None) for s in SETTINGS}, os.environ, file)
    check_bounds(SETTINGS, values)
    for name, value in values.items():
        setattr(args, name, value)
    if args.log_format == "json":
        use_json_logs()
