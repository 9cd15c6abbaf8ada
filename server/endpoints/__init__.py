"""The ports: the enrollment gate, authentication, the per-method policy, limits and the error boundary."""

__all__: list[str] = []
