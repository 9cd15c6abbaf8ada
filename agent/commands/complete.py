"""kms-agent completion: the shell scripts (bash, zsh, fish), and the hidden subcommand they call
for live names.

What the agent may know: the keys it is granted, and their versions it may still fetch, asked of
its server (ListGrantedKeys: what it could learn one FetchKey at a time, with nothing released;
other keys stay unnamed), with a one-second limit and kept a few seconds in a 0600 file under the
user's cache directory; and from its state directory, its own name, groups and certificate
serial, and the keys and versions it fetched to files (so completion still works, partly, with
the server down). Nothing to be had completes nothing, silently.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from agent.context import client_for
from agent.state import KeyFile, StateDir, default_state_dir
from kms import completion
from kms.cli import ArgumentParser, Subcommands
from kms.securefile import ensure_private_dir, write_atomic

__all__ = ["add_completion", "live", "quiet", "rule"]


_FETCH_TIMEOUT = 1.0

# (subcommand, argument) -> kind
_RULES = {
    ("fetch-key", "name"): "keys",
    ("public-key", "name"): "keys",
    ("encrypt", "key"): "keys",
    ("sign", "key"): "keys",
    ("verify", "key"): "keys",
    ("fetch-key", "version"): "versions",
    ("public-key", "version"): "versions",
    ("exchange", "group"): "groups",
    ("check", "serial"): "serials",
    ("verify", "signer"): "agents",
}


def add_completion(sub: Subcommands, common: ArgumentParser) -> None:
    completion.add_commands(
        sub,
        common,
        knows="the names this agent may know: the keys it is granted and their versions, its groups, its serial",
        build=_build_parser,
        rule=rule,
        live=live,
    )


def _build_parser() -> argparse.ArgumentParser:
    from agent.cli import build_parser  # the whole parser: this module is one of its parts

    return build_parser()


def quiet(
    argv: list[str], prepare: Callable[[argparse.Namespace], None]
) -> Callable[[argparse.Namespace], None]:
    """prepare, made silent for the hidden subcommand: a bad config file must not print in the middle
    of a command line being completed (the defaults then apply)."""

    def quietly(args: argparse.Namespace) -> None:
        with contextlib.suppress(Exception):
            prepare(args)

    return quietly if argv[:1] == [completion.HIDDEN] else prepare


def rule(path: tuple[str, ...], action: argparse.Action) -> str | None:
    """The live kind an argument of kms-agent takes, by its subcommand and name."""
    return _RULES.get((path[-1], action.dest)) if path else None


def live(args: argparse.Namespace, kind: str, words: list[str]) -> list[str]:
    """The live names of kind for the command line words (raises when they cannot be had)."""
    return completion.values(_names(_state(args, words)), kind, words)


def _state(args: argparse.Namespace, words: list[str]) -> StateDir:
    """The state dir of --dir as typed on the command line being completed, else as kms-agent finds it."""
    typed = argparse.ArgumentParser(add_help=False)
    typed.add_argument("--dir", default=getattr(args, "dir", None))
    found, _ = typed.parse_known_args(words)
    return StateDir(Path(os.path.expanduser(found.dir))) if found.dir else StateDir(default_state_dir())


def _names(state: StateDir) -> completion.Names:
    names = _local(state)
    with contextlib.suppress(Exception):  # the server's answer, when there is one
        granted = _granted(state)
        for kind, values in granted.items():
            names[kind] = sorted(
                {*names.get(kind, []), *values},
                key=lambda v: (len(v), v) if kind.startswith("versions:") else (0, v),
            )
    return names


def _local(state: StateDir) -> completion.Names:
    settings = json.loads(state.settings.read_text())
    names: completion.Names = {
        "agents": [str(settings["name"])],
        "groups": sorted(settings.get("groups", [])),
    }
    with contextlib.suppress(Exception):  # unreadable: FailedPrecondition
        names["serials"] = [format(state.load_certificate().serial_number, "x")]
    files: list[KeyFile] = []
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        files = [KeyFile.parse(e) for e in json.loads(state.key_files.read_text())]
    names["keys"] = sorted({f.name for f in files})
    for name in names["keys"]:
        versions = sorted({f.version for f in files if f.name == name})
        names[f"versions:{name}"] = [str(v) for v in versions]
    return names


def _granted(state: StateDir) -> completion.Names:
    """The granted keys and versions, from the cache while fresh, else from the server."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(state.path.resolve()).encode()).hexdigest()[:16]
    cache = base / "seed-kms" / f"complete-agent-{digest}.json"
    now = time.time()
    with contextlib.suppress(OSError):
        cached = completion.from_cache(cache.read_text(), now)
        if cached is not None:
            return cached
    with client_for(state.load(), _FETCH_TIMEOUT) as client:
        keys = client.list_granted_keys().keys
    names: completion.Names = {"keys": [k.name for k in keys]}
    names.update({f"versions:{k.name}": [str(v) for v in k.versions] for k in keys})
    with contextlib.suppress(OSError):
        ensure_private_dir(cache.parent)
        write_atomic(cache, completion.cache_text(names, now).encode(), mode=0o600)
    return names
