"""kms-agent's subcommands, one module per concern; agent/cli.py only parses the command line."""

__all__: list[str] = []
