"""Shell completion scripts generated from the real argparse parsers, with live names wired in.

shtab writes the scripts (bash, zsh, fish) from the parser itself, so a new flag or subcommand
is completed without anyone editing a script. Arguments that name something that exists (a key,
an agent, a group, a serial, a key version, a grantee) get a ``complete`` spec that asks the
program itself, ``PROG __complete KIND -- WORDS...`` (the hidden subcommand each program adds):
it prints the names, one a line, from a short-lived cache or a fetch with a short time limit,
and prints nothing when they cannot be had. The words typed so far go along, so a --data-dir,
a --dir or a key name on the command line is used (the versions of *that* key).

Pure: the programs fetch, read and write the cache; this module only turns values into text.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kms.errors import InvalidArgument
from kms.identity import validate_agent_name, validate_group, validate_key_name

__all__ = [
    "HIDDEN",
    "add_commands",
    "KINDS",
    "SHELLS",
    "TTL",
    "Names",
    "cache_text",
    "hide",
    "from_cache",
    "script",
    "values",
    "walk",
]

SHELLS = ("bash", "zsh", "fish")
HIDDEN = "__complete"
# Seconds a fetched set of names is reused: one Tab after another costs one fetch.
TTL = 5.0
KINDS = ("keys", "agents", "groups", "serials", "versions", "grants")
_SHAPES = {"serials": r"[0-9a-f]{1,64}", "versions": r"[1-9][0-9]{0,9}"}

# kind -> values; "versions:NAME" -> the versions of key NAME.
Names = dict[str, list[str]]
# (command path, action) -> the kind of live value it takes, or None.
Rule = Callable[[tuple[str, ...], argparse.Action], "str | None"]


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    """Every action of parser and its subcommands, with the subcommand path that leads to it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))
        else:
            yield path, action


class _Hiding(dict[str, Any]):
    """A subcommand table that still parses a hidden name but does not list it (argparse's
    "invalid choice" message iterates the table)."""

    def __iter__(self) -> Iterator[str]:
        return (name for name in super().__iter__() if name != HIDDEN)


