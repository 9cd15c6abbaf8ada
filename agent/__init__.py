"""kms-agent: enrolls with kms-server and speaks mutual TLS to it."""

from kms.grpc_quiet import quiet

quiet()  # before any module of the agent imports grpc

__all__: list[str] = []
