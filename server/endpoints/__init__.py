"""The ports: the enrollment gate, the method table, and the middleware chain (authentication, limits, the error boundary)."""

__all__: list[str] = []
