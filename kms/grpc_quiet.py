"""Keeps gRPC's C core off stderr in the command-line tools, so a failed call is one line.

gRPC (1.6x and later) reads GRPC_VERBOSITY once, as ``grpc`` is first imported: setting it
in kms/cli.py's run_main came after the commands' modules had imported grpc, and a failed
TLS handshake printed the core's own "Handshake failed" line above ours. The packages'
__init__ call quiet() before any of their modules imports grpc. This module imports no grpc.
"""

from __future__ import annotations

import os
import sys

__all__ = ["quiet"]


def quiet(*, keep_for: tuple[str, ...] = ()) -> None:
    """GRPC_VERBOSITY=NONE unless the environment sets it, --verbose is on the command line, or
    the command (the first argument) is one of keep_for (the daemon keeps gRPC's error log)."""
    argv = sys.argv[1:]
    if "--verbose" in argv or (argv[:1] and argv[0] in keep_for):
        return
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
