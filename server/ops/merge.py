"""The whole server's /metrics out of every worker's own: which series add up, which are said once.

Each worker keeps its own registry (server/ops/metrics.py: no shared memory on
the hot path, unlike prometheus-client's multiprocess mode, whose every
increment writes a mapped file under a lock). For a scrape, the primary asks
the others for their samples (``families_of``, JSON-able) and ``merged`` adds
them up with its own:

- counters and histograms: summed over workers (kms_rpc_*, kms_enrollments,
  kms_key_releases, python_gc_*, process_cpu_seconds);
- gauges as they mean: open Watch streams summed; process_* summed too (the
  server's resident memory, open descriptors and CPU); process_start_time_seconds
  and every ``*_created`` the earliest;
- what every worker sees whole, said once, the primary's: the expiry gauges (from
  the store), kms_revocations (every worker publishes every event), python_info
  and process_max_fds (a limit per process, not a sum).

A worker that restarts starts its counters from zero again, and one may answer
too late for a scrape: summed as they come, the totals would dip, which
Prometheus's rate() reads as a counter reset. So the primary sums each worker's
last answer when one is missing, and ``folded`` keeps a departed worker's last
counters and histograms (``CUMULATIVE``) in a retained base, as prometheus-client's
multiprocess mode does for a dead pid: the sums never go down
(server/workers/figures.py).

A worker's samples cross the hub packed (``packed``: JSON, zlib, base64): every
method with every status code is about 250 kB of JSON but 26 kB packed, so the
hub's one frame of answers (server/workers/protocol.py MAX_FRAME, 16 MiB) holds
hundreds of workers even then.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

__all__ = ["CUMULATIVE", "PRIMARY_ONLY", "Families", "families_of", "folded", "merged", "packed", "unpacked"]

# Families taken from the primary alone.
PRIMARY_ONLY = frozenset(
    {"kms_certificates_expiring", "kms_keys_expiring", "kms_revocations", "python_info", "process_max_fds"}
)
_EARLIEST = frozenset({"process_start_time_seconds"})
# Family types whose samples only grow while a process lives: kept in the base once it is gone.
CUMULATIVE = frozenset({"counter", "histogram", "summary"})

# [name, type, help, unit, [[sample name, labels, value], ...]] per family.
Families = list[list[Any]]


def families_of(registry: CollectorRegistry) -> Families:
    """A registry's samples, JSON-able (no timestamps or exemplars: /metrics shows none)."""
    return [
        [m.name, m.type, m.documentation, m.unit, [[s.name, dict(s.labels), s.value] for s in m.samples]]
        for m in registry.collect()
    ]


def packed(families: Families) -> str:
    """families as one short string, for the hub."""
    raw = json.dumps(families, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(raw, 1)).decode("ascii")


def unpacked(text: str) -> Families:
    """What packed made.

    Raises:
        ValueError: not what packed makes.
    """
    try:
        families = json.loads(zlib.decompress(base64.b64decode(text, validate=True)))
    except (zlib.error, UnicodeDecodeError) as exc:
        raise ValueError(f"not packed samples: {exc}") from None
    if not isinstance(families, list):
        raise ValueError("not packed samples")
    return cast(Families, families)


def merged(own: Families, others: Sequence[Families]) -> list[Metric]:
    """own (the primary's) and the others' families as one server's, in own's order."""
    order, heads, values = _gathered([own, *others], skip_after_first=PRIMARY_ONLY)
    result = []
    for name in order:
        kind, help_text, unit = heads[name]
        metric = Metric(name, help_text, kind, unit)
        for (sample, labels), value in values[name].items():
            metric.add_sample(sample, dict(labels), value)
        result.append(metric)
    return result


def folded(base: Families, departed: Families) -> Families:
    """base with a departed worker's last counters and histograms added (its gauges left out)."""
    kept = [f for f in departed if f[1] in CUMULATIVE and f[0] not in PRIMARY_ONLY]
    order, heads, values = _gathered([base, kept], skip_after_first=frozenset())
    return [
        [
            name,
            *heads[name],
            [[sample, dict(labels), value] for (sample, labels), value in values[name].items()],
        ]
        for name in order
    ]


_Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _gathered(
    sources: Sequence[Families], *, skip_after_first: frozenset[str]
) -> tuple[list[str], dict[str, tuple[str, str, str]], dict[str, _Values]]:
    """Every family's samples over sources, combined: (names in order, heads, values by name)."""
    order: list[str] = []
    heads: dict[str, tuple[str, str, str]] = {}
    values: dict[str, _Values] = {}
    for index, families in enumerate(sources):
        for name, kind, help_text, unit, samples in families:
            if name not in heads:
                order.append(name)
                heads[name] = (kind, help_text, unit)
                values[name] = {}
            elif index > 0 and name in skip_after_first:
                continue
            _add(values[name], samples, earliest=name in _EARLIEST)
    return order, heads, values


def _add(
    into: _Values,
    samples: Iterable[Sequence[Any]],
    *,
    earliest: bool,
) -> None:
    for sample, labels, value in samples:
        key = (str(sample), tuple(sorted((str(k), str(v)) for k, v in dict(labels).items())))
        old = into.get(key)
        if old is None:
            into[key] = float(value)
        elif earliest or str(sample).endswith("_created"):
            into[key] = min(old, float(value))
        else:
            into[key] = old + float(value)
