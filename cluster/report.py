"""Pictures of a finished run: PNG plots and a self-contained HTML report.

Each results directory gets ``plots/*.png`` and ``report.html``. The
report embeds the same plots as data URIs and needs nothing else: it
opens from a file, offline, in any browser. Plots are drawn against
simulated time with matplotlib's Agg canvas (no display needed):

- ``saved_per_host.png``: memory saved on each host, against what a
  perfect deduplicator would save (dashed);
- ``saved_by_source.png``: the cluster's savings stacked by the hint
  source that found them, with the potential on top;
- ``found.png``: saved against potential, per host and for the cluster;
- ``faults.png``: copy-on-write faults per tick by kind, and bytes
  copied against copies avoided;
- ``repayment.png``: bonus pages, repayment FIFO pages and shortfall,
  and per tick the pages repaid to faults and the refaults they caused.

Rates here are per tick, read from the hosts' running totals; nothing
is resampled or smoothed.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dedup.hints import SOURCES
from node.host import FAULT_KINDS

MIB = 2**20
PLOTS = (
    ("saved_per_host", "Memory saved per host"),
    ("saved_by_source", "Memory saved by source (cluster)"),
    ("found", "Saved against potential"),
    ("faults", "Copy-on-write faults"),
    ("repayment", "Bonus pages and repayment"),
)


class Series:
    """A run's rows as arrays: ``col(host, key)`` over simulated time."""

    def __init__(self, rows: Iterable[Mapping[str, object]]) -> None:
        self._rows: dict[str, list[Mapping[str, object]]] = {}
        for row in rows:
            self._rows.setdefault(str(row["host"]), []).append(row)
        self.hosts = [h for h in self._rows if h != "cluster"]
        self.time = self.col("cluster", "sim_time_seconds")

    def col(self, host: str, key: str) -> np.ndarray:
        """One quantity of one host (or ``cluster``), tick by tick."""
        return np.array([float(r[key]) for r in self._rows[host]])

    def has(self, key: str) -> bool:
        """Whether the rows carry ``key`` with a non-zero value."""
        return any(float(r.get(key) or 0) for r in self._rows["cluster"])

    def per_tick(self, host: str, key: str) -> np.ndarray:
        """Increase of a running total over each tick (0 at the start)."""
        return np.diff(self.col(host, key), prepend=self.col(host, key)[0])


def write_report(
    directory: Path, summary: dict, rows: Iterable[Mapping[str, object]]
) -> None:
    """Write ``plots/*.png`` and ``report.html`` into ``directory``."""
    directory = Path(directory)
    series = Series(rows)
    plots = directory / "plots"
    plots.mkdir(exist_ok=True)
    images = {}
    for name, caption in PLOTS:
        fig = _DRAW[name](series)
        fig.suptitle(caption)
        path = plots / f"{name}.png"
        fig.savefig(path, dpi=90, metadata={"Software": None})
        images[name] = path.read_bytes()
    (directory / "report.html").write_text(render_html(summary, images))


def _figure(rows: int = 1):
    # A bare Figure, not pyplot: no global state, and PNGs are drawn by
    # the Agg canvas whatever backend the host process has selected.
    fig = Figure(figsize=(8, 3.2 * rows))
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)
    for ax in axes[:, 0]:
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("simulated time (s)")
    fig.set_layout_engine("tight")
    return fig, [ax for ax in axes[:, 0]]


