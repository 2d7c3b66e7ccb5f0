"""A finished run's time series as OpenMetrics text, for backfilling.

``promtool tsdb create-blocks-from openmetrics FILE DIR`` turns such a
file into Prometheus blocks, so that a run that nobody scraped can be
looked at with the same dashboards as a live one. The families and
labels are the exporter's (``cluster.metrics``): every per-host metric,
its ``cowsim_cluster_...`` total, ``cowsim_tick`` and
``cowsim_sim_time_seconds``, plus two labels a scrape would have added:
``job`` (``cowsim_backfill``) and ``instance`` (the results directory's
name), which tell runs apart.

Timestamps. Every sample needs one, and a run only has simulated time.
The last tick is stamped ``end_seconds`` (Unix time) and each earlier
tick its simulated distance before it, so rates computed by Prometheus
are per simulated second. By default ``end_seconds`` is three hours
before the moment the file is written: Prometheus's own guidance is not
to backfill the last three hours, which a running server is still
writing, and a recent end keeps the run inside the default 15-day
retention. ``cowsim openmetrics`` stamps a results directory again with
another end. None of this touches ``summary.json``, which holds no wall
time.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from cluster.metrics import METRICS

BACKFILL_JOB = "cowsim_backfill"
BACKFILL_LAG_SECONDS = 3 * 3600

Row = Mapping[str, object]


def default_end_seconds(now: float | None = None) -> float:
    """Where the last tick lands by default: three hours before now."""
    now = time.time() if now is None else now
    return float(math.floor(now) - BACKFILL_LAG_SECONDS)


def read_timeseries(path: Path) -> list[dict[str, str]]:
    """The rows of a results directory's ``timeseries.csv``."""
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh))


def to_openmetrics(
    rows: Iterable[Row], end_seconds: float, instance: str
) -> str:
    """The OpenMetrics text of a run's series, ending with ``# EOF``."""
    return "".join(_lines(list(rows), end_seconds, instance))


def write_openmetrics(
    path: Path, rows: Iterable[Row], end_seconds: float, instance: str
) -> None:
    """Write ``to_openmetrics`` to ``path``."""
    Path(path).write_text(to_openmetrics(rows, end_seconds, instance))


def _lines(rows: list[Row], end: float, instance: str) -> Iterator[str]:
    last = max(float(r["sim_time_seconds"]) for r in rows)
    stamps = [
        f"{end - (last - float(r['sim_time_seconds'])):.3f}" for r in rows
    ]
    base = {"job": BACKFILL_JOB, "instance": instance}
    hosts = [r for r in range(len(rows)) if rows[r]["host"] != "cluster"]
    totals = [r for r in range(len(rows)) if rows[r]["host"] == "cluster"]

    yield from _gauge(
        "cowsim_tick", "Ticks simulated so far.", rows, stamps, totals, base
    )
    yield from _gauge(
        "cowsim_sim_time_seconds",
        "Simulated time so far (not wall time).",
        rows,
        stamps,
        totals,
        base,
        key="sim_time_seconds",
    )
    for m in METRICS:
        yield from _header(f"cowsim_{m.name}", m.kind, m.help)
        yield from _samples(m, rows, stamps, hosts, base, with_host=True)
        yield from _header(
            f"cowsim_cluster_{m.name}", m.kind, f"Cluster total. {m.help}"
        )
        yield from _samples(m, rows, stamps, totals, base, with_host=False)
    yield "# EOF\n"


def _gauge(name, help_text, rows, stamps, picked, base, key="tick"):
    yield from _header(name, "gauge", help_text)
    labels = _labels(base)
    for r in picked:
        yield f"{name}{labels} {_value(rows[r][key])} {stamps[r]}\n"


def _header(name: str, kind: str, help_text: str) -> Iterator[str]:
    yield f"# HELP {name} {_escape(help_text)}\n"
    yield f"# TYPE {name} {kind}\n"
    for unit in ("bytes", "seconds"):
        if name.endswith(f"_{unit}"):
            yield f"# UNIT {name} {unit}\n"


def _samples(m, rows, stamps, picked, base, with_host):
    """One series after another, each in tick order, as the parser wants."""
    prefix = "cowsim_" if with_host else "cowsim_cluster_"
    name = prefix + m.name + ("_total" if m.kind == "counter" else "")
    series: dict[tuple[str, ...], list[str]] = {}
    for r in picked:
        row = rows[r]
        for values, v in m.read(row):
            key = (str(row["host"]), *values) if with_host else values
            series.setdefault(key, []).append(f"{_value(v)} {stamps[r]}\n")
    names = (("host",) if with_host else ()) + m.labels
    for key, points in series.items():
        labels = _labels({**base, **dict(zip(names, key, strict=True))})
        for point in points:
            yield f"{name}{labels} {point}"


def _labels(labels: Mapping[str, str]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(text: str) -> str:
    return (
        str(text)
        .replace("\\", "\\\\")
        .replace("\n", "\\n")
        .replace('"', '\\"')
    )


def _value(v: object) -> str:
    x = float(v)
    return str(int(x)) if x.is_integer() else repr(x)
