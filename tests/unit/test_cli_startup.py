"""Every kms-server and kms-agent command starts by importing its program's parser: the libraries
only the shell (prompt_toolkit) and the completion scripts (shtab) use must not come with it."""

from __future__ import annotations

import subprocess
import sys


def test_the_parsers_load_neither_prompt_toolkit_nor_shtab() -> None:
    probe = (
        "import sys, agent.cli, server.cli\n"
        "agent.cli.build_parser(); server.cli.build_parser()\n"
        "print(sorted(m for m in ('prompt_toolkit', 'shtab') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
