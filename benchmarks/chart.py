"""The PNG chart of a run (matplotlib, Agg backend): TPS, p50, p99 per scenario and target, and
bytes per idle client. Runs with failures are hatched; skipped scenarios are listed in the title.
Scenarios with the minimal relay (a, d) get a fourth bar.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

COLORS = {"direct": "#7f7f7f", "pgbouncer": "#1f77b4", "tenantgate": "#d62728",
          "relay": "#ff7f0e"}
TARGETS = ("direct", "pgbouncer", "tenantgate", "relay")


def write_chart(path: Path, entries: list[dict], subtitle: str) -> str | None:
    """Draw the chart into `path`; return None, or why it was not drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (benchmarks/setup.sh installs it): no PNG written"
    bench = [e for e in entries if e["kind"] == "pgbench"]
    idle = [e for e in entries if e["kind"] == "idle"]
    skipped = [e["key"] for e in entries if e["kind"] == "skipped"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    _bars(axes[0][0], bench, "tps", "TPS (higher is better)")
    _bars(axes[0][1], bench, "p50_ms", "p50 latency, ms, log scale (lower is better)", log=True)
    _bars(axes[1][0], bench, "p99_ms", "p99 latency, ms, log scale (lower is better)", log=True)
    _idle_bars(axes[1][1], idle)
    title = "tenantgate vs PgBouncer vs direct PostgreSQL (pgbench, medians)"
    if any("relay" in e["targets"] for e in bench):
        title = title.replace(" (", " vs a minimal Python relay (", 1)
    if skipped:
        title += f" — skipped: {', '.join(skipped)}"
    fig.suptitle("\n".join([title, *textwrap.wrap(subtitle, 150)]), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def _bars(ax, entries: list[dict], field: str, title: str, log: bool = False) -> None:
    """One group of bars per scenario, one bar per target it ran (3, or 4 with the relay),
    centred on the scenario's tick."""
    width = 0.8 / max([len([t for t in TARGETS if t in e["targets"]]) for e in entries] or [3])
    for target in TARGETS:
        xs, heights, hatches = [], [], []
        for j, entry in enumerate(entries):
            summary = entry["targets"].get(target)
            if summary is None or summary[field] is None:
                continue
            present = [t for t in TARGETS if t in entry["targets"]]
            xs.append(j + (present.index(target) - (len(present) - 1) / 2) * width)
            heights.append(summary[field])
            hatches.append("//" if summary["failed_runs"] else "")
        if not xs:
            continue  # a target no scenario here ran (the relay outside a and d)
        bars = ax.bar(xs, heights, width, label=target, color=COLORS[target])
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
    ax.set_xticks(range(len(entries)), [e["key"] for e in entries])
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, title="hatched = failures", title_fontsize=7)


def _idle_bars(ax, entries: list[dict]) -> None:
    ax.set_title("bytes per authenticated idle client (lower is better)", fontsize=10)
    if not entries:
        ax.text(0.5, 0.5, "idle scenario not run", ha="center", va="center")
        return
    targets = entries[0]["targets"]
    names = [t for t in TARGETS if t in targets and targets[t]["bytes_per_client"] is not None]
    values = [targets[t]["bytes_per_client"] for t in names]
    bars = ax.bar(names, values, color=[COLORS[t] for t in names])
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:,.0f} B", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
