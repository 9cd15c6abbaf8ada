"""Prometheus metrics for the HTTP side port: RPCs, enrollments, releases, revocations, watchers, expiry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]


class Metrics:
    """One registry per server (no module-level globals), so tests can build several."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpcs = Counter(
            "kms_rpc_total", "RPCs handled, by method and status code", ["method", "code"], registry=r
        )
        self.rpc_seconds = Histogram(
            "kms_rpc_seconds", "RPC latency (unary; streams: time to first message)", ["method"], registry=r
        )
        self.enrollments = Counter(
            "kms_enrollments_total", "Certificates issued to agents (enrollments and renewals)", registry=r
        )
        self.key_releases = Counter("kms_key_releases_total", "Key versions released to agents", registry=r)
        self.revocations = Counter(
            "kms_revocations_total", "Revocation events appended", ["kind"], registry=r
        )
        self.watchers = Gauge("kms_watch_streams", "Open Watch streams", registry=r)
        self.watch_lag = Histogram(
            "kms_watch_delivery_lag_seconds",
            "From a revocation being durable to its delivery on a stream",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.expiring = Gauge(
            "kms_certificates_expiring", "Valid agent certificates expiring within the window", ["within"], registry=r
        )  # fmt: skip
        self.keys_expiring = Gauge(
            "kms_keys_expiring", "Keys (not expired yet) whose expiry falls within the window", ["within"], registry=r
        )  # fmt: skip

        # Every RPC observed, all methods and codes together (what `kms-server top` draws as RPCs/s).
        self.rpc_total = 0
        # Labelled children looked up once: labels() takes a lock and hashes on every call.
        self._rpc_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        children = self._rpc_children.get((method, code))
        if children is None:  # methods are the registered ones, codes a fixed set: bounded
            children = (self.rpcs.labels(method, code), self.rpc_seconds.labels(method))
            self._rpc_children[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)
        self.rpc_total += 1

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
