"""kms-agent: enrolls with kms-server and speaks mutual TLS to it."""

__all__: list[str] = []
