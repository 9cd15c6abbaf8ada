"""Prometheus metrics for the HTTP side port: RPCs, enrollments, releases, revocations, watchers, expiry.

Besides our own, the registry carries prometheus_client's standard collectors: process_*
(CPU, memory, open descriptors), python_info and python_gc_*, as any Python exporter has.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from server.ops.coalesce import Coalesced
from server.ops.merge import Families, families_of, merged

__all__ = ["WHOLE_FRESH", "Metrics"]

# Seconds the whole server's merged exposition is reused (server/ops/coalesce.py): a flood of
# scrapes asks the other workers at most once a second.
WHOLE_FRESH = 1.0

# Unary calls' outcomes wait in a list and reach the metrics below in one go: at every read of
# the registry (its first collector applies them) and every PENDING_LIMIT calls. One call at a
# time, two counters and a histogram (a lock each, a walk of the buckets) came to several percent
# of FetchKey's server CPU (bench fetch-key, A/B in one run); batched, the same updates run
# back to back. The values exposed are the same.
PENDING_LIMIT = 512


class Metrics:
    """One registry per server (no module-level globals), so tests can build several."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # (method, code, seconds, the row's counter or None) of unary calls not applied yet.
        self._pending: list[tuple[str, str, float, Counter | None]] = []
        r.register(_ApplyPending(self))  # first: every collection sees what is pending
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.rpcs_started = Counter(
            "kms_rpc_started_total",
            "RPCs started, by method (a stream when it opens; a unary call when it ends)",
            ["method"],
            registry=r,
        )
        self.rpcs = Counter(
            "kms_rpc_total",
            "RPCs finished, by method and the status code sent (streams included)",
            ["method", "code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "kms_rpc_seconds",
            "RPC duration: a unary call's latency, a stream's lifetime",
            ["method"],
            # The default buckets, and longer ones for streams (Watch and Listen stay open for hours).
            buckets=(*Histogram.DEFAULT_BUCKETS[:-1], 30, 300, 3600, float("inf")),
            registry=r,
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
        self._started_children: dict[str, Counter] = {}
        # Of several workers: the others' samples (server/workers/figures.py); None: one process.
        self.others: Callable[[], Awaitable[list[Families]]] | None = None
        self._whole = Coalesced(self._merged, WHOLE_FRESH)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        children = self._rpc_children.get((method, code))
        if children is None:  # methods are the registered ones, codes a fixed set: bounded
            children = (self.rpcs.labels(method, code), self.rpc_seconds.labels(method))
            self._rpc_children[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)
        self.rpc_total += 1

    def unary_done(self, method: str, code: str, seconds: float, counter: Counter | None) -> None:
        """A unary call answered: started and finished (code), its latency, and counter (its row's,
        on OK; None: none), applied with the others pending (PENDING_LIMIT)."""
        self._pending.append((method, code, seconds, counter))
        if len(self._pending) >= PENDING_LIMIT:
            self.apply_pending()

    def apply_pending(self) -> None:
        """Applies the unary calls' outcomes that wait (the event loop's thread, like every update)."""
        pending, self._pending = self._pending, []
        for method, code, seconds, counter in pending:
            self.rpc_started(method)
            self.observe_rpc(method, code, seconds)
            if counter is not None:
                counter.inc()

    def rpc_started(self, method: str) -> None:
        child = self._started_children.get(method)
        if child is None:
            child = self._started_children[method] = self.rpcs_started.labels(method)
        child.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def whole(self) -> bytes:
        """The exposition of the whole server: this process's, or every worker's merged
        (server/ops/merge.py), one merge in flight and its result reused for WHOLE_FRESH seconds."""
        if self.others is None:
            return self.exposition()
        return await self._whole.get()

    async def _merged(self) -> bytes:
        assert self.others is not None
        others = await self.others()
        return generate_latest(_Collected(merged(families_of(self.registry), others)))


class _ApplyPending:
    """Collects nothing: applies what is pending before the registry's other collectors run."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        self._metrics.apply_pending()
        return []


class _Collected:
    """Metrics already gathered, as generate_latest takes a registry."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics
