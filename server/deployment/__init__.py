"""A deployment on disk: the data directory, sealing at rest, first start, backup and restore."""

__all__: list[str] = []
