"""The audit trail: reading and checking it, batching records, and copying them to devices."""

__all__: list[str] = []
