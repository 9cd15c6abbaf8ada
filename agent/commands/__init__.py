"""kms-agent's subcommands, one module per concern; each adds its own parsers (agent/cli.py orders them)."""

from __future__ import annotations

from agent.config import SETTINGS
from kms.cli import ArgumentParser
from kms.settings import Setting, options

__all__ = ["GLOBAL_SETTINGS", "add_output_flags", "add_renewal_options"]

# Settings that apply only to the commands that may renew this agent's certificate first (the
# mTLS commands, through agent.context.connect) or keep it renewed (run): their flags appear
# under those commands alone, not under enroll, renew, check or the program itself. The config
# file and KMS_* variables still set them for every command.
_RENEWAL = ("renew_fraction",)
GLOBAL_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.name not in _RENEWAL)

# Output files (see kms/securefile.py): a regular file is replaced atomically; "-" is stdout; a FIFO or
# a character device (or a link to one, like /dev/stdout) is written through; a link to a regular file
# is refused unless this flag is given.
_FOLLOW = (
    "an output that is a symbolic link to a regular file is refused unless this is given; then the file"
    " it points to is replaced (atomically) and the link kept"
)


def add_output_flags(parser: ArgumentParser) -> None:
    parser.add_argument("--follow-symlinks", action="store_true", help=_FOLLOW)


def add_renewal_options(parser: ArgumentParser) -> None:
    for flags, kwargs in options([s for s in SETTINGS if s.name in _RENEWAL]):
        parser.add_argument(*flags, **kwargs)
