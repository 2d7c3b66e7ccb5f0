"""A benchmark: how the coordinator's work per tick grows with hosts.

``python -m cluster.scaling [HOSTS ...]`` runs the same small workload
(one guest of a few MiB per host, booted from part of the standard
library) on 2, 4, 8 and 16 hosts, one coordinator round per tick, and
measures the CPU time of the driver process between the first and the
last round: the coordinator's own work (sending steps, receiving and
summing samples, publishing metrics), not the hosts', which run in
their actors' processes. It reports that time per tick, per tick and
host, and the growth ratio: how much the per-tick time grew against how
much the number of hosts grew (1.0: linear; below: better).

The numbers are ratios on purpose: wall and CPU times differ between
machines, the ratios much less. Nothing here asserts a time.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

_SCENARIO = """
name = "scaling"
seed = 1
ticks = {ticks}
tick_seconds = 1.0
batch_ticks = 1

[[hosts]]
name = "host"
count = {hosts}
memory = "16MiB"

[images.json]
paths = ["{{stdlib}}/json"]
exclude = ["__pycache__", "*.pyc"]

[[guests]]
name = "g"
count = {hosts}
image = "json"
memory = "4MiB"

[guests.workload]
read_pages_per_tick = 4
disk_write_pages_per_tick = 1
anon_write_pages_per_tick = 8
free_pages_per_tick = 2
"""


def measure_one(n_hosts: int, ticks: int) -> dict:
    """Driver CPU seconds per coordinator round with ``n_hosts`` hosts."""
    from cluster.coordinator import Coordinator
    from cluster.scenario import load_scenario

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scaling.toml"
        path.write_text(_SCENARIO.format(ticks=ticks, hosts=n_hosts))
        scenario = load_scenario(path)
    marks: list[tuple[float, float]] = []

    def mark(done: int, samples: list[dict]) -> None:
        marks.append((time.process_time(), time.perf_counter()))

    coordinator = Coordinator(scenario, progress=mark)
    try:
        coordinator.run()
    finally:
        coordinator.shutdown()
    rounds = len(marks) - 1
    cpu = (marks[-1][0] - marks[0][0]) / rounds
    wall = (marks[-1][1] - marks[0][1]) / rounds
    return {
        "hosts": n_hosts,
        "rounds": rounds,
        "cpu_seconds_per_tick": cpu,
        "wall_seconds_per_tick": wall,
        "cpu_seconds_per_tick_per_host": cpu / n_hosts,
    }


def measure(hosts: tuple[int, ...] = (2, 4, 8, 16), ticks: int = 40):
    """One row per host count, with the growth ratio against the first."""
    rows = [measure_one(n, ticks) for n in hosts]
    base = rows[0]
    for row in rows:
        grew = row["cpu_seconds_per_tick"] / base["cpu_seconds_per_tick"]
        row["growth_ratio"] = grew / (row["hosts"] / base["hosts"])
    return rows


def format_rows(rows: list[dict]) -> str:
    """The benchmark as a table."""
    lines = [
        f"{'hosts':>6}{'CPU ms/tick':>13}{'per host':>10}"
        f"{'wall ms/tick':>14}{'growth ratio':>14}"
    ]
    for r in rows:
        lines.append(
            f"{r['hosts']:>6}{1000 * r['cpu_seconds_per_tick']:>13.2f}"
            f"{1000 * r['cpu_seconds_per_tick_per_host']:>10.3f}"
            f"{1000 * r['wall_seconds_per_tick']:>14.2f}"
            f"{r['growth_ratio']:>14.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: host counts to try (default 2 4 8 16)."""
    import logging

    import ray

    args = sys.argv[1:] if argv is None else argv
    hosts = tuple(int(a) for a in args) or (2, 4, 8, 16)
    ray.init(
        address="local",
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    try:
        print(format_rows(measure(hosts)))
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
