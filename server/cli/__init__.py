"""kms-server: run the daemon, and talk to it over the admin socket."""

from server.cli.admin import main

__all__ = ["main"]
