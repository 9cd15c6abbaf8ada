"""Revocation: the service, the in-process feed, Watch streams, and following other replicas."""

__all__: list[str] = []
