"""The gRPC servicers, one per proto service: thin, over the domain services."""

__all__: list[str] = []
