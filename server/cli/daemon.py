"""kms-server run | init | config show | restore: the daemon's own commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from kms.cli import ArgumentParser, Subcommands, print_json
from kms.errors import InvalidArgument
from kms.settings import options
from server.cli import confirm
from server.cli.context import config_file
from server.cli.context import data_dir as find_data_dir
from server.config import SETTINGS, ServerConfig
from server.database_url import url_holds_secret

__all__ = ["add_config", "add_init", "add_restore", "add_run"]

logger = logging.getLogger(__name__)


def _config(args: argparse.Namespace) -> ServerConfig:
    flags = {s.name: getattr(args, s.name) for s in SETTINGS}
    flags["data_dir"] = args.data_dir
    cfg = ServerConfig.load(flags, file=config_file(args))
    if args.database and url_holds_secret(args.database):
        # The command line is world-readable (ps, /proc/PID/cmdline); the environment and files are not.
        logger.warning(
            "--database on the command line holds a password, which any local user can read in ps: give "
            "the URL without it, and the password in --database-password-file (0600), PGPASSFILE or "
            "PGPASSWORD, or the whole URL in KMS_DATABASE or the config file"
        )
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    # Imported here: the whole server, which admin commands never need.
    from server.ops import eventloop
    from server.workers.supervisor import ROLE_ENV

    if ROLE_ENV in os.environ:  # started by a supervisor, as one of its workers
        from server.workers.worker import serve_worker

        return eventloop.run(serve_worker(_config(args), os.environ[ROLE_ENV]))
    from server.app import serve

    return eventloop.run(serve(_config(args), sys.argv[1:]))


def cmd_init(args: argparse.Namespace) -> int:
    from server.app import initialize  # as in cmd_run

    deployment = asyncio.run(initialize(_config(args)))
    verb = "created" if deployment.created else "already initialised:"
    print(f"{verb} trust-domain={deployment.trust_domain} ca-fingerprint={deployment.fingerprint}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    print_json(_config(args).to_dict())
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    data_dir = find_data_dir(args)
    master = Path(args.master_key) if args.master_key else None
    if master is None:
        raise InvalidArgument("restore needs --master-key FILE: the backup does not contain it")
    from server.deployment.backup import check_restorable, restore, restore_replacing  # as in cmd_run

    entries = sorted(p.name for p in data_dir.iterdir()) if data_dir.is_dir() else []
    if not entries:
        restore(Path(args.file), data_dir, master)
        print(f"restored {args.file} into {data_dir}: start it with kms-server run --data-dir {data_dir}")
        return 0
    aside = data_dir.with_name(
        f"{data_dir.name}.before-restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    )
    shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
    check_restorable(Path(args.file), data_dir)  # refused now, not after the question
    confirm.ask(
        args,
        "restore",
        lambda: (
            f"{data_dir} is not empty ({len(entries)} entries: {shown}): they are moved to {aside},"
            f" and {args.file} is unpacked in their place. The server must be stopped."
        ),
    )
    restore_replacing(Path(args.file), data_dir, master, aside)
    print(f"restored {args.file} into {data_dir}; what it held before is in {aside}")
    return 0


def _run_options() -> ArgumentParser:
    """The parent parser of every command that reads the whole config: run, init, config show."""
    run_options = ArgumentParser(add_help=False)
    for flags, kwargs in options(SETTINGS):
        run_options.add_argument(*flags, **kwargs)
    return run_options


def add_run(sub: Subcommands, common: ArgumentParser) -> None:
    run = sub.add_parser(
        "run", parents=[common, _run_options()], help="run the server (creates the CA on first start)"
    )
    run.set_defaults(func=cmd_run)


def add_init(sub: Subcommands, common: ArgumentParser) -> None:
    init = sub.add_parser(
        "init",
        parents=[common, _run_options()],
        help="create the CA and master key (once per deployment), then exit; run does it on first start too",
    )
    init.set_defaults(func=cmd_init)


def add_config(sub: Subcommands, common: ArgumentParser) -> None:
    config = sub.add_parser("config", help="the configuration").add_subparsers(
        dest="config_command", required=True, metavar="COMMAND"
    )
    show = config.add_parser(
        "show", parents=[common, _run_options()], help="print the effective config (no secrets)"
    )
    show.set_defaults(func=cmd_config_show)


def add_restore(sub: Subcommands, common: ArgumentParser) -> None:
    rs = sub.add_parser(
        "restore",
        parents=[common],
        help="unpack a backup into a new data dir (server stopped); a non-empty one is moved aside, after asking",
    )
    rs.add_argument("file", metavar="FILE")
    rs.add_argument("--master-key", help="the master key file of the backed-up server")
    confirm.add_yes(rs)
    rs.set_defaults(func=cmd_restore)
