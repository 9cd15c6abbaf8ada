"""kms-agent's subcommands, one module per concern; each adds its own parsers (agent/cli.py orders them)."""

from __future__ import annotations

from kms.cli import ArgumentParser

__all__ = ["add_output_flags"]

# Output files (see kms/securefile.py): a regular file is replaced atomically; "-" is stdout; a FIFO or
# a character device (or a link to one, like /dev/stdout) is written through; a link to a regular file
# is refused unless this flag is given.
_FOLLOW = (
    "an output that is a symbolic link to a regular file is refused unless this is given; then the file"
    " it points to is replaced (atomically) and the link kept"
)


def add_output_flags(parser: ArgumentParser) -> None:
    parser.add_argument("--follow-symlinks", action="store_true", help=_FOLLOW)
