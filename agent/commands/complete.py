"""kms-agent completion: the shell scripts (bash, zsh, fish), and the hidden subcommand they call
for live names, read from this agent's state directory.

What the agent knows is what it may know: its own name, groups and certificate serial
(agent.json, agent.crt), and the keys and versions it has fetched to files (key-files.json).
The server has no call that lists an agent's granted keys (FetchKey names one key at a time), so
completion asks it nothing: Tab never waits on the network, and works with the server down. A
state directory that is missing or unreadable completes nothing, silently.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from agent.state import KeyFile, StateDir, default_state_dir
from kms import completion
from kms.cli import ArgumentParser, Subcommands

__all__ = ["add_completion", "live", "quiet", "rule"]

_EXAMPLE = """example:
  kms-agent completion bash > ~/.local/share/bash-completion/completions/kms-agent
  kms-agent completion zsh > "${fpath[1]}/_kms-agent"
  kms-agent completion fish > ~/.config/fish/completions/kms-agent.fish"""

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
    p = sub.add_parser(
        "completion",
        parents=[common],
        help="print a shell completion script (bash, zsh or fish), live names included",
        description="Print a completion script for kms-agent; Tab then completes subcommands, flags,"
        " and the names this agent knows: the keys and versions it fetched, its groups, its serial.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", choices=completion.SHELLS, help="the shell the script is for")
    p.set_defaults(func=_cmd_completion)
    # Hidden (no help=): not in --help, nor in the scripts' own list of subcommands.
    hidden = sub.add_parser(completion.HIDDEN, parents=[common])
    hidden.add_argument("kind", help=argparse.SUPPRESS)
    hidden.add_argument("words", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    hidden.set_defaults(func=_cmd_live)


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


def _cmd_completion(args: argparse.Namespace) -> int:
    from agent.cli import build_parser  # the whole parser: this module is one of its parts

    print(completion.script(build_parser(), args.shell, rule), end="")
    return 0


def _cmd_live(args: argparse.Namespace) -> int:
    """Prints the live values of args.kind, one a line; nothing at all when they cannot be had."""
    words = [w for w in args.words if w != "--"]
    with contextlib.suppress(Exception):
        print("\n".join(live(args, args.kind, words)))
    return 0


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
