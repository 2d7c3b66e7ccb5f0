"""What a finished run leaves behind: summary, time series, table.

A results directory holds ``scenario.toml`` (the resolved scenario, every
default explicit), ``summary.json`` (per host and for the cluster) and
``timeseries.csv`` (one row per host and per tick, plus a ``cluster`` row
per tick), the same series as OpenMetrics for backfilling
(``timeseries.om``, see ``cluster.openmetrics``), and PNG plots with an
HTML report (``cluster.report``). It is written into a temporary sibling
and renamed into place at the end, so a failed run never leaves a
half-written directory.

``summary.json`` holds only simulated quantities: the same scenario and
seed give the same file byte for byte. Wall time goes to the terminal.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

from cluster.compare import reach
from cluster.coordinator import RunResult, cluster_row
from cluster.scenario import dump_scenario
from dedup.errors import CowsimError
from dedup.hints import HINT_SOURCES, OUTCOMES, SOURCES
from dedup.ksm import COUNTERS as KSM_COUNTERS
from node.host import FAULT_KINDS

_FIELDS = (
    "guests_paused",
    "guest_bytes",
    "machine_bytes",
    "machine_bytes_used",
    "saved_bytes",
    "potential_bytes",
    "shared_frames",
    "sharing_mappings",
    "cow_faults",
    "bytes_copied",
    "bytes_compared",
    "hypercalls",
    "bonus_pages",
    "fifo_pages",
    "fifo_shortfall_pages",
    "repaid_pages",
    "refaults",
    "copy_avoided_bytes",
    "pages_scanned",
    "pages_hashed",
    "scan_bytes_compared",
    "scan_hypercalls",
    "daemon_cpu_seconds",
)


def _entry(sample: dict) -> dict:
    out = {key: sample[key] for key in _FIELDS}
    potential = sample["potential_bytes"]
    out["found_fraction"] = (
        round(sample["saved_bytes"] / potential, 6) if potential else 1.0
    )
    out["saved_by_source_bytes"] = {
        s: sample[f"saved_{s}_bytes"] for s in (*SOURCES, "fork")
    }
    out["cow_faults_by_kind"] = {k: sample[f"faults_{k}"] for k in FAULT_KINDS}
    # Counters of the KSM-style scanner (zeros on hosts without one); for
    # the cluster, sums over hosts.
    out["ksm"] = {name: sample[f"ksm_{name}"] for name in KSM_COUNTERS}
    out["hints"] = {
        s: {o: sample[f"hints_{s}_{o}"] for o in OUTCOMES}
        for s in HINT_SOURCES
    }
    return out


def summarize(result: RunResult) -> dict:
    """The content of ``summary.json``."""
    s = result.scenario
    by_host = {sample["host"]: sample for sample in result.final}
    hosts = []
    for host in s.hosts:
        entry = {"name": host.name}
        entry["guests"] = [
            g.name for g in s.guests if result.placement[g.name] == host.name
        ]
        entry.update(_entry(by_host[host.name]))
        entry["up"] = bool(by_host[host.name].get("host_up", 1))
        hosts.append(entry)
    for entry in hosts:
        rows = [r for r in result.series if r["host"] == entry["name"]]
        entry["detection"] = reach(rows)
    cluster = _entry(cluster_row(result.final))
    cluster["detection"] = reach(
        [r for r in result.series if r["host"] == "cluster"]
    )
    cluster["hosts"] = len(s.hosts)
    # Guests running at the end: a failed host's guests that found no room
    # elsewhere are gone.
    cluster["guests"] = sum(len(h["guests"]) for h in hosts)
    cluster["guests_lost"] = sum(
        len(f["not_restarted"]) for f in result.failures
    )
    return {
        "scenario": s.name,
        "seed": s.seed,
        "ticks": s.ticks,
        "sim_time_seconds": s.ticks * s.tick_seconds,
        "cluster": cluster,
        "hosts": hosts,
        "images": result.images,
        "catalog": result.catalog.to_dict(),
        "events": result.events,
        "failures": result.failures,
        "migrations": result.migrations,
    }


def write_results(result: RunResult, directory: Path) -> dict:
    """Write the results directory atomically; return the summary."""
    directory = Path(directory)
    summary = summarize(result)
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=parent))
    try:
        # mkdtemp makes a private directory; results get the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        (tmp / "scenario.toml").write_text(dump_scenario(result.scenario))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _write_csv(tmp / "timeseries.csv", result.series)
        write_extras(tmp, result, summary, directory.name)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def write_extras(
    tmp: Path, result: RunResult, summary: dict, name: str
) -> None:
    """Files derived from the series: OpenMetrics, plots, HTML report."""
    # Imported here: matplotlib is slow to import, and bad input that
    # ends the command before any run should not wait for it.
    from cluster.openmetrics import default_end_seconds, write_openmetrics
    from cluster.report import write_report

    write_openmetrics(
        tmp / "timeseries.om", result.series, default_end_seconds(), name
    )
    write_report(tmp, summary, result.series)


def check_results_dir(directory: Path, option: str = "--results") -> None:
    """Refuse a results directory that exists and is not empty;
    ``option`` is the command-line option that named it."""
    directory = Path(directory)
    for parent in directory.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise CowsimError(
                    f"{option} {directory}: {parent} is not a directory"
                )
            break
    if directory.exists() and (
        not directory.is_dir() or any(directory.iterdir())
    ):
        raise CowsimError(
            f"{option} {directory}: exists and is not an empty directory"
        )


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def format_table(summary: dict) -> str:
    """The end-of-run table: one line per host and one for the cluster."""
    rows = [
        (
            h["name"] + ("" if h.get("up", True) else " (down)"),
            len(h["guests"]),
            h,
        )
        for h in summary["hosts"]
    ]
    c = summary["cluster"]
    rows.append(("cluster", c["guests"], c))
    w = max(12, *(len(name) for name, _, _ in rows))
    head = (
        f"{'host':<{w}} {'guests':>6} {'guest MiB':>10} {'used MiB':>10} "
        f"{'saved MiB':>10} {'potential':>10} {'found':>6} {'faults':>9}"
    )
    lines = [head, "-" * len(head)]
    for i, (name, n_guests, e) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * len(head))
        lines.append(
            f"{name:<{w}} {n_guests:>6} {_mib(e['guest_bytes']):>10} "
            f"{_mib(e['machine_bytes_used']):>10} "
            f"{_mib(e['saved_bytes']):>10} "
            f"{_mib(e['potential_bytes']):>10} "
            f"{_found(e):>6} {e['cow_faults']:>9,}"
        )
    by_source = ", ".join(
        f"{s} {_mib(v)} MiB"
        for s, v in c["saved_by_source_bytes"].items()
        if v or s in ("zero", "disk", "library")
    )
    lines.append(f"saved by source: {by_source}")
    if c["bonus_pages"] or c["repaid_pages"]:
        lines.append(
            f"bonus pages lent: {c['bonus_pages']:,}, FIFO pages: "
            f"{c['fifo_pages']:,}, repaid to faults: {c['repaid_pages']:,}, "
            f"refaults: {c['refaults']:,}"
        )
    unsatisfied = c["cow_faults_by_kind"]["unsatisfied"]
    if unsatisfied:
        lines.append(
            f"unsatisfied faults: {unsatisfied:,}; guests paused: "
            f"{c['guests_paused']} (see events in summary.json)"
        )
    for f in summary.get("failures", []):
        lost = ", ".join(f["not_restarted"])
        lines.append(
            f"{f['host']} down at tick {f['tick']} ({f['how']}): "
            f"{len(f['restarted'])} guests restarted elsewhere"
            + (f", {len(f['not_restarted'])} lost ({lost})" if lost else "")
        )
    for event in summary.get("events", [])[:_EVENTS_SHOWN]:
        lines.append(
            f"  tick {event['tick']}: {event['guest']} paused on "
            f"{event['host']}, {event['pages']:,} writes found no frame"
        )
    return "\n".join(lines)


def _found(entry: dict) -> str:
    """Saved against potential; a host that is down has neither."""
    if not entry.get("up", True):
        return "-"
    return f"{100 * entry['found_fraction']:.1f}%"


# The table lists the first pause events; summary.json has all of them.
_EVENTS_SHOWN = 8
