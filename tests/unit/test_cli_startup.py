"""Every kms-server and kms-agent command starts by importing its program's parser: the libraries
only the shell (prompt_toolkit), the completion scripts (shtab) and a terminal's tables (rich) use
must not come with it, nor with a listing piped into another program."""

from __future__ import annotations

import subprocess
import sys

LATE = "('prompt_toolkit', 'shtab', 'rich')"


def test_the_parsers_load_neither_prompt_toolkit_nor_shtab_nor_rich() -> None:
    probe = (
        "import sys, agent.cli, server.cli\n"
        "agent.cli.build_parser(); server.cli.build_parser()\n"
        f"print(sorted(m for m in {LATE} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_piped_listing_does_not_load_rich() -> None:
    probe = (
        "import sys\n"
        "from kms.cli import print_table\n"
        "from kms.output import State, When\n"
        "print_table(['NAME', 'AT', 'STATE'], [['a', When(1), State('valid')]])\n"
        f"print(sorted(m for m in {LATE} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == [
        "NAME  AT                    STATE",
        "a     1970-01-01T00:00:01Z  valid",
        "[]",
    ]
