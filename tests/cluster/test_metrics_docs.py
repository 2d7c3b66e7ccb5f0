"""The README's metrics table says what the exporter serves.

Every metric family of a real scrape of ``RunCollector`` must have a row
(or be the cluster total of one), and every row must match ``METRICS``
in name, type and labels.
"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from cluster.metrics import METRICS, RunCollector, RunState

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_ROW = "cowsim_cluster_<name>"


class _Keys(dict):
    def __missing__(self, key):
        return 0


def table() -> dict[str, tuple[str, str]]:
    """README rows: metric name -> (type, labels)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \|([^|]*)\|([^|]*)\|", section, re.M)
    return {
        name: (kind.strip(), labels.strip()) for name, kind, labels in rows
    }


def served() -> set[str]:
    """Sample names of a scrape of two hosts' samples."""
    state = RunState()
    state.update(
        [_Keys(host=h, tick=3, sim_time_seconds=3.0) for h in ("h-0", "h-1")]
    )
    registry = CollectorRegistry()
    registry.register(RunCollector(state))
    text = generate_latest(registry).decode()
    return set(re.findall(r"^(cowsim_\w+)", text, re.M))


def test_every_row_matches_a_metric_definition():
    rows = table()
    assert rows.pop("cowsim_tick") == ("gauge", "")
    assert rows.pop("cowsim_sim_time_seconds") == ("gauge", "")
    assert rows.pop(CLUSTER_ROW)[0] == "as `cowsim_<name>`"
    expected = {}
    for m in METRICS:
        name = f"cowsim_{m.name}" + ("_total" if m.kind == "counter" else "")
        expected[name] = (m.kind, ", ".join(("host", *m.labels)))
    assert rows == expected


def test_every_served_metric_has_a_row():
    rows = table()
    for name in served():
        total = name.replace("cowsim_cluster_", "cowsim_", 1)
        assert name in rows or (
            name.startswith("cowsim_cluster_") and total in rows
        ), name