def hide(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Keeps the hidden subcommand out of the lists argparse prints."""
    table = _Hiding(sub._name_parser_map)
    sub._name_parser_map = table
    sub.choices = table


def _function(prog: str, kind: str) -> str:
    return "_" + re.sub(r"\W", "_", prog) + "_live_" + kind


def _spec(prog: str, kind: str) -> dict[str, Any]:
    call = f"{prog} {HIDDEN} {kind} --"
    function = _function(prog, kind)
    return {
        # bash: shtab calls the function with the word being completed; COMP_WORDS is the line.
        "bash": function,
        # zsh: an action that is a function runs at each Tab (a $(...) in shtab's spec arrays
        # would run once, when the script is loaded); $words holds only the innermost
        # subcommand's words, so the whole line left of the cursor is sent instead.
        "zsh": function,
        "fish": f"({call} (commandline -opc) 2>/dev/null)",
        "preamble": {
            # Each name is printed as it came, matched by prefix as a literal: never through
            # compgen -W, which would expand a $(...) inside a name (names come from a server).
            "bash": f'{function}() {{\n  local v\n  while IFS= read -r v; do [[ $v == "$1"* ]] && printf "%s\\n" "$v"; done'
            f' < <({call} "${{COMP_WORDS[@]}}" 2>/dev/null)\n}}',
            "zsh": f'{function}() {{\n  local -a live\n  live=(${{(f)"$({call} ${{(z)LBUFFER}} 2>/dev/null)"}})\n'
            "  compadd -a live\n}",
        },
    }


def script(parser: argparse.ArgumentParser, shell: str, rule: Rule) -> str:
    """The completion script of parser for shell, live values where rule names a kind."""
    prog = parser.prog
    for path, action in walk(parser):
        kind = rule(path, action)
        if kind is not None:
            action.complete = _spec(prog, kind)  # type: ignore[attr-defined]
    import shtab  # only for `completion`: not loaded by every command, nor by __complete

    return str(shtab.complete(parser, shell=shell))


def _well_formed(kind: str, value: str) -> bool:
    """Whether value has the shape of its kind: names come from a server, a socket or a state
    dir typed on the line, and a shell must never be handed anything else."""
    if kind in ("keys", "agents", "groups"):
        check = {"keys": validate_key_name, "agents": validate_agent_name, "groups": validate_group}[kind]
    elif kind == "grants":
        scope, _, rest = value.partition(":")
        return scope in ("agent", "group") and _well_formed(scope + "s", rest)
    else:
        return re.fullmatch(_SHAPES[kind], value) is not None
    try:
        check(value)
    except InvalidArgument:
        return False
    return True


def values(names: Mapping[str, Sequence[str]], kind: str, words: Sequence[str]) -> list[str]:
    """What to offer for kind, well-formed only: versions are those of the first key named in
    words (else all)."""
    return [v for v in _values(names, kind, words) if _well_formed(kind, v)]


def _values(names: Mapping[str, Sequence[str]], kind: str, words: Sequence[str]) -> list[str]:
    if kind != "versions":
        return list(names.get(kind, ()))
    for word in words:
        if f"versions:{word}" in names:
            return list(names[f"versions:{word}"])
    every = {v for k, vs in names.items() if k.startswith("versions:") for v in vs}
    return sorted(every, key=lambda v: (len(v), v))


def cache_text(names: Names, now: float) -> str:
    return json.dumps({"at": now, "names": names})


def from_cache(text: str, now: float, ttl: float = TTL) -> Names | None:
    """The names in a cache file's text, or None when it is stale, from the future or malformed."""
    try:
        doc = json.loads(text)
        at, names = float(doc["at"]), doc["names"]
    except (ValueError, TypeError, KeyError):
        return None
    if not (0 <= now - at <= ttl) or not isinstance(names, dict):
        return None
    return {str(k): [str(v) for v in vs] for k, vs in names.items() if isinstance(vs, list)}


# (args, kind, words typed so far) -> the live names; raises when they cannot be had.
LiveNames = Callable[[argparse.Namespace, str, list[str]], list[str]]


def add_commands(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
    *,
    knows: str,
    build: Callable[[], argparse.ArgumentParser],
    rule: Rule,
    live: LiveNames,
) -> None:
    """Adds `completion SHELL` and the hidden subcommand its scripts call to a program's parser.

    knows: what the live names are, for the description; build: the program's whole parser
    (called only when a script is printed: this runs while that parser is being built).
    """
    prog = sub._prog_prefix.split()[0]
    p = sub.add_parser(
        "completion",
        parents=[common],
        help="print a shell completion script (bash, zsh or fish), live names included",
        description=f"Print a completion script for {prog}; Tab then completes subcommands, flags, and {knows}.",
        epilog=(
            f"example:\n  {prog} completion bash > ~/.local/share/bash-completion/completions/{prog}\n"
            f'  {prog} completion zsh > "${{fpath[1]}}/_{prog}"\n'
            f"  {prog} completion fish > ~/.config/fish/completions/{prog}.fish"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", choices=SHELLS, help="the shell the script is for")
    p.set_defaults(func=lambda args: _print(script(build(), args.shell, rule)))
    # Hidden (no help=): not in --help, nor in the scripts' own list of subcommands.
    hidden = sub.add_parser(HIDDEN, parents=[common])
    hidden.add_argument("kind", help=argparse.SUPPRESS)
    hidden.add_argument("words", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    hidden.set_defaults(func=lambda args: _print_live(live, args))
    hide(sub)


def _print(text: str) -> int:
    print(text, end="")
    return 0


def _print_live(live: LiveNames, args: argparse.Namespace) -> int:
    """Prints the live values of args.kind, one a line; nothing at all when they cannot be had."""
    words = [w for w in args.words if w != "--"]
    with contextlib.suppress(Exception):
        print("\n".join(live(args, args.kind, words)))
    return 0
