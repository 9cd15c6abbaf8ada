"""Join tokens, enrollment and renewal, and the directory of enrolled agents."""

__all__: list[str] = []
