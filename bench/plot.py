"""PNG charts of one run (``--plot DIR``); matplotlib is optional and imported only here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.results import Result

__all__ = ["write_charts"]


def write_charts(results: Sequence[Result], directory: Path) -> list[Path]:
    """Writes fan-out-latency.png (fan-out and fan-out-replicas), throughput.png and
    latency-cdf.png (those that have data)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    fanout = [r for r in results if r.scenario.startswith("fan-out") and r.samples]
    if fanout:
        fig, axes = plt.subplots(1, len(fanout), figsize=(5 * len(fanout), 4), squeeze=False)
        for ax, r in zip(axes[0], fanout, strict=True):
            names = list(r.samples)
            data = [[v * 1000 for v in r.samples[n]] for n in names]
            ax.boxplot(data, showfliers=False)
            ax.set_xticks(range(1, len(names) + 1), names)
            for i, values in enumerate(data, start=1):
                ax.scatter([i] * len(values), values, s=10, alpha=0.6)
            ax.set_title(f"{r.name}: revoke -> last watcher")
            ax.set_ylabel("ms per round")
        fig.tight_layout()
        written.append(_save(fig, directory / "fan-out-latency.png"))

    rates = [r for r in results if r.higher_is_better]
    if rates:
        fig, ax = plt.subplots(figsize=(max(6.0, 2.4 * len(rates)), 4.5))
        xs = range(len(rates))
        ax.bar([x - 0.2 for x in xs], [r.figure for r in rates], 0.4, label="Seed KMS")
        ax.bar([x + 0.2 for x in xs], [r.baseline for r in rates], 0.4, label="baseline")
        ax.set_xticks(list(xs), [f"{r.name}\n({r.unit}, vs {r.baseline_name})" for r in rates], fontsize=7)
        for x, r in zip(xs, rates, strict=True):
            ax.annotate(
                f"{r.ratio:.2f}", (x, max(r.figure, r.baseline)), ha="center", va="bottom", fontsize=8
            )
        ax.set_title("throughput per scenario (ratio above each pair)")
        ax.legend()
        fig.tight_layout()
        written.append(_save(fig, directory / "throughput.png"))

    per_call = [r for r in rates if r.samples]
    if per_call:
        fig, axes = plt.subplots(1, len(per_call), figsize=(4.5 * len(per_call), 4), squeeze=False)
        for ax, r in zip(axes[0], per_call, strict=True):
            for name, values in r.samples.items():
                ordered = sorted(v * 1000 for v in values)
                if ordered:
                    ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=name)
            ax.set_xscale("log")
            ax.set_title(r.name, fontsize=9)
            ax.set_xlabel("latency (ms)")
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("fraction of operations")
        fig.tight_layout()
        written.append(_save(fig, directory / "latency-cdf.png"))
    return written


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path
