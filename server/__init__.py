"""The kms-server daemon: CA, store, gRPC services and admin socket."""

from kms.grpc_quiet import quiet

quiet(keep_for=("run",))  # before any module of the server imports grpc; the daemon keeps gRPC's log

__all__: list[str] = []
