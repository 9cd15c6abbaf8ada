"""Story: the completion scripts, run by bash itself against a running server: `complete -p`, then
the generated function driven through COMP_WORDS, offering live key, agent, group and serial names
and a key's versions (an agent's from its server: its granted keys only); zsh in its line editor and
fish's `complete -C` where installed; and silence when there is nothing to ask."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pexpect
import pytest

from tests.e2e.rig import Rig
from tests.harness import ServerProcess, agent, exe, run

pytestmark = pytest.mark.sqlite_only("the scripts and the admin socket work the same over either store")

RIG = Rig(
    "kmscmp",
    agents=(("web-1", ("web",)), ("db-1", ("db",))),
    keys=(("payroll-db", "group:web"), ("ledger", "agent:web-1"), ("orders", "group:db")),
)

# Sources the script, shows what `complete -p` registered, then completes the words given as
# arguments (the last one is the word under the cursor) as bash would on Tab.
_DRIVER = """
source "$1"; shift
complete -p "$1"
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
fn=$(complete -p "$1" | sed -E 's/.* -F ([^ ]+) .*/\\1/')
"$fn" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\\n' "${COMPREPLY[@]}"
"""


def _tab(root: Path, *words: str) -> tuple[str, list[str]]:
    """(what complete -p printed, the completions offered) for the command line words."""
    prog = words[0]
    script = root / f"{prog}.bash"
    if not script.exists():
        made = run([exe(prog), "completion", "bash"])
        assert made.returncode == 0, made.stderr
        script.write_text(made.stdout)
    env = {"PATH": f"{Path(exe(prog)).parent}:/usr/bin:/bin", "XDG_CACHE_HOME": str(root / "cache")}
    result = run(["bash", "-c", _DRIVER, "driver", str(script), *words], env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    registered, *offered = result.stdout.splitlines()
    return registered, [w for w in offered if w]


def test_bash_completes_live_names_from_the_server(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    d = ("--data-dir", str(server.data_dir))
    registered, offered = _tab(root, "kms-server", "ke")
    assert "-F _shtab_kms_server kms-server" in registered and offered == ["key"]
    assert _tab(root, "kms-server", *d, "key", "show", "pay")[1] == ["payroll-db"]
    assert _tab(root, "kms-server", *d, "revoke", "agent", "")[1] == ["db-1", "web-1"]
    assert _tab(root, "kms-server", *d, "key", "grant", "payroll-db", "group:")[1] == [
        "group:db",
        "group:web",
    ]
    assert _tab(root, "kms-server", *d, "token", "create", "--group", "w")[1] == ["web"]
    serials = sorted(a["serial"] for a in json.loads(server.admin("agents", "list", "--json").stdout))
    assert _tab(root, "kms-server", *d, "revoke", "cert", "")[1] == serials
    # One fetch served those Tabs: the names sit a few seconds in a private cache file.
    (cache,) = (root / "cache" / "seed-kms").iterdir()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600 and "payroll-db" in cache.read_text()
    server.admin("key", "rotate", "payroll-db")
    cache.unlink()
    assert _tab(root, "kms-server", *d, "key", "destroy", "payroll-db", "--version", "")[1] == ["1", "2"]


def test_nothing_to_ask_completes_nothing_silently(rig: tuple[ServerProcess, Path]) -> None:
    _, root = rig
    for prog, flag in (("kms-server", "--data-dir"), ("kms-agent", "--dir")):
        live = run([exe(prog), "__complete", "keys", "--", prog, flag, str(root / "nowhere")])
        assert (live.returncode, live.stdout, live.stderr) == (0, "", "")
    # A config file that cannot be read: still not a word in the middle of the command line.
    for prog, variable in (("kms-server", "KMS_CONFIG"), ("kms-agent", "KMS_AGENT_CONFIG")):
        live = run([exe(prog), "__complete", "keys", "--", prog], env={variable: str(root / "nowhere.toml")})
        assert (live.returncode, live.stdout, live.stderr) == (0, "", "")
    assert _tab(root, "kms-server", "--data-dir", str(root / "nowhere"), "key", "show", "")[1] == []
    assert "__complete" not in run([exe("kms-server"), "--help"]).stdout


def test_bash_completes_what_the_agent_knows(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    web = root / "web-1"
    d = ("--dir", str(web))
    # Its granted keys, from its server: directly and through its group; never another's.
    assert _tab(root, "kms-agent", *d, "fetch-key", "")[1] == ["ledger", "payroll-db"]
    rotated = json.loads(server.admin("key", "rotate", "payroll-db", "--json").stdout)
    for cache in (root / "cache" / "seed-kms").glob("complete-agent-*"):
        cache.unlink()
    versions = [str(v["version"]) for v in rotated["versions"]]
    assert _tab(root, "kms-agent", *d, "public-key", "payroll-db", "--version", "")[1] == versions
    assert _tab(root, "kms-agent", "--dir", str(root / "db-1"), "encrypt", "--key", "")[1] == ["orders"]
    assert _tab(root, "kms-agent", *d, "exchange", "--group", "")[1] == ["web"]
    serial = json.loads(agent(web, "status", "--json").stdout)["serial"]
    assert _tab(root, "kms-agent", *d, "check", "--serial", "")[1] == [serial]
    # With its server gone, what it fetched to files still completes.
    assert agent(web, "fetch-key", "payroll-db", "--out", str(root / "payroll.key")).returncode == 0
    broken = root / "broken"
    shutil.copytree(web, broken)
    settings = json.loads((broken / "agent.json").read_text())
    settings["servers"] = ["127.0.0.1:9"]
    (broken / "agent.json").write_text(json.dumps(settings))
    assert _tab(root, "kms-agent", "--dir", str(broken), "sign", "--key", "")[1] == ["payroll-db"]


def test_zsh_and_fish_complete_live_names_too(rig: tuple[ServerProcess, Path]) -> None:
    server, root = rig
    line = f"kms-server --data-dir {server.data_dir} key show pay"
    env = {
        "PATH": f"{Path(exe('kms-server')).parent}:/usr/bin:/bin",
        "XDG_CACHE_HOME": str(root / "cache-zf"),
    }
    if shutil.which("fish"):
        script = root / "kms-server.fish"
        script.write_text(run([exe("kms-server"), "completion", "fish"]).stdout)
        offered = run(["fish", "--no-config", "-c", f"source {script}; complete -C '{line}'"], env=env)
        assert offered.stdout.split("\t")[0] == "payroll-db", offered.stderr
    if shutil.which("zsh"):  # zsh completes only in its line editor: drive it in a pty
        functions = root / "zfunc"
        functions.mkdir()
        (functions / "_kms-server").write_text(run([exe("kms-server"), "completion", "zsh"]).stdout)
        zsh = pexpect.spawn("zsh", ["-f", "-i"], env={**env, "TERM": "dumb"}, encoding="utf-8", timeout=20)
        try:
            zsh.sendline(
                f"PS1='> '; fpath=({functions} $fpath); autoload -Uz compinit; compinit -u -D; echo READY"
            )
            zsh.expect("READY\r\n")
            zsh.send(line + "\t")
            zsh.expect("payroll-db")
        finally:
            zsh.close(force=True)
