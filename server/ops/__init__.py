"""Operating the server: the HTTP side port, metrics, expiry gauges and heap tuning."""

__all__: list[str] = []
