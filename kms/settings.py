"""A settings table: each setting declared once, in one row.

A row gives a setting's name, parser, default, bounds, help text and whether
it is secret. From the table come the command line's options, the lookup of a
value in the config file (``cert-ttl`` or ``cert_ttl``) and in the ``KMS_*``
environment, the bounds checks, and what ``config show`` prints. Precedence is
defaults < file < environment < flags (STYLE 12).

Pure, like the rest of kms/ (STYLE 4): the environment and the file's contents
come in as mappings, so kms-server and kms-agent share this and tests need no
process state.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from pathlib import PurePath
from typing import Any

from kms.durations import format_duration
from kms.errors import InvalidArgument

__all__ = [
    "Bound",
    "Parse",
    "Setting",
    "check_bounds",
    "config_keys",
    "known_keys",
    "options",
    "resolve",
    "show",
]

# Turns a value's text into the value; raises InvalidArgument naming the setting.
Parse = Callable[[str, "Setting"], Any]


def _stars(_: str) -> str:
    return "***"


@dataclass(frozen=True)
class Bound:
    """Limits on a setting's value, written as the operator would write them ("366d", "16").

    The message names the setting and the limit: "--watch-buffer must be between
    16 and 65536 events". ``note`` is appended (a unit, or why); with ``exclusive``
    the limits are open and the message names the value; ``says`` replaces the
    generated wording.
    """

    low: str | None = None
    high: str | None = None
    note: str = ""
    exclusive: bool = False
    says: str = ""

    def check(self, setting: Setting, value: Any) -> None:
        """Raises InvalidArgument, naming the setting, when value is out of bounds."""
        low = None if self.low is None else setting.parse(self.low, setting)
        high = None if self.high is None else setting.parse(self.high, setting)
        if self.exclusive:
            inside = (low is None or value > low) and (high is None or value < high)
        else:
            inside = (low is None or value >= low) and (high is None or value <= high)
        if inside:
            return
        if self.says:
            raise InvalidArgument(f"{setting.label} {self.says}")
        if self.exclusive:
            raise InvalidArgument(
                f"{setting.label} {value} must be between {self.low} and {self.high} (exclusive){self.note}"
            )
        if low is not None and high is not None:
            raise InvalidArgument(f"{setting.label} must be between {self.low} and {self.high}{self.note}")
        limit = f"at most {self.high}" if high is not None else f"at least {self.low}"
        raise InvalidArgument(f"{setting.label} must be {limit}{self.note}")


@dataclass(frozen=True)
class Setting:
    """One setting: the flag ``--cert-ttl``, the variable ``KMS_CERT_TTL`` and the file key ``cert_ttl``.

    Attributes:
        name: the file key, words joined by ``_``.
        parse: text (from a flag, the environment or the file) to value.
        default: as an operator would write it; None: unset.
        help: the flag's help text.
        bounds: checked once the value is known, in order.
        secret: ``show`` prints ``redact(value)``, never the value.
        many: a list: a repeatable flag, comma-separated in the environment, a list in the file.
        env: the environment variable, if not ``KMS_<NAME>``.
        option: more argparse keywords (type, choices).
        show_unset: ``show`` prints null when unset (False: leaves the line out).
        by_key: errors name the key (``timeout``) rather than the flag (``--timeout``).
    """

    name: str
    parse: Parse
    default: str | None
    help: str
    bounds: tuple[Bound, ...] = ()
    secret: bool = False
    redact: Callable[[str], str] = _stars
    many: bool = False
    env: str = ""
    option: Mapping[str, Any] = field(default_factory=dict)
    show_unset: bool = True
    by_key: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_name(self) -> str:
        return self.env or "KMS_" + self.name.upper()

    @property
    def label(self) -> str:
        """How errors name the setting."""
        return self.name if self.by_key else self.flag


def known_keys(table: Sequence[Setting]) -> frozenset[str]:
    return frozenset(s.name for s in table)


def config_keys(file: Mapping[str, Any], known: Collection[str]) -> dict[str, Any]:
    """A config file's keys in one spelling: the flag's (``cert-ttl``) and ``cert_ttl`` are one key.

    Raises:
        InvalidArgument: an unknown key, or one key given in both spellings.
    """
    out: dict[str, Any] = {}
    for key, value in file.items():
        name = key.replace("-", "_")
        if name in out:
            raise InvalidArgument(f"config file sets {key!r} twice (with - and with _): keep one")
        out[name] = value
    unknown = sorted(set(out) - set(known))
    if unknown:
        raise InvalidArgument(
            f"config file key {unknown[0]!r} is unknown: known keys are {', '.join(sorted(known))}"
            " (the flag names; - or _ between words)"
        )
    return out


def options(table: Sequence[Setting]) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """The argparse options of the table, as (flags, keywords); unset flags are None."""
    out: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    for s in table:
        kwargs: dict[str, Any] = {"default": None, "help": s.help, **s.option}
        if s.many:
            kwargs["action"] = "append"
        out.append(((s.flag,), kwargs))
    return out


def _file_text(s: Setting, value: Any) -> str:
    if isinstance(value, list | dict | bool):
        raise InvalidArgument(f"config file key {s.name!r} must be a string or a number")
    return str(value)


def _file_list(s: Setting, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f'config file key {s.name!r} must be a list of names, like ["kms.example.org"]')
    return value


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _resolve_many(
    s: Setting, flags: Mapping[str, Any], env: Mapping[str, str], file: Mapping[str, Any]
) -> Any:
    flag = flags.get(s.name)
    if isinstance(flag, list) and flag:
        items = [str(v) for v in flag]
    elif s.env_name in env or s.name not in file:
        items = _split(env.get(s.env_name, s.default or ""))
    else:
        items = _file_list(s, file[s.name])
    return tuple(s.parse(item, s) for item in items)


def _resolve_one(
    s: Setting, flags: Mapping[str, Any], env: Mapping[str, str], file: Mapping[str, Any]
) -> Any:
    flag = flags.get(s.name)
    if flag is not None and not isinstance(flag, str):
        return flag  # typed by argparse already
    if flag is not None:
        text: str | None = flag
    elif s.env_name in env:
        text = env[s.env_name]
    elif s.name in file:
        text = _file_text(s, file[s.name])
    else:
        text = s.default
    return None if text is None else s.parse(text, s)


def resolve(
    table: Sequence[Setting], flags: Mapping[str, Any], env: Mapping[str, str], file: Mapping[str, Any]
) -> dict[str, Any]:
    """Every setting's value: defaults < file < environment < flags. Bounds are not checked here.

    Args:
        flags: by name; None (or an empty list) is unset. Text is parsed; anything else is
            taken as the value (argparse converted it).
        env: the process environment.
        file: the config file's keys, as config_keys returns them.

    Raises:
        InvalidArgument: naming the first setting whose value does not parse.
    """
    return {s.name: (_resolve_many if s.many else _resolve_one)(s, flags, env, file) for s in table}


def check_bounds(table: Sequence[Setting], values: Mapping[str, Any]) -> None:
    """Raises InvalidArgument naming the first setting (in table order) out of its bounds."""
    for s in table:
        value = values.get(s.name)
        if value is not None:
            for bound in s.bounds:
                bound.check(s, value)


def _shown(value: Any) -> Any:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, tuple | list):
        return [_shown(v) for v in value]
    return value


def show(table: Sequence[Setting], values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings as ``config show`` prints them (JSON values), secrets redacted."""
    out: dict[str, Any] = {}
    for s in table:
        value = values.get(s.name)
        if value is None and not s.show_unset:
            continue
        out[s.name] = s.redact(str(value)) if s.secret and value is not None else _shown(value)
    return out
