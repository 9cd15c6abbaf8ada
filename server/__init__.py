"""The kms-server daemon: CA, store, gRPC services and admin socket."""

__all__: list[str] = []