def _counts(ax) -> None:
    """A y axis of whole counts from 0, still readable when all are 0."""
    ax.set_ylim(0, max(1.0, ax.get_ylim()[1]))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _host_style(i: int, n_points: int) -> dict:
    """Colour and marker of the i-th host: hosts with equal series still
    show apart, by their markers."""
    return {
        "color": f"C{i % 10}",
        "marker": _MARKERS[i % len(_MARKERS)],
        "markevery": (i % 5, max(1, n_points // 8)),
        "markersize": 5,
        "markerfacecolor": "none",
    }


_MARKERS = "osv^Dx+<>p"


def _saved_per_host(s: Series):
    fig, (ax,) = _figure()
    n = len(s.time)
    for i, host in enumerate(s.hosts):
        style = _host_style(i, n)
        ax.plot(s.time, s.col(host, "saved_bytes") / MIB, label=host, **style)
        ax.plot(
            s.time,
            s.col(host, "potential_bytes") / MIB,
            color=style["color"],
            ls="--",
            lw=0.8,
        )
    ax.set_ylabel("MiB saved (dashed: potential)")
    ax.legend(loc="lower right", fontsize="small", ncol=4)
    return fig


def _saved_by_source(s: Series):
    fig, (ax,) = _figure()
    sources = [*SOURCES, *(["fork"] if s.has("saved_fork_bytes") else [])]
    stacks = [s.col("cluster", f"saved_{src}_bytes") / MIB for src in sources]
    ax.stackplot(s.time, stacks, labels=sources, alpha=0.8)
    ax.plot(
        s.time,
        s.col("cluster", "potential_bytes") / MIB,
        "k--",
        label="potential",
    )
    ax.set_ylabel("MiB saved")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def _found(s: Series):
    fig, (ax,) = _figure()
    # The cluster goes first, wide and grey, so the hosts show over it.
    for i, host in enumerate(["cluster", *s.hosts]):
        saved = s.col(host, "saved_bytes")
        potential = s.col(host, "potential_bytes")
        found = np.divide(
            saved, potential, out=np.ones_like(saved), where=potential > 0
        )
        if host == "cluster":
            style = {"color": "0.6", "lw": 4, "alpha": 0.6}
        else:
            style = {"lw": 1.2, **_host_style(i - 1, len(s.time))}
        ax.plot(s.time, 100 * found, label=host, **style)
    ax.set_ylabel("found (% of potential)")
    ax.legend(loc="lower right", fontsize="small", ncol=4)
    return fig


def _faults(s: Series):
    fig, (top, bottom) = _figure(2)
    for kind in FAULT_KINDS:
        top.plot(s.time, s.per_tick("cluster", f"faults_{kind}"), label=kind)
    top.set_ylabel("faults per tick")
    _counts(top)
    top.legend(loc="upper right", fontsize="small", ncol=4)
    bottom.plot(
        s.time, s.per_tick("cluster", "bytes_copied") / MIB, label="copied"
    )
    bottom.plot(
        s.time,
        s.per_tick("cluster", "copy_avoided_bytes") / MIB,
        label="not copied (logically zero)",
    )
    bottom.set_ylabel("MiB per tick")
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="upper right", fontsize="small")
    return fig


def _repayment(s: Series):
    fig, (top, bottom) = _figure(2)
    for key, label in (
        ("bonus_pages", "bonus pages lent"),
        ("fifo_pages", "FIFO pages promised"),
        ("fifo_shortfall_pages", "shortfall"),
    ):
        top.plot(s.time, s.col("cluster", key), label=label)
    top.set_ylabel("pages")
    _counts(top)
    top.legend(loc="upper right", fontsize="small")
    bottom.plot(s.time, s.per_tick("cluster", "repaid_pages"), label="repaid")
    bottom.plot(s.time, s.per_tick("cluster", "refaults"), label="refaults")
    bottom.set_ylabel("pages per tick")
    _counts(bottom)
    bottom.legend(loc="upper right", fontsize="small")
    return fig


_DRAW = {
    "saved_per_host": _saved_per_host,
    "saved_by_source": _saved_by_source,
    "found": _found,
    "faults": _faults,
    "repayment": _repayment,
}

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 60em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ccc; padding: 0.2em 0.8em; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; }
img { max-width: 100%; }
"""


def render_html(summary: dict, images: Mapping[str, bytes]) -> str:
    """The report: run facts, per-host table, then the plots inline."""
    c = summary["cluster"]
    e = html.escape
    title = f"cowsim run: {summary['scenario']} (seed {summary['seed']})"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{summary['ticks']} ticks, {summary['sim_time_seconds']:g} "
        f"simulated seconds, {c['hosts']} hosts, {c['guests']} guests.</p>",
        _table(summary),
        "<p>Saved by source: "
        + ", ".join(
            f"{e(k)} {v / MIB:,.1f} MiB"
            for k, v in c["saved_by_source_bytes"].items()
        )
        + f". Unsatisfied faults: {c['cow_faults_by_kind']['unsatisfied']:,}"
        f"; events recorded: {len(summary['events'])}.</p>",
        *_failures_and_migrations(summary),
        _events(summary["events"]),
    ]
    for name, caption in PLOTS:
        data = base64.b64encode(images[name]).decode("ascii")
        parts.append(
            f'<figure id="{name}"><img alt="{e(caption)}" '
            f'src="data:image/png;base64,{data}"></figure>'
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _failures_and_migrations(summary: dict) -> list[str]:
    """One paragraph per host failure, one for all migrations."""
    e = html.escape
    out = []
    for f in summary.get("failures", []):
        lost = ", ".join(f["not_restarted"]) or "none"
        out.append(
            f"<p>Host {e(f['host'])} failed at tick {f['tick']} "
            f"({e(f['how'])}) with {len(f['guests'])} guests and "
            f"{f['guest_bytes_lost'] / MIB:,.1f} MiB of guest memory; "
            f"{len(f['restarted'])} restarted elsewhere, not restarted: "
            f"{e(lost)}.</p>"
        )
    moves = [m for m in summary.get("migrations", []) if "refused" not in m]
    if moves:
        sent = sum(m["pages_sent"] for m in moves)
        skipping = sum(m["pages_sent_skipping_known"] for m in moves)
        out.append(
            f"<p>Migrations: {len(moves)} guests moved, {sent:,} pages "
            f"sent ({skipping:,} when skipping content already at the "
            f"destination).</p>"
        )
    return out


def _events(events: list[dict]) -> str:
    """Guests paused by unsatisfied faults, one row each."""
    if not events:
        return ""
    e = html.escape
    rows = "".join(
        f"<tr><td>{event['tick']}</td><td>{e(event['host'])}</td>"
        f"<td>{e(event['guest'])}</td><td>{event['pages']:,}</td></tr>"
        for event in events
    )
    return (
        "<h2>Guests paused</h2><table><tr><th>tick</th><th>host</th>"
        f"<th>guest</th><th>writes with no frame</th></tr>{rows}</table>"
    )


def _table(summary: dict) -> str:
    head = (
        "host",
        "guests",
        "guest MiB",
        "used MiB",
        "saved MiB",
        "potential MiB",
        "found",
        "faults",
        "bonus pages",
        "repaid pages",
    )
    rows = [(h["name"], len(h["guests"]), h) for h in summary["hosts"]]
    rows.append(("cluster", summary["cluster"]["guests"], summary["cluster"]))
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for name, guests, x in rows:
        cells = (
            html.escape(name),
            f"{guests}",
            f"{x['guest_bytes'] / MIB:,.1f}",
            f"{x['machine_bytes_used'] / MIB:,.1f}",
            f"{x['saved_bytes'] / MIB:,.1f}",
            f"{x['potential_bytes'] / MIB:,.1f}",
            f"{100 * x['found_fraction']:.1f}%",
            f"{x['cow_faults']:,}",
            f"{x['bonus_pages']:,}",
            f"{x['repaid_pages']:,}",
        )
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)
