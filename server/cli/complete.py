"""kms-server completion: the shell scripts (bash, zsh, fish), and the hidden subcommand they call
for live names (keys, agents, groups, serials, key versions, grantees) read over the admin socket.

Live names are fetched with a one-second time limit per call and kept a few seconds in a 0600
file under the user's cache directory, so Tab after Tab costs one fetch; when the server does not
answer (or anything else goes wrong) the hidden subcommand prints nothing and exits 0, and the
shell offers nothing rather than an error in the middle of the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import time
from pathlib import Path

from kms import completion
from kms.cli import ArgumentParser, Subcommands
from kms.securefile import ensure_private_dir, write_atomic
from server.cli.admin_client import AdminClient
from server.cli.context import data_dir

__all__ = ["add_completion", "live", "rule"]

_FETCH_TIMEOUT = 1.0


def add_completion(sub: Subcommands, common: ArgumentParser) -> None:
    completion.add_commands(
        sub,
        common,
        knows="the names of keys, agents, groups, serials and key versions from the running server",
        build=_build_parser,
        rule=rule,
        live=live,
    )


def _build_parser() -> argparse.ArgumentParser:
    from server.cli import build_parser  # the whole parser: this module is one of its parts

    return build_parser()


def rule(path: tuple[str, ...], action: argparse.Action) -> str | None:
    """The live kind an argument of kms-server takes, by its subcommand path and name."""
    dest, group = action.dest, path[:1]
    if dest == "name" and group == ("key",) and path != ("key", "create"):
        return "keys"
    if dest == "name" and group in (("revoke",), ("release",)):
        return {"key": "keys", "agent": "agents"}.get(path[-1])
    if dest == "serial":
        return "serials"
    if dest == "version" and path in (("key", "destroy"), ("revoke", "key")):
        return "versions"
    if (dest, path) in (
        ("grantee", ("key", "grant")),
        ("grantee", ("key", "ungrant")),
        ("grant", ("key", "create")),
    ):
        return "grants"
    if (dest, path) == ("group", ("token", "create")):
        return "groups"
    return None


def live(args: argparse.Namespace, kind: str, words: list[str]) -> list[str]:
    """The live names of kind for the command line words (raises when they cannot be had)."""
    return completion.values(_names(_where(argparse.Namespace(**vars(args)), words)), kind, words)


def _where(args: argparse.Namespace, words: list[str]) -> argparse.Namespace:
    """args with --data-dir and --config as typed on the command line being completed, if given."""
    typed = argparse.ArgumentParser(add_help=False)
    typed.add_argument("--data-dir", default=getattr(args, "data_dir", None))
    typed.add_argument("--config", default=getattr(args, "config", None))
    found, _ = typed.parse_known_args(words)
    for name in ("data_dir", "config"):
        value = getattr(found, name)
        setattr(args, name, os.path.expanduser(value) if value else None)
    return args


def _names(args: argparse.Namespace) -> completion.Names:
    socket = data_dir(args) / "admin.sock"
    cache = _cache_file(socket)
    now = time.time()
    with contextlib.suppress(OSError):
        cached = completion.from_cache(cache.read_text(), now)
        if cached is not None:
            return cached
    names = _fetch(socket)
    with contextlib.suppress(OSError):
        ensure_private_dir(cache.parent)
        write_atomic(cache, completion.cache_text(names, now).encode(), mode=0o600)
    return names


def _cache_file(socket: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(socket.resolve()).encode()).hexdigest()[:16]
    return base / "seed-kms" / f"complete-server-{digest}.json"


def _fetch(socket: Path) -> completion.Names:
    with AdminClient(socket, timeout=_FETCH_TIMEOUT) as admin:
        keys = admin.list_keys().keys
        agents = admin.list_agents().agents
        held = admin.list_revocations(active=True).events
    groups = sorted(
        {g for a in agents for g in a.groups}
        | {g[6:] for k in keys for g in k.grants if g.startswith("group:")}
    )
    serials = {a.serial for a in agents if a.serial} | {s for e in held for s in e.serial.split(",") if s}
    names: completion.Names = {
        "keys": sorted(k.name for k in keys),
        "agents": sorted(a.name for a in agents),
        "groups": groups,
        "serials": sorted(serials),
        "grants": sorted(
            {
                *(f"agent:{a.name}" for a in agents),
                *(f"group:{g}" for g in groups),
                *(g for k in keys for g in k.grants),
            }
        ),
    }
    for key in keys:
        names[f"versions:{key.name}"] = [str(v.version) for v in key.versions]
    return names
