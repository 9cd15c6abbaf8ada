"""What both command lines share: one-line errors, exit codes, logging setup.

``run_main`` is the one place a KmsError becomes a line on stderr and an exit
code (STYLE 11); a traceback is shown only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

from kms.cli_help import SubcommandErrors, add_version
from kms.errors import InvalidArgument, KmsError
from kms.output import Cell, View, plain, terminal
from kms.output import Table as _Table
from kms.settings import config_keys

__all__ = [
    "ArgumentParser",
    "Subcommands",
    "add_listing_options",
    "command_parsers",
    "config_keys",
    "tag_logs",
    "use_json_logs",
    "print_json",
    "print_table",
    "print_views",
    "read_toml",
    "run_main",
]


class ArgumentParser(SubcommandErrors):
    """argparse whose usage errors are one stderr line and exit code 2, naming the subcommand's help.

    Flags are never abbreviated (--include for --include-key): a script keeps meaning the same
    when a flag is added, and the shell's history filter can recognise secret-bearing flags.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise InvalidArgument(f"{message} (see {self.prog} --help)")


_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _FieldsFormatter(logging.Formatter):
    """Appends the ``extra=`` fields of a record as key=value (never secrets: see STYLE 13)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")
        ]
        return f"{line} {' '.join(fields)}" if fields else line


Option = tuple[tuple[str, ...], dict[str, Any]]

# What add_subparsers returns: each command module adds its own parsers to it.
Subcommands: TypeAlias = "argparse._SubParsersAction[ArgumentParser]"


def command_parsers(
    prog: str, description: str, shared: Sequence[Option]
) -> tuple[ArgumentParser, ArgumentParser]:
    """The top-level parser and the parent parser of every subcommand, both with the shared options.

    Shared options (and --verbose) work before or after the subcommand: the
    subcommand's copies default to SUPPRESS, so they never overwrite a value
    given before it.
    """
    verbose: Option = (
        ("--verbose",),
        {"action": "store_true", "default": False, "help": "debug logging and tracebacks"},
    )
    parser = ArgumentParser(prog=prog, description=description)
    add_version(parser, prog)
    common = ArgumentParser(add_help=False)
    for target, top in ((parser, True), (common, False)):
        for flags, kwargs in (*shared, verbose):
            target.add_argument(*flags, **(kwargs if top else {**kwargs, "default": argparse.SUPPRESS}))
    parser.add_argument("--no-color", action="store_true", default=False, help=_NO_COLOR)
    return parser, common


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the extra= fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(
            {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        )
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def use_json_logs() -> None:
    """Switches the handlers set up by run_main to one JSON object per line (--log-format json)."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_JsonFormatter())


class _Tag(logging.Filter):
    def __init__(self, fields: dict[str, object]) -> None:
        super().__init__()
        self._fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self._fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def tag_logs(**fields: object) -> None:
    """Adds these fields to every record the handlers set up by run_main write (unless a record
    sets its own): a process among several (a kms-server worker) says which one it is."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Tag(fields))


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_FieldsFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    # grpc and asyncio chatter is noise at INFO.
    logging.getLogger("asyncio").setLevel(logging.WARNING)


def run_main(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    quiet_grpc: bool = True,
    prepare: Callable[[argparse.Namespace], None] | None = None,
) -> int:
    """Parses argv and runs ``args.func(args)``, mapping every error to one line.

    With quiet_grpc, gRPC's C core is told not to log to stderr, so a failed call is the
    one line this function prints; GRPC_VERBOSITY=debug in the environment still wins.
    gRPC reads it as grpc is imported: the console scripts set it earlier still, in their
    packages' __init__ (kms/grpc_quiet.py); this covers main(argv) called in-process.
    """
    verbose = "--verbose" in (sys.argv[1:] if argv is None else argv)
    if quiet_grpc and not verbose:
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        args = parser.parse_args(argv)
        _setup_logging(args.verbose)
        if prepare is not None:  # config file values and checks, before anything runs
            prepare(args)
        code = _call(args.func, args)
        # Piped, stdout is buffered: its last write happens here, where a reader that went away
        # (`| head`) is caught below, not at interpreter exit ("Exception ignored ...", exit 120).
        sys.stdout.flush()
        return code
    except KmsError as exc:
        if verbose:
            logging.getLogger(prog).exception("failed")
        print(f"{prog}: error: {exc.message}", file=sys.stderr)
        _flush_or_drop_stdout()  # what was printed before the error, to a reader that may be gone
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Whoever read our output (stdout, a FIFO) went away, as `| head` does: stop quietly,
        # as other tools do, and keep Python from failing again when it flushes stdout at exit.
        _drop_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it
    except Exception as exc:  # a bug: still one line unless --verbose
        if verbose:
            raise
        print(
            f"{prog}: internal error: {type(exc).__name__}: {exc} (run with --verbose for details)",
            file=sys.stderr,
        )
        return 1


def _call(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs the command; --no-color holds as NO_COLOR=1 while it runs (a shell's later lines are
    not affected; `kms-server --no-color` opening the shell holds for the whole shell)."""
    if not getattr(args, "no_color", False):
        return func(args)
    before = os.environ.get("NO_COLOR")
    os.environ["NO_COLOR"] = "1"
    try:
        return func(args)
    finally:
        if before is None:
            os.environ.pop("NO_COLOR", None)
        else:
            os.environ["NO_COLOR"] = before


def _drop_stdout() -> None:
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _flush_or_drop_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()


def read_toml(path: Path) -> dict[str, Any]:
    """A config file as a dict. Raises InvalidArgument naming the file and the problem."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise InvalidArgument(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"config file {path} is not valid TOML: {exc}") from None


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[Cell]], *, lines: Sequence[str] | None = None
) -> None:
    """A listing: rows under headers (see kms/output.py, and print_views)."""
    print_views(_Table(headers, rows, lines))


_NO_COLOR = "no color on a terminal (as NO_COLOR=1 does)"


def add_listing_options(parser: argparse.ArgumentParser, json_help: str | None = None) -> None:
    """--json and --no-color, on every command that lists or reports a status."""
    parser.add_argument("--json", action="store_true", help=json_help)
    # SUPPRESS: `kms-server --no-color key list` stays colorless (the subcommand's default would reset it).
    parser.add_argument("--no-color", action="store_true", default=argparse.SUPPRESS, help=_NO_COLOR)


def _may_color() -> bool:
    """https://no-color.org: NO_COLOR set to anything but empty turns color off; so does a dumb terminal."""
    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def print_views(*views: View) -> None:
    """Every listing's way out, for both programs: on a terminal, aligned tables with headers, times
    relative to now and states in color; piped, the plain, stable text scripts read (no rich loaded)."""
    if sys.stdout.isatty():
        width = shutil.get_terminal_size().columns
        text = terminal(views, now=int(time.time()), color=_may_color(), width=width)
    else:
        text = plain(views)
    sys.stdout.write(text)
