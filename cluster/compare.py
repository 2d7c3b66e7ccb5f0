"""Comparing duplicate-finding strategies on the same guests.

``compare`` runs one scenario once per strategy, every host of the run
set to that strategy, with the same seed: the guests boot, read, write
and free exactly the same pages in every run, and only what the CoW
daemon finds and what it costs differ. For each strategy it reports the
memory saved at the end against the potential (what a perfect
deduplicator would save), the share of the potential caught over the
whole run (saved page-seconds over potential page-seconds: sharing that
lives only briefly counts only if it is caught while it lasts), when
the saving first reached 50% and 90% of the potential, and the cost:
pages hashed, bytes compared, hypercalls and the cost model's estimate
of the daemon's CPU seconds.

The plot shows the saving of every strategy over time against the
potential, and the estimated CPU time of each.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from cluster.coordinator import Coordinator, RunResult
from cluster.scenario import Scenario
from cluster.strategies import NAMED
from dedup.errors import CowsimError
from dedup.strategy import Strategy
from node.image import Image

MIB = 2**20


def parse_strategies(text: str | None) -> dict[str, Strategy]:
    """Named strategies from a comma-separated list (all when None)."""
    if text is None:
        return dict(NAMED)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMED]
    if unknown or not names:
        listed = ", ".join(NAMED)
        raise CowsimError(
            f"--strategies {text!r}: unknown {', '.join(unknown) or 'list'}"
            f" (choose from {listed})"
        )
    return {n: NAMED[n] for n in names}


def with_strategy(scenario: Scenario, strategy: Strategy) -> Scenario:
    """The scenario with every host using ``strategy``."""
    hosts = tuple(
        dataclasses.replace(h, strategy=strategy) for h in scenario.hosts
    )
    return dataclasses.replace(scenario, hosts=hosts)


def run_strategies(
    scenario: Scenario,
    strategies: dict[str, Strategy],
    images: dict[str, Image],
    progress: Callable[[str, RunResult], None] | None = None,
) -> dict[str, list[dict]]:
    """Cluster rows per tick of one run per strategy."""
    out = {}
    for name, strategy in strategies.items():
        coordinator = Coordinator(
            with_strategy(scenario, strategy), images=images
        )
        try:
            result = coordinator.run()
        finally:
            coordinator.shutdown()
        out[name] = [r for r in result.series if r["host"] == "cluster"]
        if progress:
            progress(name, result)
    return out


def _first_time(rows: list[dict], fraction: float) -> float | None:
    for r in rows:
        p = r["potential_bytes"]
        if p and r["saved_bytes"] >= fraction * p:
            return r["sim_time_seconds"]
    return None


def reach(rows: list[dict]) -> dict:
    """How fast and how much of the potential a run's saving caught:
    the saved share of the potential integrated over the ticks, and the
    first simulated times at which the saving reached 50% and 90% of the
    potential (None if it never did)."""
    last = rows[-1]
    potential = last["potential_byte_seconds"]
    return {
        "caught_over_time": round(last["saved_byte_seconds"] / potential, 6)
        if potential
        else 1.0,
        "seconds_to_50": _first_time(rows, 0.5),
        "seconds_to_90": _first_time(rows, 0.9),
    }


def summarize(rows: list[dict]) -> dict:
    """What one strategy achieved, and what it cost."""
    last = rows[-1]
    return {
        "saved_bytes": last["saved_bytes"],
        "potential_bytes": last["potential_bytes"],
        "found_fraction": round(
            last["saved_bytes"] / last["potential_bytes"], 6
        )
        if last["potential_bytes"]
        else 1.0,
        **reach(rows),
        "pages_hashed": last["pages_hashed"],
        "bytes_compared": last["bytes_compared"] + last["scan_bytes_compared"],
        "hypercalls": last["hypercalls"] + last["scan_hypercalls"],
        "hints": last["hints"],
        "daemon_cpu_seconds": round(last["daemon_cpu_seconds"], 6),
    }


def format_table(summaries: dict[str, dict]) -> str:
    """One line per strategy."""
    head = (
        f"{'strategy':<12} {'saved MiB':>9} {'found':>6} {'caught':>7} "
        f"{'t50 s':>6} {'t90 s':>6} {'hashed':>10} {'cmp MiB':>8} "
        f"{'hcalls':>7} {'cpu s':>8}"
    )
    lines = [head, "-" * len(head)]
    for name, s in summaries.items():
        t50, t90 = (
            "never" if t is None else f"{t:g}"
            for t in (s["seconds_to_50"], s["seconds_to_90"])
        )
        lines.append(
            f"{name:<12} {s['saved_bytes'] / MIB:>9,.0f} "
            f"{100 * s['found_fraction']:>5.1f}% "
            f"{100 * s['caught_over_time']:>6.1f}% {t50:>6} {t90:>6} "
            f"{s['pages_hashed']:>10,} {s['bytes_compared'] / MIB:>8,.0f} "
            f"{s['hypercalls']:>7,} {s['daemon_cpu_seconds']:>8.3f}"
        )
    return "\n".join(lines)


def plot(
    series: dict[str, list[dict]],
    summaries: dict[str, dict],
    path: Path,
    title: str,
) -> None:
    """Saved memory against the potential over time, and the CPU cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bars) = plt.subplots(
        1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [2.2, 1]}
    )
    first = next(iter(series.values()))
    t = [r["sim_time_seconds"] for r in first]
    ax.plot(
        t,
        [r["potential_bytes"] / MIB for r in first],
        "k--",
        label="potential",
    )
    # Markers and widths differ so that strategies with equal curves
    # (hints and hints+ksm, often) stay apart.
    for i, (name, rows) in enumerate(series.items()):
        ax.plot(
            t,
            [r["saved_bytes"] / MIB for r in rows],
            label=name,
            marker="osv^Dx"[i % 6],
            markevery=(i % 4, max(1, len(t) // 10)),
            markerfacecolor="none",
            lw=2.5 - 0.4 * (i % 4),
        )
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("memory saved (MiB)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    names = list(summaries)
    cpu = [summaries[n]["daemon_cpu_seconds"] for n in names]
    bars.barh(names, cpu)
    for y, value in enumerate(cpu):
        bars.text(value, y, f" {value:.2f}", va="center", fontsize=8)
    bars.set_xlim(0, 1.25 * max(cpu, default=1) or 1)
    bars.set_xlabel("estimated daemon CPU (s)")
    bars.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_compare(
    directory: Path,
    scenario: Scenario,
    series: dict[str, list[dict]],
    summaries: dict[str, dict],
    table: str,
) -> None:
    """compare.json, compare.txt and compare.png, written atomically."""
    directory = Path(directory)
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=parent))
    try:
        doc = {
            "scenario": scenario.name,
            "seed": scenario.seed,
            "ticks": scenario.ticks,
            "strategies": summaries,
        }
        (tmp / "compare.json").write_text(json.dumps(doc, indent=2) + "\n")
        (tmp / "compare.txt").write_text(table + "\n")
        plot(series, summaries, tmp / "compare.png", scenario.name)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
